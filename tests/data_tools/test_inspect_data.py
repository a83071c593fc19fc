"""inspect_data: counts, histogram, loss-mask report, decoded samples."""

from __future__ import annotations

import json
from pathlib import Path

from data_tools.inspect_data import main
from megatron_ipt.data.preprocess import preprocess


def test_inspect(tmp_path: Path, capsys, mistral_tokenizer) -> None:
    seg = [{"text": "Question here.", "loss": False}, {"text": " Answer here.", "loss": True}]
    records = [{"text": "A first document about cells."}, {"segments": seg}, {"text": "word " * 40}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    s = preprocess(tmp_path / "in.jsonl", tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    assert main([s["prefix"], "--decode", "2", "--tokenizer", "mistral"]) == 0
    out = capsys.readouterr().out
    assert f"3 documents, {s['tokens']} tokens (uint16)" in out
    assert "loss mask:" in out and "lengths match: True" in out
    assert "A first document about cells." in out and "Answer here.'" in out.split("[loss]")[-1]
    assert main([s["prefix"], "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["documents"] == 3 and sum(h["documents"] for h in stats["histogram"]) == 3
    assert (
        stats["length"]["max"] == len(mistral_tokenizer.encode("word " * 40))
        and stats["tokens"] == s["tokens"]
    )


def test_inspect_missing(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nothing")]) == 2
    assert "missing" in capsys.readouterr().err
