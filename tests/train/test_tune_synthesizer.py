"""Tune a synthesizer with ZeRO-3 on 2 CPU ranks from an HF directory; held-out pair loss falls; the
exported directory loads in the synthesis engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _tuning_data(root: Path, tokenizer) -> dict:
    from megatron_ipt.tuning.pubmed import iter_pubmed_records, shipped_pubmed_files
    from megatron_ipt.tuning.pubmed_mining import mine_pubmed
    from megatron_ipt.tuning.tuning_data import TuningDataOptions, build_tuning_data

    records = list(iter_pubmed_records([shipped_pubmed_files()[1]], limit=160))
    examples = list(mine_pubmed(records, seed=0))
    return build_tuning_data(
        examples, root / "synth", tokenizer, TuningDataOptions(max_length=512, held_out=0.15)
    )


def _initial_model(out: Path) -> Path:
    """The tiny config's model, randomly initialised and saved as an HF directory (init_from)."""
    from megatron_ipt.config import load_config
    from megatron_ipt.model.build import build_model
    from megatron_ipt.train.config import TrainConfig

    cfg = load_config(TrainConfig, "configs/tune_synthesizer_tiny.yaml", ["--data.train=unused"])
    torch.manual_seed(0)
    build_model(cfg.model).save_pretrained(out)
    return out


def test_zero3_tuning_lowers_heldout_pair_loss(tmp_path, mistral_tokenizer, train_job, metrics):
    from megatron_ipt.tuning.evaluate import generation_scores, heldout_pair_loss

    data = _tuning_data(tmp_path, mistral_tokenizer)
    train, heldout = data["splits"]["train"], data["splits"]["heldout"]
    assert train["documents"] > 20 and heldout["documents"] > 2
    init = _initial_model(tmp_path / "init")
    before = heldout_pair_loss(init, heldout["prefix"])
    run, export = tmp_path / "run", tmp_path / "hf"
    train_job(
        2,
        [
            "--config",
            "configs/tune_synthesizer_tiny.yaml",
            f"--model.init_from={init}",
            f"--data.train={train['prefix']}",
            f"--data.valid={heldout['prefix']}",
            f"--run_dir={run}",
            f"--checkpoint.dir={run}/ckpt",
            f"--export.dir={export}",
        ],
    )
    from megatron_ipt.train.checkpoint import latest_checkpoint, read_meta

    assert read_meta(latest_checkpoint(run / "ckpt")).zero_stage == 3
    evals = metrics(run, "eval")
    assert sorted(evals) == [4, 8] and evals[8]["loss"] < evals[4]["loss"]
    # the trainer's eval counts pair tokens only: far fewer than the 2 iters x 2 x 512 tokens it reads
    assert evals[8]["tokens"] < 0.6 * 2 * 2 * 512
    after = heldout_pair_loss(export, heldout["prefix"])
    assert after["pair_tokens"] == before["pair_tokens"]
    print(f"held-out pair loss {before['pair_loss']:.3f} -> {after['pair_loss']:.3f}")
    assert after["pair_loss"] < before["pair_loss"] - 0.3, (before, after)

    from megatron_ipt.synth.engines import EngineConfig
    from megatron_ipt.tuning.example import Example
    from megatron_ipt.tuning.tuning_data import heldout_examples_path

    engine = EngineConfig(kind="hf", model=str(export), max_model_len=1024).build()
    assert engine.tokenizer.bos_id == mistral_tokenizer.bos_id and engine.tokenizer.vocab_size == 32000
    import json

    examples = [
        Example.from_dict(json.loads(x))
        for x in heldout_examples_path(tmp_path / "synth").read_text().splitlines()
    ]
    scores = generation_scores(
        engine, examples[:2], max_new_tokens=8, response_tokens=4, max_pairs_per_example=1
    )
    assert scores["contexts"] == 2 and scores["responses"] == 2
