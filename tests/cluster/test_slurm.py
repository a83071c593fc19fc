"""megatron_ipt.cluster.slurm: the stage scripts' environment -> override map and BLEND launch config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from megatron_ipt.cluster.slurm import TRAIN_ENV, StageError, main, train_args
from megatron_ipt.config import config_keys, load_config
from megatron_ipt.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_environment_becomes_overrides_and_the_command_line_wins(tmp_path: Path) -> None:
    env = {"DATA": "0.7 a 0.3 b", "STEPS": "12", "LR": "1e-4", "RESUME": "none", "VALID": ""}
    args = train_args(str(REPO / "configs" / "tiny.yaml"), str(tmp_path / "job"), str(tmp_path / "run"), env,
                      ["--steps=30"])
    assert args[:4] == ["--config", str(REPO / "configs" / "tiny.yaml"), f"--run_dir={tmp_path / 'job'}",
                        f"--checkpoint.dir={tmp_path / 'run'}/checkpoints"]
    assert args[4:] == ["--data.train=0.7 a 0.3 b", "--steps=12", "--optim.lr=1e-4", "--checkpoint.resume=none",
                        "--steps=30"]  # VALID is empty: not an override
    cfg = load_config(TrainConfig, args[1], args[2:])
    assert (cfg.steps, cfg.optim.lr, cfg.data.train, cfg.checkpoint.resume) == (30, 1e-4, "0.7 a 0.3 b", "none")
    assert set(TRAIN_ENV.values()) <= {k.key for k in config_keys(TrainConfig)}  # every one a real key


def test_blend_is_laid_over_the_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job").mkdir()
    (tmp_path / "blend.yaml").write_text("data:\n  train: [[1.0, corpus/x_text_document]]\n")
    args = train_args("configs/tiny.yaml", "job", "run", {"BLEND": "blend.yaml", "CKPT_DIR": "ck"})
    assert args[:2] == ["--config", str(Path("job") / "launch_config.yaml")]
    assert args[3] == "--checkpoint.dir=ck"
    included = yaml.safe_load((tmp_path / "job" / "launch_config.yaml").read_text())["include"]
    assert Path(included[0]).name == "tiny.yaml" and included[1] == str(tmp_path / "blend.yaml")
    cfg = load_config(TrainConfig, args[1], args[2:])
    assert cfg.data.train == [[1.0, "corpus/x_text_document"]] and cfg.model.num_layers >= 1


@pytest.mark.parametrize("config, env, message", [
    ("configs/no_such.yaml", {}, "training config 'configs/no_such.yaml' not found"),
    ("configs/tiny.yaml", {"BLEND": "nope.yaml"}, "BLEND file 'nope.yaml' not found"),
    ("configs/tiny.yaml", {"DATA": "a\nb"}, "holds a newline"),
])
def test_bad_stage_settings(tmp_path: Path, monkeypatch, config, env, message) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=message):
        train_args(config, str(tmp_path), str(tmp_path), env)


def test_cli_prints_one_argument_per_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STEPS", "5")
    monkeypatch.delenv("BLEND", raising=False)
    assert main(["--train-config", "configs/tiny.yaml", "--job-dir", "j", "--run-dir", "r", "--",
                 "--seed=3"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["--steps=5", "--seed=3"]
    monkeypatch.chdir(tmp_path)
    assert main(["--train-config", "configs/none.yaml", "--job-dir", "j", "--run-dir", "r"]) == 2
    assert capsys.readouterr().err.startswith("error: training config 'configs/none.yaml' not found")
