"""Print an indexed dataset's counts, token totals, length histogram and decoded samples.

Example::

    python -m data_tools.inspect_data data/pubmed_text_document --decode 3 --tokenizer mistral
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.data.inspect import dataset_stats, decoded_samples


def render(stats: dict) -> str:
    lines = [
        f"{stats['prefix']}: {stats['documents']:,} documents, {stats['tokens']:,} tokens ({stats['dtype']})"
    ]
    if "length" in stats:
        lines.append("length " + ", ".join(f"{k} {v}" for k, v in stats["length"].items()))
        top = max(h["documents"] for h in stats["histogram"])
        for h in stats["histogram"]:
            bar = "#" * max(1, round(40 * h["documents"] / top))
            lines.append(f"  {h['from']:>8}-{h['to']:<8} {h['documents']:>10,} {bar}")
    if "lossmask" in stats:
        m = stats["lossmask"]
        lines.append(
            f"loss mask: {m['prefix']} (lengths match: {m['lengths_match']}, loss on {m['loss_fraction']:.1%})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_tools.inspect_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prefix", help="dataset prefix (PREFIX.bin/.idx)")
    p.add_argument(
        "--decode", type=int, default=0, metavar="K", help="decode K documents (needs --tokenizer)"
    )
    p.add_argument("--tokenizer", help="'mistral', a SentencePiece .model, an HF directory or a .gguf")
    p.add_argument("--seed", type=int, default=None, help="decode K random documents instead of the first K")
    p.add_argument("--max-tokens", type=int, default=512, help="decode at most this many tokens per document")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    if args.decode and not args.tokenizer:
        p.error("--decode needs --tokenizer")
    try:
        stats = dataset_stats(args.prefix)
        samples = []
        if args.decode:
            from megatron_ipt.tokenizer import load_tokenizer

            samples = decoded_samples(
                args.prefix, load_tokenizer(args.tokenizer), args.decode, args.seed, args.max_tokens
            )
    except IndexedDatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**stats, "samples": samples}, ensure_ascii=False))
        return 0
    print(render(stats))
    for s in samples:
        print(f"\n--- document {s['document']} ({s['tokens']} tokens) ---\n{s['text']}")
        for span in s.get("loss_spans", []):
            print(f"  [loss] {span!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
