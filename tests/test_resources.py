"""megatron_ipt.resources: shipped configs found through the package; the user's paths from the cwd."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ipt import resources
from megatron_ipt.train.config import TrainConfig
from megatron_ipt.train.ds_config import load_ds_json


def test_shipped_files_resolve_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    zero2 = resources.resolve(TrainConfig().ds_config)
    assert zero2.is_file() and zero2 == resources.shipped_dir("ds_configs") / "zero2.json"
    assert load_ds_json(TrainConfig().ds_config)["zero_optimization"]["stage"] == 2
    assert (resources.shipped_dir("configs") / "demo" / "continual.yaml").is_file()
    with pytest.raises(ValueError, match="no shipped folder"):
        resources.shipped_dir("runs")


def test_user_paths_win_and_missing_ones_stay_as_given(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2.json").write_text('{"zero_optimization": {"stage": 1}}')
    assert resources.resolve("ds_configs/zero2.json") == Path("ds_configs/zero2.json")  # the user's own copy
    assert load_ds_json("ds_configs/zero2.json")["zero_optimization"]["stage"] == 1
    assert resources.resolve("ds_configs/nope.json") == Path("ds_configs/nope.json")
    assert resources.resolve("mine.yaml") == Path("mine.yaml")
