"""Smoke run of ``python -m megatron_ipt.demo --size tiny``: the whole pipeline (real PubMed records,
real tokenizer, ZeRO-3 over 2 processes, real synthesis and evaluation) with a tiny random model.

Asserts that every artefact exists, the report's table holds numbers, a rerun skips every stage,
and that material problems stop the demo with one actionable line and no traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ipt.demo.material import missing_packages
from megatron_ipt.demo.run import N_STAGES

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _demo(out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "megatron_ipt.demo", "--size", "tiny", "--out", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, smollm2_dir) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def _table_rows(report: str) -> list[list[str]]:
    """Data rows of the first markdown table under '## Results'."""
    lines = report.split("## Results", 1)[1].strip().splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    return [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]


def test_every_artefact_exists(demo_out):
    out, _ = demo_out
    assert sorted(p.name for p in (out / "stages").glob("*.json"))[-1].startswith(f"{N_STAGES:02d}_")
    for f in ["REPORT.md", "plots/training_loss.png", "plots/pairs_per_text.png", "corpus/raw.jsonl",
              "corpus/heldout_abstracts.jsonl", "corpus/heldout_tasks.jsonl", "corpus/mined_tasks.jsonl",
              "synthesis/raw.jsonl", "synthesis/raw.stats.json", "corpora/instruct/blend.yaml",
              "corpora/raw_text_document.bin", "corpora/raw_text_document.idx",
              "synthesizer/pair_loss_before.json", "synthesizer/pair_loss_after.json"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ["synthesizer", "vanilla", "instruct"]:
        assert (out / "models" / model / "config.json").is_file()
        assert list((out / "models" / model).glob("*.safetensors"))
    for arm in ["vanilla", "instruct"]:
        metrics = [json.loads(line) for line in (out / "runs" / arm / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if m["kind"] == "train"][-1] > 1
        assert list((out / "runs" / arm / "tensorboard").glob("events.out.tfevents.*"))
    for name in ["start", "vanilla", "instruct"]:
        ev = json.loads((out / "eval" / f"{name}.json").read_text())
        assert math.isfinite(ev["heldout"]["perplexity"]) and ev["tasks"]["n"] > 0


def test_report_table_holds_numbers(demo_out):
    out, _ = demo_out
    report = (out / "REPORT.md").read_text()
    rows = _table_rows(report)
    assert [r[0].split()[0] for r in rows] == ["start", "vanilla", "instruction"]
    for row in rows:
        ppl, loss = float(row[1]), float(row[2])
        assert ppl > 1 and loss > 0
        for cell in row[3:]:
            assert re.fullmatch(r"\d+\.\d+", cell), row
    # Both continual runs saw the same number of tokens, and the report states stage times.
    pretrain = json.loads(next((out / "stages").glob("05_*.json")).read_text())
    assert {r["data"] != "" for r in pretrain["runs"].values()} == {True}
    assert "same budget" in report and "Stage wall times" in report and "stand in" in report
    assert re.search(r"\| evaluate start vs vanilla vs instruct \| \d+ \|", report)


def test_rerun_skips_finished_stages(demo_out):
    out, _ = demo_out
    before = (out / "REPORT.md").stat().st_mtime
    proc = _demo(out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done in an earlier run") == N_STAGES
    assert (out / "REPORT.md").stat().st_mtime == before


def test_other_size_in_same_folder_is_refused(demo_out):
    out, _ = demo_out
    proc = subprocess.run([sys.executable, "-m", "megatron_ipt.demo", "--size", "small", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "holds a 'tiny' demo" in proc.stderr and "Traceback" not in proc.stderr


def test_low_disk_space_is_one_actionable_line(tmp_path):
    proc = _demo(tmp_path / "out", "--min-free-gb", "1e9", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("demo: error:")]
    assert len(lines) == 1 and "GB free" in lines[0] and "--out" in lines[0]
    assert not (tmp_path / "out" / "stages" / "01_material.json").exists()


def test_missing_package_is_one_actionable_line(tmp_path, monkeypatch, capsys):
    from megatron_ipt.demo import material
    from megatron_ipt.demo.__main__ import main

    monkeypatch.setitem(material.PACKAGES, "no_such_module_for_demo", "pip install no-such-module")
    assert missing_packages({"json": "never shown"}) == []
    assert main(["--size", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["demo: error: missing package 'no_such_module_for_demo': pip install no-such-module"]
