"""What a run decides before compute (``trainer.plan_run``) is computed once: its blends are parsed
and their files checked once, however many readers the run has."""

from __future__ import annotations

from pathlib import Path

from megatron_ipt.config import load_config
from megatron_ipt.data import blend as blend_module
from megatron_ipt.dist_env import DistEnv
from megatron_ipt.train.config import TrainConfig
from megatron_ipt.train.trainer import plan_run

ROOT = Path(__file__).resolve().parents[2]


def test_one_run_parses_its_blend_once_and_checks_its_files_once(pubmed_prefixes, monkeypatch) -> None:
    parsed: list[object] = []
    checked: list[str] = []
    parse, check = blend_module.Blend.parse.__func__, blend_module.Blend.check_exists

    def counting_parse(cls, spec, where="blend"):
        if not isinstance(spec, blend_module.Blend):
            parsed.append(spec)
        return parse(cls, spec, where)

    def counting_check(self, where="blend"):
        checked.append(where)
        return check(self, where)

    monkeypatch.setattr(blend_module.Blend, "parse", classmethod(counting_parse))
    monkeypatch.setattr(blend_module.Blend, "check_exists", counting_check)
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny.yaml",
                      [f"--data.train=0.5 {pubmed_prefixes['train']} 0.5 {pubmed_prefixes['other']}",
                       f"--data.valid={pubmed_prefixes['valid']}", "--logging.eval_interval=2"])
    plan = plan_run(cfg, DistEnv(0, 1, 0, "127.0.0.1", 0, "single"))
    assert plan.train.blend is cfg.data.train_blend and plan.valid
    assert len(parsed) == 2  # data.train and data.valid, each once
    assert sorted(checked) == ["data.train", "data.valid"]
