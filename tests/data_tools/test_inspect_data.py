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


def test_inspect_with_another_tokenizer_is_one_line(tmp_path: Path, capsys, mistral_tokenizer, smollm2_dir) -> None:
    import numpy as np

    from megatron_ipt.data.indexed import IndexedDatasetWriter

    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "Zygomatic osteotomy " * 30}) + "\n")
    s = preprocess(tmp_path / "in.jsonl", tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    assert main([s["prefix"], "--decode", "1", "--tokenizer", str(smollm2_dir)]) == 2
    err = capsys.readouterr().err
    assert [ln.startswith("error: ") for ln in err.splitlines()].count(True) == 1, err
    assert f"{s['prefix']}: tokenized with mistral" in err and "SmolLM2" in err and "dataset's own tokenizer" in err
    # No summary to compare: ids beyond the tokenizer's vocabulary are named instead of an IndexError.
    with IndexedDatasetWriter(str(tmp_path / "bare"), np.int32) as w:
        w.add_document([5, 60000, 7])
    assert main([str(tmp_path / "bare"), "--decode", "1", "--tokenizer", "mistral"]) == 2
    err = capsys.readouterr().err
    assert [ln.startswith("error: ") for ln in err.splitlines()].count(True) == 1 and "bare: holds token id 60000, outside the 32000 ids of mistral" in err, err
