"""The speculation benchmark's quick form: it runs, drafts are accepted, greedy outputs are identical."""

from __future__ import annotations

import json


def test_tiny_form_compares_plain_and_speculative(tmp_path, capsys):
    from benchmarks.synth_speed import main

    result = main(["--tiny", "--texts", "6", "--max-new-tokens", "24", "--threads", "1",
                   "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "x output tokens/s; greedy outputs identical: True" in out
    runs = result["runs"]
    assert result["identical"] and result["speedup"] > 0
    assert runs["plain"]["output_tokens"] == runs["speculative"]["output_tokens"] > 0
    assert runs["plain"]["drafted"] == 0 and runs["speculative"]["drafted"] > 0
    assert runs["speculative"]["forwards"] <= runs["plain"]["forwards"]
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["rounds"] == 3
