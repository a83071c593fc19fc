"""Bad input is a clear error before any compute: config keys, data, lengths, vocab, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ipt.config import ConfigError, load_config
from megatron_ipt.dist_env import DistEnv
from megatron_ipt.train.checkpoint import CheckpointError
from megatron_ipt.train.config import TrainConfig
from megatron_ipt.train.trainer import _shape_of_config, plan_run

ROOT = Path(__file__).resolve().parents[2]
SINGLE = DistEnv(0, 1, 0, "127.0.0.1", 0, "single")


def _cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, ROOT / "configs" / "tiny.yaml", list(overrides))


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key model\.hiden_size"):
        _cfg("--data.train=x", "--model.hiden_size=8")
    with pytest.raises(ConfigError, match="data.train is required"):
        _cfg()


def test_missing_data_prefix(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"data\.train: data prefix '.*nope': missing .*nope\.bin, .*nope\.idx"):
        plan_run(_cfg(f"--data.train={tmp_path}/nope"), SINGLE)


def test_seq_len_above_model_positions(pubmed_prefixes) -> None:
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings=1024"):
        plan_run(_cfg(f"--data.train={pubmed_prefixes['train']}", "--data.seq_len=2048"), SINGLE)


def test_tokenizer_vocab_vs_embedding(pubmed_prefixes) -> None:
    with pytest.raises(ConfigError, match="32000 tokens but the model's embedding has 32768 rows"):
        plan_run(_cfg(f"--data.train={pubmed_prefixes['train']}", "--model.vocab_size=32768",
                      "--model.expected_parameters=null"), SINGLE)


def test_batch_sizes_that_do_not_divide(pubmed_prefixes) -> None:
    with pytest.raises(ConfigError, match="not divisible"):
        plan_run(_cfg(f"--data.train={pubmed_prefixes['train']}", "--global_batch_size=6",
                      "--micro_batch_size=2"), DistEnv(0, 2, 0, "127.0.0.1", 0, "single"))


def _fake_checkpoint(root: Path, cfg: TrainConfig, fingerprint: str) -> Path:
    tag = root / "step_00000004"
    tag.mkdir(parents=True)
    meta = {"step": 4, "consumed_samples": 32, "global_batch_size": cfg.global_batch_size, "world_size": 1,
            "model_shape": _shape_of_config(cfg), "data_fingerprint": fingerprint}
    (tag / "meta.json").write_text(json.dumps(meta))
    # The files of a complete 1-rank ZeRO-1 checkpoint (contents are not loaded by plan_run).
    import torch

    from megatron_ipt.train.checkpoint import rng_state

    torch.save(rng_state(), tag / "rng_rank0.pt")
    torch.save({"module": {}}, tag / "mp_rank_00_model_states.pt")
    torch.save({}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return tag


def test_checkpoint_of_another_shape_or_data(tmp_path, pubmed_prefixes) -> None:
    train = f"--data.train={pubmed_prefixes['train']}"
    ckpt = f"--checkpoint.dir={tmp_path}/ckpt"
    plan = plan_run(_cfg(train, ckpt), SINGLE)  # nothing to resume yet
    assert plan.resume_from is None
    _fake_checkpoint(tmp_path / "ckpt", _cfg(train), plan.train.fingerprint)
    with pytest.raises(CheckpointError, match=r"another model shape \(hidden_size: checkpoint 64 vs config 128"):
        plan_run(_cfg(train, ckpt, "--model.hidden_size=128", "--model.expected_parameters=null"), SINGLE)
    other = f"--data.train={pubmed_prefixes['other']}"
    with pytest.raises(CheckpointError, match="data fingerprint"):
        plan_run(_cfg(other, ckpt), SINGLE)
    assert plan_run(_cfg(other, ckpt, "--checkpoint.allow_data_change=true"), SINGLE).resume_meta.step == 4
    with pytest.raises(CheckpointError, match="global_batch_size=8"):
        plan_run(_cfg(train, ckpt, "--global_batch_size=16"), SINGLE)


def test_data_of_another_tokenizer_fails_before_any_step(tmp_path, pubmed_prefixes, smollm2_dir) -> None:
    """Tokenized with Mistral's tokenizer, trained with SmolLM2's: every id is valid and wrong. Refused."""
    prefix = pubmed_prefixes["train"]  # preprocess(..., mistral) through the data core
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_ipt.train", "--config", "configs/tiny.yaml", f"--data.train={prefix}",
         f"--data.tokenizer={smollm2_dir}", "--model.vocab_size=49152", f"--run_dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert f"data.train: dataset {prefix} was tokenized with mistral (vocab 32000" in err[0]
    assert f"but data.tokenizer is {smollm2_dir} (vocab 49152" in err[0]
    assert "data.allow_tokenizer_mismatch=true" in err[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # The held-out blend is checked too.
    from megatron_ipt.data.preprocess import preprocess

    (tmp_path / "smol.jsonl").write_text("".join(json.dumps({"text": t * 40}) + "\n" for t in ("a b ", "c d ")))
    smol = preprocess(tmp_path / "smol.jsonl", tmp_path / "smol", str(smollm2_dir), workers=0, progress=False,
                      append_eod=True)["prefix"]
    with pytest.raises(ConfigError, match=rf"data\.valid: dataset {pubmed_prefixes['valid']} was tokenized with mis"):
        plan_run(_cfg(f"--data.train={smol}", f"--data.valid={pubmed_prefixes['valid']}", "--data.seq_len=128",
                      f"--data.tokenizer={smollm2_dir}", "--model.vocab_size=49152",
                      "--model.expected_parameters=null", f"--checkpoint.dir={tmp_path}/none"), SINGLE)


def test_tokenizer_mismatch_override(tmp_path, pubmed_prefixes, smollm2_dir, caplog) -> None:
    plan = plan_run(_cfg(f"--data.train={pubmed_prefixes['train']}", f"--data.tokenizer={smollm2_dir}",
                         "--model.vocab_size=49152", "--model.expected_parameters=null",
                         "--data.allow_tokenizer_mismatch=true", f"--checkpoint.dir={tmp_path}/ckpt"), SINGLE)
    assert plan.tokenizer.vocab_size == 49152
    assert "training on it anyway" in caplog.text and "was tokenized with mistral" in caplog.text


def test_resume_refuses_changed_data_and_says_what_changed(tmp_path, pubmed_prefixes, caplog) -> None:
    """A longer run (more samples: another order), other data or another tokenizer: refused or logged."""
    args = [f"--data.train={pubmed_prefixes['train']}", f"--checkpoint.dir={tmp_path}/ckpt", "--steps=20"]
    plan = plan_run(_cfg(*args), SINGLE)
    cfg = _cfg(*args)
    tag = _fake_checkpoint(tmp_path / "ckpt", cfg, plan.train.fingerprint)
    meta = json.loads((tag / "meta.json").read_text())
    meta |= {"data_spec": plan.train.loader.spec, "tokenizer_fingerprint": plan.tokenizer.fingerprint()}
    (tag / "meta.json").write_text(json.dumps(meta))
    assert plan_run(_cfg(*args), SINGLE).resume_meta.step == 4  # the same stream resumes
    samples = 20 * cfg.global_batch_size
    with pytest.raises(CheckpointError, match=rf"num_samples: {samples} -> {2 * samples}\)"):
        plan_run(_cfg(*args, "--steps=40"), SINGLE)
    with pytest.raises(CheckpointError, match=r"datasets\[0\]\.prefix: .*train -> .*other"):
        plan_run(_cfg(*args, f"--data.train={pubmed_prefixes['other']}"), SINGLE)
    meta["tokenizer_fingerprint"] = {**meta["tokenizer_fingerprint"], "hash": "0" * 16, "name": "old-tok"}
    (tag / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tokenizer: old-tok \(hash 0{16}\) -> mistral"):
        plan_run(_cfg(*args), SINGLE)
    caplog.clear()
    plan_run(_cfg(*args, "--steps=40", "--checkpoint.allow_data_change=true"), SINGLE)
    assert f"num_samples: {samples} -> {2 * samples}" in caplog.text and "tokenizer: old-tok" in caplog.text


def test_cli_fails_before_compute(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_ipt.train", "--config", "configs/tiny.yaml",
         f"--data.train={tmp_path}/missing", f"--run_dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: data.train: data prefix '{tmp_path}/missing': missing {tmp_path}/missing.bin" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    from megatron_ipt.train.__main__ import main

    assert main(["--help"]) == 0


@pytest.mark.parametrize(("export", "says"), [
    ("{run}", r"export\.dir=.*/run is run_dir="),
    ("{run}/ckpt", r"export\.dir=.*/run/ckpt is checkpoint\.dir="),
    ("{tmp}", r"export\.dir=.* contains run_dir="),
    ("{run}/ckpt/hf", r"lies inside checkpoint\.dir=.*listed and pruned"),
    ("{run}/tensorboard", r"is tensorboard of run_dir=.*which the trainer writes"),
])
def test_export_dir_among_the_run_outputs_is_refused_by_the_config(tmp_path, export, says) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=says):
        _cfg("--data.train=x", f"--run_dir={run}", f"--checkpoint.dir={run}/ckpt",
             f"--export.dir={export.format(run=run, tmp=tmp_path)}")
    _cfg("--data.train=x", f"--run_dir={run}", f"--checkpoint.dir={run}/ckpt", f"--export.dir={run}/hf")  # its own


def test_export_dir_holding_other_files_is_refused_before_step_1(tmp_path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine\n")
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_ipt.train", "--config", "configs/tiny.yaml", f"--data.train={tmp_path}/x",
         f"--run_dir={tmp_path}/run", f"--checkpoint.dir={tmp_path}/run/ckpt", f"--export.dir={notes}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: export.dir: {notes}: the folder holds files this tool did not write" in proc.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["a.txt"] and not (tmp_path / "run" / "metrics.jsonl").exists()


CUT_UNDER_A_READER = """
import os, sys
import numpy as np
from megatron_ipt.data.indexed import IndexedDataset, IndexedDatasetWriter
from megatron_ipt.train.__main__ import report_crashes
report_crashes()
prefix = sys.argv[1]
with IndexedDatasetWriter(prefix, np.int32) as w:
    for d in range(64):
        w.add_document(list(range(d * 1000, d * 1000 + 1000)))
ds = IndexedDataset(prefix)
os.truncate(prefix + ".bin", 4096)  # in place, as a rewrite of the dataset under a running job does
def read_last_document():
    return int(ds.get(63).sum())
read_last_document()
"""


def test_a_bin_truncated_under_a_run_dies_with_the_read_named_and_the_rerun_names_the_file(tmp_path) -> None:
    """SIGBUS cannot become a Python error; the trainer's crash report shows the Python frames of the
    read, and the next start refuses the file in one line (the README's Known limits)."""
    import signal

    prefix = str(tmp_path / "cut")
    proc = subprocess.run([sys.executable, "-c", CUT_UNDER_A_READER, prefix], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-2000:])
    assert "Fatal Python error: Bus error" in proc.stderr and "in read_last_document" in proc.stderr, proc.stderr
    from megatron_ipt.data.indexed import IndexedDatasetError

    with pytest.raises(IndexedDatasetError, match=r"cut\.bin: 4096 bytes but .*cut\.idx describes .*inconsistent"):
        plan_run(_cfg(f"--data.train={prefix}"), SINGLE)
