"""`sbatch --array=3-4 slurm/synthesize.sh`: two array tasks sharing four work units, transformers engine.

The array starts at 3: the tool numbers its tasks from SLURM_ARRAY_TASK_MIN (through launch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_synthesizer(slurm_cluster, save_tiny_llama) -> Path:
    """A tiny random Llama saved as an HF directory; prompts use the real Mistral tokenizer."""
    return save_tiny_llama(slurm_cluster.root / "models" / "tiny_synthesizer", max_position_embeddings=4096)


def test_array_shares_work_units(slurm_cluster, pubmed_shards, tiny_synthesizer) -> None:
    """Two files cut into units of 2 lines (3 lines read of each): 4 units, and array task i of 2
    takes units i and i+2, so each task writes one unit of each file."""
    out_dir = slurm_cluster.root / "synth"
    env = {"INPUTS": " ".join(map(str, pubmed_shards)), "OUTPUT_DIR": str(out_dir),
           "MODEL": str(tiny_synthesizer), "ENGINE": "hf", "RUNS_DIR": str(slurm_cluster.root / "runs")}
    args = ["--engine.tokenizer=mistral", "--limit=3", "--unit_texts=2", "--rounds=2", "--max_new_tokens=8",
            "--engine.max_model_len=1024", "--progress=false"]
    jid = slurm_cluster.sbatch(REPO / "slurm" / "synthesize.sh",
                               ["--array=3-4", "--gpus-per-node=0", "--cpus-per-task=1"], args, env=env)
    tasks = slurm_cluster.wait_array(jid, tasks=2, timeout=180)
    logs = {t: slurm_cluster.job_log("synthesize", f"{jid}_{t + 3}") for t in (0, 1)}
    for info in tasks:
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), logs
    assert sorted(int(info["ArrayTaskId"]) for info in tasks) == [3, 4]

    units = [f"{s.stem}.{k:05d}" for s in pubmed_shards for k in (0, 1)]
    for task in (0, 1):
        assert "--num_tasks" not in logs[task] and "--task_index" not in logs[task]  # no shell arithmetic
        assert f"job={jid}_{task + 3}" in logs[task]
        assert f"array task {task} of 2 takes 2 of 4 work units over 2 input files (0 already finished)" in logs[task]
        tool_output = logs[task].split("launch:", 1)[1].split("\n", 1)[1]  # after the srun line
        mine, others = units[task::2], units[1 - task :: 2]
        assert all(f"{u}.jsonl" in tool_output for u in mine), logs[task]
        assert not any(f"{u}.jsonl" in tool_output for u in others), logs[task]

    for shard in pubmed_shards:
        records = [json.loads(line) for k in (0, 1)
                   for line in (out_dir / f"{shard.stem}.{k:05d}.jsonl").read_text().splitlines()]
        source = [json.loads(line) for line in shard.read_text().splitlines()][:3]
        assert [r["id"] for r in records] == [s["id"] for s in source]
        assert all(r["text"] == s["text"] for r, s in zip(records, source, strict=True))
        for k, texts in ((0, 2), (1, 1)):
            stats = json.loads((out_dir / f"{shard.stem}.{k:05d}.stats.json").read_text())
            assert stats["texts"] == texts and 0 < stats["output_tokens"] <= texts * 8
            assert stats["input_lines"] == [2 * k, min(3, 2 * k + 2)]
