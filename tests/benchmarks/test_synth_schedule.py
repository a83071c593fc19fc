"""The scheduling benchmark's quick form: it runs, both schedules agree, reuse prefills less."""

from __future__ import annotations

import json


def test_tiny_form_prints_ratios(tmp_path, capsys):
    from benchmarks.synth_schedule import main

    result = main(["--tiny", "--texts", "8", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "x wall" in out and "greedy outputs identical: True" in out
    assert result["identical"] and 0 < result["prefill_ratio"] < 1 and result["speedup_wall"] > 0
    runs = result["runs"]
    assert runs["chain-major, reuse"]["cached"] > 0 and runs["round-major, no reuse"]["cached"] == 0
    assert runs["chain-major, reuse"]["output_tokens"] == runs["round-major, no reuse"]["output_tokens"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["rounds"] == 3
