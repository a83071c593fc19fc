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


def test_cli_help_and_bad_path(tmp_path, capsys) -> None:
    from megatron_ipt.train.export import main

    assert main(["--help"]) == 0
    assert "ZeRO" in capsys.readouterr().out
    assert main([str(tmp_path), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "neither a checkpoint" in err
    assert not (tmp_path / "hf").exists()
