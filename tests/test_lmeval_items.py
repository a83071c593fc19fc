"""Per-item scores from lm-eval's logged samples, in the shape ``simple_evaluate(log_samples=True)``
returns them (real runs of both readers: tests/eval/test_suite.py, tests/train/test_downstream.py)."""

from __future__ import annotations

from megatron_ipt.lmeval_items import gold_loglik, item_scores


def _sample(doc_id: int, target: int, lls: list[float], acc: float, **doc) -> dict:
    return {"doc_id": doc_id, "doc": doc, "target": target, "acc": acc, "acc_norm": acc,
            "filtered_resps": [[ll, False] for ll in lls]}


def test_items_come_in_document_order_with_their_gold_loglik() -> None:
    samples = [_sample(2, 0, [-1.5, -3.0], 1.0, id="c"), _sample(0, 1, [-2.0, -0.5], 1.0, id="a"),
               _sample(1, 1, [-0.25, -4.0], 0.0)]
    items = item_scores(samples)
    assert items == {"id": ["a", 1, "c"], "acc": [1.0, 0.0, 1.0], "acc_norm": [1.0, 0.0, 1.0],
                     "gold_loglik": [-0.5, -4.0, -1.5]}


def test_a_metric_some_items_lack_is_left_out() -> None:
    samples = [_sample(0, 0, [-1.0], 1.0), {"doc_id": 1, "doc": {}, "acc": 0.0, "target": "free text",
                                            "filtered_resps": ["an answer"]}]
    items = item_scores(samples)
    assert items == {"id": [0, 1], "acc": [1.0, 0.0]}
    assert item_scores([]) == {"id": []}


def test_gold_loglik_only_for_a_target_among_the_choices() -> None:
    assert gold_loglik(_sample(0, 1, [-1.0, -2.0], 1.0)) == -2.0
    assert gold_loglik(_sample(0, 2, [-1.0, -2.0], 1.0)) is None
    assert gold_loglik({"target": 0, "filtered_resps": [-3.0]}) == -3.0
    assert gold_loglik({"target": 0, "filtered_resps": [["text", False]]}) is None
