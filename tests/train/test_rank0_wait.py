"""Rank 0's lone phases (universal conversion on a resharded resume, export at the end) may outlast
the collective timeout: the other ranks wait for them in a group with the long rank-0 wait."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

TIMEOUT_MIN = 0.2  # a 12 s collective timeout
HOLD_S = 30  # each lone rank-0 phase takes 2.5 timeouts


def _args(run: Path, prefix: str, *extra: str) -> list[str]:
    return ["--config", "configs/tiny.yaml", f"--data.train={prefix}", f"--run_dir={run}",
            f"--checkpoint.dir={run}/ckpt", "--steps=4", "--logging.interval=1", "--logging.eval_interval=0",
            "--logging.tensorboard=false", "--optim.warmup_steps=1", "--data.seq_len=64", "--micro_batch_size=2",
            "--global_batch_size=4", "--ds_config=ds_configs/zero1.json", *extra]


def test_other_ranks_outwait_a_slow_conversion_and_export(tmp_path, pubmed_prefixes, metrics, spawn_job) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    job = spawn_job(1, _args(one, pubmed_prefixes["train"], "--stop_after=2", "--checkpoint.interval=2"))
    assert job.wait() == [0], job.output()
    (two / "ckpt").mkdir(parents=True)
    (one / "ckpt" / "step_00000002").rename(two / "ckpt" / "step_00000002")
    # On 2 ranks: rank 0 converts the 1-rank checkpoint and exports, each for longer than the timeout.
    job = spawn_job(2, _args(two, pubmed_prefixes["train"], f"--dist.timeout_minutes={TIMEOUT_MIN}",
                             f"--export.dir={two}/hf"),
                    entry=[str(Path(__file__).with_name("slow_rank0_train.py"))], extra_env={"SLOW_RANK0_S": str(HOLD_S)})
    codes = job.wait(timeout=600)
    out = job.output(0)
    assert codes == [0, 0], f"exit codes {codes}\n{out[-3000:]}\nrank 1:\n{job.output(1)[-3000:]}"
    assert "universal conversion held" in out and "export held" in out
    assert "collective timeout 0.2 min" in out
    assert sorted(metrics(two)) == [3, 4]
    assert (two / "hf" / "config.json").is_file()
