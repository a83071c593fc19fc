"""megatron_ipt.cluster.preflight: the Slurm scripts' fail-fast check (node list, master, inputs, config)."""

from __future__ import annotations

import shutil

import pytest

from megatron_ipt.cluster import preflight
from megatron_ipt.dist_env import master_port_for_job


@pytest.fixture
def tiny_prefix(tmp_path) -> str:
    from megatron_ipt.data.indexed import IndexedDatasetWriter

    prefix = str(tmp_path / "tiny_text_document")
    writer = IndexedDatasetWriter(prefix, "uint16")
    for doc in ([1, 5, 6, 2], [1, 7, 2]):
        writer.add_document(doc)
    writer.finalize()
    return prefix


def _clear_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("SLURM_") or k in ("MASTER_ADDR", "MASTER_PORT")]:
        monkeypatch.delenv(key)


def test_preflight_prints_master_exports(monkeypatch, capsys, tiny_prefix, tmp_path) -> None:
    _clear_slurm(monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost")
    rc = preflight.main(["--require-prefix", tiny_prefix, "--require-dir", str(tmp_path),
                      "--require-path", tiny_prefix + ".bin"])
    assert rc == 0
    assert capsys.readouterr().out.splitlines() == [
        "export MASTER_ADDR=127.0.0.1", f"export MASTER_PORT={master_port_for_job(777)}"]


def test_preflight_reports_every_problem(monkeypatch, capsys, tmp_path) -> None:
    _clear_slurm(monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-")
    rc = preflight.main(["--require-prefix", str(tmp_path / "nope"),
                      "--require-dir", str(tmp_path / "ckpt"), "--require-file", str(tmp_path / "x.yaml")])
    err = capsys.readouterr()
    assert rc == 2 and err.out == ""
    assert f"data prefix '{tmp_path / 'nope'}': missing {tmp_path / 'nope'}.bin, {tmp_path / 'nope'}.idx" in err.err
    assert f"required directory '{tmp_path / 'ckpt'}' does not exist" in err.err
    assert f"required file '{tmp_path / 'x.yaml'}' does not exist" in err.err
    assert "cannot parse Slurm node list 'gpu[01-'" in err.err


def test_preflight_checks_the_training_config(monkeypatch, capsys, tiny_prefix, repo_root, tmp_path) -> None:
    _clear_slurm(monkeypatch)
    monkeypatch.chdir(repo_root)  # configs name ds_configs/ relative to the checkout, as the scripts run
    config = str(repo_root / "configs" / "tiny.yaml")
    assert preflight.main(["--train-config", config, "--", f"--data.train={tiny_prefix}"]) == 0
    # Weights and a blend in Megatron's string form: only prefixes are checked.
    other = tmp_path / "other_text_document"
    for ext in (".bin", ".idx"):
        shutil.copyfile(tiny_prefix + ext, f"{other}{ext}")
    assert preflight.main(["--train-config", config, "--", f"--data.train=0.3 {tiny_prefix} 0.7 {other}"]) == 0
    assert preflight.main(["--train-config", config, "--", f"--data.train=0.3 {tiny_prefix} 0.7 {tiny_prefix}"]) == 2
    assert "names the same dataset" in capsys.readouterr().err
    capsys.readouterr()

    missing = tmp_path / "absent_text_document"
    rc = preflight.main(["--train-config", config, "--", f"--data.train=[[0.5, {tiny_prefix}], [0.5, {missing}]]",
                      f"--data.valid={missing}", f"--model.init_from={tmp_path / 'no_model'}",
                      f"--checkpoint.resume={tmp_path / 'no_ckpt'}", f"--data.tokenizer={tmp_path / 'llama3'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"data.train: data prefix '{missing}'" in err
    assert f"data.valid: data prefix '{missing}'" in err
    assert f"model.init_from: checkpoint directory '{tmp_path / 'no_model'}' does not exist" in err
    assert f"checkpoint.resume: checkpoint '{tmp_path / 'no_ckpt'}' does not exist" in err
    assert f"data.tokenizer: '{tmp_path / 'llama3'}' does not exist" in err

    rc = preflight.main(["--train-config", config, "--", f"--data.train={tiny_prefix}", "--optim.lrr=1"])
    assert rc == 2 and "optim.lrr" in capsys.readouterr().err


def test_preflight_refuses_data_of_another_tokenizer(monkeypatch, capsys, repo_root, tmp_path, smollm2_dir) -> None:
    from megatron_ipt.data.preprocess import preprocess

    _clear_slurm(monkeypatch)
    monkeypatch.chdir(repo_root)
    (tmp_path / "c.jsonl").write_text('{"text": "A document tokenized with Mistral."}\n')
    prefix = preprocess(tmp_path / "c.jsonl", tmp_path / "c", "mistral", workers=0, progress=False)["prefix"]
    config = str(repo_root / "configs" / "tiny.yaml")
    assert preflight.main(["--train-config", config, "--", f"--data.train={prefix}"]) == 0
    capsys.readouterr()
    rc = preflight.main(["--train-config", config, "--", f"--data.train={prefix}",
                         f"--data.tokenizer={smollm2_dir}", "--model.vocab_size=49152"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"data.train: dataset {prefix} was tokenized with mistral (vocab 32000" in err
    assert f"but data.tokenizer is {smollm2_dir} (vocab 49152" in err and "data.allow_tokenizer_mismatch=true" in err
    assert preflight.main(["--train-config", config, "--", f"--data.train={prefix}",
                           f"--data.tokenizer={smollm2_dir}", "--data.allow_tokenizer_mismatch=true"]) == 0


def test_preflight_rejects_overrides_without_config(capsys) -> None:
    assert preflight.main(["--steps=3"]) == 2
    assert "unknown config key steps" in capsys.readouterr().err
    assert preflight.main(["--", "--steps=3"]) == 2
    assert "training overrides without --train-config: --steps=3" in capsys.readouterr().err


def test_preflight_checks_a_yaml_list_of_weight_prefix_entries(monkeypatch, capsys, tiny_prefix, repo_root,
                                                                tmp_path) -> None:
    """The form build_corpora's blend.yaml and hand-written configs use: each prefix itself is checked."""
    import yaml

    _clear_slurm(monkeypatch)
    monkeypatch.chdir(repo_root)
    missing = str(tmp_path / "absent_text_document")
    run = tmp_path / "run.yaml"

    def write(train: list) -> str:
        run.write_text(yaml.safe_dump({"include": [str(repo_root / "configs" / "tiny.yaml")], "data": {"train": train}}))
        return str(run)

    other = tmp_path / "other_text_document"
    for ext in (".bin", ".idx"):
        shutil.copyfile(tiny_prefix + ext, f"{other}{ext}")
    good = [{"weight": 0.25, "prefix": tiny_prefix}, {"weight": 0.75, "prefix": str(other)}]
    assert preflight.main(["--train-config", write(good)]) == 0
    capsys.readouterr()
    rc = preflight.main(["--train-config", write([good[0], {"weight": 0.75, "prefix": missing}])])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"data.train: data prefix '{missing}': missing {missing}.bin, {missing}.idx" in err
    assert "weight" not in err and tiny_prefix + "'" not in err  # only the absent prefix, by its own path
    rc = preflight.main(["--train-config", write([{"weight": -1, "prefix": tiny_prefix}])])
    assert rc == 2 and f"data.train: blend weight for {tiny_prefix} must be positive, got -1" in capsys.readouterr().err


def test_preflight_refuses_an_export_dir_the_export_did_not_write(monkeypatch, capsys, tiny_prefix, repo_root,
                                                                  tmp_path) -> None:
    _clear_slurm(monkeypatch)
    monkeypatch.chdir(repo_root)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine\n")
    rc = preflight.main(["--train-config", str(repo_root / "configs" / "tiny.yaml"), "--",
                         f"--data.train={tiny_prefix}", f"--export.dir={tmp_path / 'notes'}"])
    assert rc == 2
    assert f"export.dir: {tmp_path / 'notes'}: the folder holds files this tool did not write" in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine\n"
