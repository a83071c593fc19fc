"""Export a training checkpoint (any ZeRO stage) to a Hugging Face model directory.

``python -m megatron_ipt.train.export CKPT OUT [--dtype bf16|fp32]`` (or ``--input CKPT --output-dir OUT``): CKPT is a checkpoint tag
directory (``.../step_00000100``) or a checkpoint root (its latest complete checkpoint is used).
OUT gets ``config.json``, ``model.safetensors`` and the tokenizer files; it loads with
``AutoModelForCausalLM.from_pretrained(OUT)`` (and vLLM). OUT must be new, empty or an earlier
export (it holds the marker ``.megatron_ipt_output``): any other folder or file is refused untouched,
and a second export into the same OUT while one runs is refused.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from megatron_ipt.config import ConfigError, run_cli
from megatron_ipt.io import OutputLocked, OutputRefused, atomic_dir, check_replaceable_dir, output_lock
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.train.checkpoint import CheckpointError, check_checkpoint, latest_checkpoint, read_meta

log = get_logger(__name__)


def resolve_tag_dir(path: str | Path) -> Path:
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint nor a directory holding complete checkpoints")
    return latest


def consolidated_state_dict(tag_dir: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights gathered from the ZeRO shards (stage 0: the module states file)."""
    if zero_stage == 0:
        states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


def save_tokenizer(spec: str, out: Path) -> None:
    """Write ``spec``'s tokenizer in HF format into ``out``."""
    from transformers import AutoTokenizer, LlamaTokenizer

    from megatron_ipt.tokenizer import mistral_model_path

    src = Path(spec)
    # Local files only, always: transformers records the flag in tokenizer_config.json, so leaving it
    # to the environment (HF_HUB_OFFLINE) would make two exports of one checkpoint differ.
    if spec == "mistral" or src.suffix == ".model":
        shutil.copyfile(mistral_model_path() if spec == "mistral" else src, out / "tokenizer.model")
        # Mistral's own HF tokenizer starts every text with BOS; lm-eval and generation rely on it.
        tok = LlamaTokenizer.from_pretrained(str(out), local_files_only=True, add_bos_token=True,
                                             add_eos_token=False)
    elif src.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    tok.save_pretrained(str(out))


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Write the HF directory for ``ckpt`` to ``out_dir`` (atomically: see :func:`megatron_ipt.io.atomic_dir`).

    ``out_dir`` is checked first (:func:`megatron_ipt.io.check_replaceable_dir`) and locked for the
    whole export (:func:`megatron_ipt.io.output_lock`)."""
    check_replaceable_dir(out_dir)  # before reading gigabytes of shards
    with output_lock(out_dir):
        return _export(ckpt, Path(out_dir), dtype)


def _export(ckpt: str | Path, out: Path, dtype: str) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    tag_dir = resolve_tag_dir(ckpt)
    meta = read_meta(tag_dir)
    # DeepSpeed's consolidation unpickles without a guard: scan every shard's pickle first.
    check_checkpoint(tag_dir, meta)
    hf_cfg: dict[str, Any] = dict(meta.hf_config)
    model_type = hf_cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **hf_cfg)
    config.use_cache = True  # inference default; training turns it off itself
    config._attn_implementation = "sdpa"
    state = consolidated_state_dict(tag_dir, meta.zero_stage)
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{tag_dir}: weights do not fit the saved config (missing {missing}, unexpected {unexpected})")
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    with atomic_dir(out) as tmp:  # the previous export stays until this one is complete
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(meta.tokenizer, tmp)
    log.info("export: %s -> %s (%s, step %d)", tag_dir, out, dtype, meta.step)
    return out


@dataclass
class ExportArgs:
    input: str = ""  # checkpoint tag dir (.../step_00000100) or checkpoint root (its latest is used)
    output_dir: str = ""  # the HF model directory to write
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # saved weight dtype

    POSITIONAL: ClassVar[tuple[str, ...]] = ("input", "output_dir")
    ALIASES: ClassVar[dict[str, str]] = {"ckpt": "input", "out": "output_dir"}

    def validate(self) -> None:
        if not self.input or not self.output_dir:
            raise ConfigError("give the checkpoint and the output directory: CKPT OUT")


def main(argv: list[str] | None = None) -> int:
    def run(args: ExportArgs) -> int:
        setup_logging()
        export_checkpoint(args.input, args.output_dir, args.dtype)
        return 0

    return run_cli(ExportArgs, argv, run, __doc__, errors=(CheckpointError, OutputRefused, OutputLocked))


if __name__ == "__main__":
    sys.exit(main())
