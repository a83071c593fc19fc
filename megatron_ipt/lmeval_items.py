"""Per-item scores read from lm-eval's logged samples: the one reader for the offline scorer
(``eval.suite``) and the trainer's in-loop evaluation (``train.downstream``)."""

from __future__ import annotations

from typing import Any

ITEM_METRICS = ("acc", "acc_norm", "gold_loglik")


def gold_loglik(sample: dict[str, Any]) -> float | None:
    """The log-likelihood of a multiple-choice item's gold continuation (None for other task types)."""
    target, resps = sample.get("target"), sample.get("filtered_resps")
    if not isinstance(target, int) or not isinstance(resps, list) or not 0 <= target < len(resps):
        return None
    ll = resps[target][0] if isinstance(resps[target], list | tuple) else resps[target]
    return float(ll) if isinstance(ll, int | float) else None


def item_scores(samples: list[dict[str, Any]]) -> dict[str, list]:
    """Each item's id and scores in document order: ``{"id": [...], METRIC: [...]}``.

    A metric is listed only when every item has it; ``gold_loglik`` exists for multiple choice only."""
    ordered = sorted(samples, key=lambda s: s.get("doc_id", 0))
    items: dict[str, list] = {"id": [(s.get("doc") or {}).get("id", s.get("doc_id")) for s in ordered]}
    for metric in ("acc", "acc_norm"):
        if ordered and all(metric in s for s in ordered):
            items[metric] = [float(s[metric]) for s in ordered]
    gold = [gold_loglik(s) for s in ordered]
    if gold and None not in gold:
        items["gold_loglik"] = gold
    return items
