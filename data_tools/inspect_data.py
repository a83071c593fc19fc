"""Print an indexed dataset's counts, token totals, length histogram and decoded samples.

Example::

    python -m data_tools.inspect_data data/pubmed_text_document --decode 3 --tokenizer mistral
    python -m data_tools.inspect_data --input data/pubmed_text_document --json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import ClassVar

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.data.indexed import IndexedDatasetError
from megatron_ipt.data.inspect import dataset_stats, decoded_samples
from megatron_ipt.tokenizer import TokenizerError


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


@dataclass
class InspectArgs:
    input: str = ""  # dataset prefix (PREFIX.bin/.idx); also the bare argument
    decode: int = 0  # decode this many documents (needs --tokenizer)
    tokenizer: str = ""  # 'mistral', a SentencePiece .model, an HF directory or a .gguf
    seed: int | None = None  # decode random documents with this seed instead of the first ones
    max_tokens: int = 512  # decode at most this many tokens per document
    json: bool = False  # print one JSON object instead of text

    POSITIONAL: ClassVar[str] = "input"
    ALIASES: ClassVar[dict[str, str]] = {"prefix": "input"}

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("give the dataset prefix (PREFIX or --input PREFIX)")
        if self.decode and not self.tokenizer:
            raise ConfigError("--decode needs --tokenizer")


def run(args: InspectArgs) -> int:
    stats = dataset_stats(args.input)
    samples = []
    if args.decode:
        from megatron_ipt.tokenizer import load_tokenizer

        samples = decoded_samples(args.input, load_tokenizer(args.tokenizer), args.decode, args.seed,
                                  args.max_tokens)
    if args.json:
        print(json.dumps({**stats, "samples": samples}, ensure_ascii=False))
        return 0
    print(render(stats))
    for s in samples:
        print(f"\n--- document {s['document']} ({s['tokens']} tokens) ---\n{s['text']}")
        for span in s.get("loss_spans", []):
            print(f"  [loss] {span!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(InspectArgs, argv, run, __doc__, errors=(IndexedDatasetError, TokenizerError))


if __name__ == "__main__":
    sys.exit(main())
