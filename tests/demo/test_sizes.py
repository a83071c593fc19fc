"""Demo sizes: budgets by estimate, the powered medium design, equal tokens between arms."""

from __future__ import annotations

from megatron_ipt.demo.pipeline import run_names
from megatron_ipt.demo.sizes import SIZES


def test_small_fits_its_budget():
    assert sum(SIZES["small"].estimate_seconds().values()) <= 20 * 60


def test_medium_fits_its_budget():
    # Two hours: the powered design plus six instruction-tuning curves fit one working session.
    assert sum(SIZES["medium"].estimate_seconds().values()) <= 120 * 60


def test_medium_is_powered_and_small_keeps_the_design():
    medium, small = SIZES["medium"], SIZES["small"]
    assert medium.seeds >= 3 and medium.eval_items >= 300 and medium.eval_texts >= 200
    assert 2 <= small.seeds < medium.seeds and small.eval_items < medium.eval_items
    names = run_names(medium)
    assert names == {"vanilla": ["vanilla_s0", "vanilla_s1", "vanilla_s2"],
                     "instruct": ["instruct_s0", "instruct_s1", "instruct_s2"]}
