"""The demo report's line on the quality gate's question concentration."""

from __future__ import annotations

from megatron_ipt.corpora.quality import QualityGate
from megatron_ipt.demo.report import question_concentration
from megatron_ipt.pairs import Pair


def test_question_concentration_lines_from_the_gate_report():
    gate = QualityGate()
    gate.filter_texts([[Pair("What was the objective of the study?", f"Aim {i}."), Pair(f"What is {i}?", "A.")]
                       for i in range(3)])
    [line, blank] = question_concentration(gate.report())
    assert line.startswith("Questions kept: 6 pairs, 4 distinct;") and blank == ""
    assert "`What was the objective of the study?` 50%" in line
    assert question_concentration({}) == []  # a gate switched off reports nothing
