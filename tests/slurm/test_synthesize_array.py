"""`sbatch --array=3-4 slurm/synthesize.sh`: two array tasks, one shard each, transformers engine.

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


def test_array_synthesizes_one_shard_per_task(slurm_cluster, pubmed_shards, tiny_synthesizer) -> None:
    out_dir = slurm_cluster.root / "synth"
    env = {"INPUTS": " ".join(map(str, pubmed_shards)), "OUTPUT_DIR": str(out_dir),
           "MODEL": str(tiny_synthesizer), "ENGINE": "hf", "RUNS_DIR": str(slurm_cluster.root / "runs")}
    args = ["--engine.tokenizer=mistral", "--limit=3", "--rounds=2", "--max_new_tokens=8",
            "--engine.max_model_len=1024", "--progress=false"]
    jid = slurm_cluster.sbatch(REPO / "slurm" / "synthesize.sh",
                               ["--array=3-4", "--gpus-per-node=0", "--cpus-per-task=1"], args, env=env)
    tasks = slurm_cluster.wait_array(jid, tasks=2, timeout=180)
    logs = {t: slurm_cluster.job_log("synthesize", f"{jid}_{t + 3}") for t in (0, 1)}
    for info in tasks:
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), logs
    assert sorted(int(info["ArrayTaskId"]) for info in tasks) == [3, 4]

    # Task i took shard i (files[i::2]) and only that one.
    for task, (mine, other) in enumerate([pubmed_shards, pubmed_shards[::-1]]):
        assert "--num_shards" not in logs[task] and "--shard_index" not in logs[task]  # no shell arithmetic
        assert f"job={jid}_{task + 3}" in logs[task]
        assert f"array task {task} of 2 takes 1 of 2 input files (0 already finished)" in logs[task]
        tool_output = logs[task].split("launch:", 1)[1].split("\n", 1)[1]  # after the srun line
        assert mine.stem in tool_output and other.stem not in tool_output, logs[task]

    for shard in pubmed_shards:
        records = [json.loads(line) for line in (out_dir / f"{shard.stem}.jsonl").read_text().splitlines()]
        source = [json.loads(line) for line in shard.read_text().splitlines()][:3]
        assert [r["id"] for r in records] == [s["id"] for s in source]
        assert all(r["text"] == s["text"] for r, s in zip(records, source, strict=True))
        stats = json.loads((out_dir / f"{shard.stem}.stats.json").read_text())
        assert stats["texts"] == 3 and 0 < stats["output_tokens"] <= 3 * 8
