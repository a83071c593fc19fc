"""A unit's stats: pairs per text, parse failures, token totals, and what its generation cost."""

from __future__ import annotations

from collections import Counter

from megatron_ipt.synth.engine_types import Engine
from megatron_ipt.synth.rounds import Entry

PAPER_DEVICE_HOURS_PER_1B = 24.0  # the paper: about one A100-day per 1B raw tokens


def summarize(entries: list[Entry], input_stats: Counter, seconds: float) -> dict:
    """A unit's stats: pairs per text, parse failures, degenerate outputs, token totals."""
    s: Counter = Counter()
    finish: Counter = Counter()
    hist: Counter = Counter()
    failed: Counter = Counter()
    for e in entries:
        st = e.stats
        if e.failure:
            failed[e.failure] += 1
        hist[len(e.pairs)] += 1
        for key in ("malformed", "duplicates", "unfinished", "degenerate", "degenerate_pairs", "prompt_tokens",
                    "cached_tokens", "output_tokens", "capped", "text_tokens"):
            s[key] += int(st.get(key, 0))
        s["text_truncated"] += bool(st.get("text_truncated"))
        s["chained"] += bool(st.get("chained"))
        s["linked"] += e.linked
        finish.update(st.get("finish", {}))
    pairs = sum(len(e.pairs) for e in entries)
    pieces = pairs + s["malformed"] + s["duplicates"] + s["degenerate_pairs"]
    texts = len(entries)
    return {
        "texts": texts,
        "pairs": pairs,
        "pairs_per_text": round(pairs / texts, 3) if texts else 0.0,
        "pairs_per_text_histogram": {str(k): hist[k] for k in sorted(hist)},
        "texts_without_pairs": hist[0],
        "failed_texts": sum(failed.values()),  # no generation at all (kept raw, no pairs), by reason below
        "failures": dict(sorted(failed.items())),
        "rounds": dict(sorted(Counter(str(e.round) for e in entries).items())),
        "chained": s["chained"],
        "linked": s["linked"],
        "parse": {
            "malformed_pieces": s["malformed"],
            "duplicate_instructions": s["duplicates"],
            "unfinished_outputs": s["unfinished"],  # no closing </END>: last piece dropped
            "failure_rate": round(s["malformed"] / pieces, 4) if pieces else 0.0,
        },
        "degenerate_outputs": s["degenerate"],
        "degenerate_pairs_dropped": s["degenerate_pairs"],
        "pairs_capped": s["capped"],
        "finish_reasons": dict(finish),
        "prompt_tokens": s["prompt_tokens"],
        "prompt_tokens_cached": s["cached_tokens"],  # served from the engine's prefix cache, not prefilled
        "output_tokens": s["output_tokens"],
        "raw_tokens": s["text_tokens"],  # the texts' own tokens in their prompts (BOS + context): the raw input
        "texts_truncated": s["text_truncated"],
        # Every input count, the usual ones even when zero: a skip counted while reading is never left out.
        "input": {**{k: 0 for k in ("bad_utf8", "bad_records", "empty_texts", "duplicate_ids", "not_selected",
                                    "markers_escaped")},
                  **input_stats},
        "seconds": round(seconds, 2),
        "texts_per_s": round(texts / seconds, 3) if seconds > 0 else None,
        "output_tokens_per_s": round(s["output_tokens"] / seconds, 1) if seconds > 0 else None,
    }


def device_label(engine: Engine) -> tuple[str, int]:
    """What the engine decodes on, in words, and how many devices one model takes."""
    import torch

    device = getattr(engine, "device", None)
    count = int(getattr(engine, "tensor_parallel_size", 1) or 1)
    if device is None:  # vLLM: CUDA GPUs
        device = torch.device("cuda")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}", count
    return f"{device.type} ({torch.get_num_threads()} threads)", count


def cost_stats(entries: list[Entry], seconds: float, engine: Engine, speculation: tuple[int, int] | None) -> dict:
    """What ``entries`` (generated in this run, in ``seconds``) cost in the paper's units: device-hours
    per 1B raw input tokens, output tokens/s, and per round the prompt tokens prefilled vs served
    from the prefix cache. ``speculation``: (drafted, accepted) tokens when the engine counts them."""
    device, count = device_label(engine)
    raw = sum(int(e.stats.get("text_tokens", 0)) for e in entries)
    out = sum(int(e.stats.get("output_tokens", 0)) for e in entries)
    rounds: dict[str, Counter] = {}
    for e in entries:
        r = rounds.setdefault(str(e.round), Counter())
        prompt, cached = int(e.stats.get("prompt_tokens", 0)), int(e.stats.get("cached_tokens", 0))
        r.update(texts=1, prompt_tokens=prompt, prefilled=prompt - cached, cached=cached,
                 output_tokens=int(e.stats.get("output_tokens", 0)))
    cost = {"device": device, "devices": count, "seconds": round(seconds, 2), "texts": len(entries),
            "raw_tokens": raw, "output_tokens": out,
            "output_tokens_per_s": round(out / seconds, 1) if seconds > 0 else None,
            "device_hours_per_1b_raw_tokens": round(seconds * count / 3600 / raw * 1e9, 1) if raw and seconds > 0
            else None,
            "paper_device_hours_per_1b_raw_tokens": PAPER_DEVICE_HOURS_PER_1B,
            "rounds": {k: dict(v) for k, v in sorted(rounds.items(), key=lambda kv: int(kv[0]))}}
    if speculation is not None:
        drafted, accepted = speculation
        cost["speculation"] = {"drafted": drafted, "accepted": accepted,
                               "acceptance_rate": round(accepted / drafted, 3) if drafted else None}
    return cost


def speculation_counts(engine: Engine) -> tuple[int, int] | None:
    if not hasattr(engine, "drafted_tokens"):
        return None
    return int(engine.drafted_tokens), int(engine.accepted_tokens)
