"""Export helpers: CLI, checkpoint resolution errors, tokenizer written in HF form.

The full round trip (ZeRO-1 and ZeRO-3 checkpoints -> HF dir -> same logits and held-out loss) runs
with real DeepSpeed jobs in tests/train/test_resume.py and tests/train/test_train_zero.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ipt.train.checkpoint import CheckpointError
from megatron_ipt.train.export import resolve_tag_dir, save_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_picks_latest_complete_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_tag_dir(tmp_path)
    for step in (2, 4, 6):
        (tmp_path / f"step_{step:08d}").mkdir()
    (tmp_path / "step_00000002" / "meta.json").write_text("{}")
    (tmp_path / "step_00000004" / "meta.json").write_text("{}")  # step 6 has no meta: incomplete
    assert resolve_tag_dir(tmp_path).name == "step_00000004"
    assert resolve_tag_dir(tmp_path / "step_00000002").name == "step_00000002"


def test_mistral_tokenizer_exported_in_hf_form(tmp_path, mistral_tokenizer) -> None:
    from transformers import AutoTokenizer

    save_tokenizer("mistral", tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["Patients with type 2 diabetes were randomized.", "IL-6 levels (p < 0.05) rose."]:
        assert hf(text, add_special_tokens=False)["input_ids"] == mistral_tokenizer.encode(text)
    assert hf.bos_token_id == mistral_tokenizer.bos_id and hf.eos_token_id == mistral_tokenizer.eos_id
    # As Mistral's own HF tokenizer: BOS first by default (lm-eval and generation encode this way), no EOS.
    text = "Patients with type 2 diabetes were randomized."
    assert hf(text)["input_ids"] == [mistral_tokenizer.bos_id, *mistral_tokenizer.encode(text)]


def test_cli_help_and_bad_path(tmp_path, capsys) -> None:
    from megatron_ipt.train.export import main

    assert main(["--help"]) == 0
    assert "ZeRO" in capsys.readouterr().out
    assert main([str(tmp_path), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "neither a checkpoint" in err
    assert not (tmp_path / "hf").exists()


# -- the output folder: only a new, empty or earlier-export folder is replaced (issue 23 items 1-4) ------


@pytest.fixture
def zero0_checkpoint(tmp_path, save_tiny_llama) -> Path:
    """A ZeRO-0 checkpoint tag in DeepSpeed's layout (module states, RNG file, meta.json) of a tiny
    Llama, written directly: these tests are about the output folder, and the DeepSpeed round trip
    is tested in tests/train/test_resume.py."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from megatron_ipt.train.checkpoint import rng_state

    model = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "src"))
    tag = tmp_path / "run" / "ckpt" / "step_00000002"
    tag.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, tag / "mp_rank_00_model_states.pt")
    torch.save(rng_state(), tag / "rng_rank0.pt")
    meta = {"step": 2, "global_batch_size": 2, "world_size": 1, "zero_stage": 0, "tokenizer": "mistral",
            "hf_config": model.config.to_dict()}
    (tag / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.1}\n')
    (tmp_path / "run" / "config.yaml").write_text("steps: 2\n")
    return tag


def _state(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``root``: mode and bytes (folders: mode only)."""
    return {str(p.relative_to(root)): (p.lstat().st_mode, None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def _export_cli(capsys, *argv: object) -> tuple[int, str]:
    from megatron_ipt.train.export import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("target", ["the run dir", "the checkpoint root", "a folder of other files", "a file",
                                    "a path under a file"])
def test_export_refuses_what_it_did_not_write_and_leaves_every_byte(tmp_path, zero0_checkpoint, capsys,
                                                                     target) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine\n")
    (tmp_path / "f").write_text("precious\n")
    out = {"the run dir": tmp_path / "run", "the checkpoint root": tmp_path / "run" / "ckpt",
           "a folder of other files": tmp_path / "notes", "a file": tmp_path / "f",
           "a path under a file": tmp_path / "f" / "hf"}[target]
    before = _state(tmp_path)
    code, err = _export_cli(capsys, tmp_path / "run" / "ckpt", out)
    assert code == 2 and [ln.startswith("error: ") for ln in err.splitlines()].count(True) == 1, err
    assert str(out) in err and ("refusing to replace" in err or "a file stands where a folder must be" in err), err
    assert _state(tmp_path) == before  # not one byte, mode or leftover name changed


def test_export_replaces_an_empty_folder_an_earlier_export_and_a_copy_of_one(tmp_path, zero0_checkpoint,
                                                                            capsys) -> None:
    import shutil

    from megatron_ipt.io import DIR_MARKER

    first, empty = tmp_path / "hf", tmp_path / "empty"
    empty.mkdir()
    for out in (first, empty):
        assert _export_cli(capsys, zero0_checkpoint, out)[0] == 0
    shutil.copytree(first, tmp_path / "copy")  # the copy holds the marker, so it may be replaced
    assert _export_cli(capsys, zero0_checkpoint, tmp_path / "copy", "--dtype", "float32")[0] == 0
    assert (tmp_path / "copy" / DIR_MARKER).is_file()
    # Normal permissions: model.safetensors gets the mode of every other file (a plain open's).
    (tmp_path / "plain").write_text("x")
    modes = {p.name: p.stat().st_mode for p in first.iterdir()}
    assert set(modes.values()) == {(tmp_path / "plain").stat().st_mode}, modes
    assert "model.safetensors" in modes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "hf.", "copy."))) == []


def test_a_second_export_into_a_locked_folder_is_refused(tmp_path, zero0_checkpoint, capsys) -> None:
    """Another process holds the output lock (as a running export does): this export is refused."""
    import subprocess
    import sys

    out = tmp_path / "hf"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from megatron_ipt.io import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _export_cli(capsys, zero0_checkpoint, out)
        assert code == 2 and f"another run (pid {holder.pid}) is writing this output" in err, err
        assert not out.exists()
    finally:
        holder.communicate("\n", timeout=60)
    assert _export_cli(capsys, zero0_checkpoint, out)[0] == 0
