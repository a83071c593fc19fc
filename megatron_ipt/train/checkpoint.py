"""Checkpoints: DeepSpeed save/load plus our own meta.json (step, sampler position, fingerprint).

Layout: ``DIR/step_00000100/`` is one DeepSpeed tag; ``meta.json`` inside it is written last by
rank 0 and marks the checkpoint complete, so a kill mid-save never leaves a "latest" that does not
load. Every rank calls the save (it is a collective); only file bookkeeping is rank-0 work.
A checkpoint saved on a different number of ranks is converted once to DeepSpeed's universal
format (``step_00000100_universal/``) and loaded with ``checkpoint.load_universal``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_ipt.io import atomic_write_json
from megatron_ipt.log import get_logger

log = get_logger(__name__)

META = "meta.json"
_TAG = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit this run."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with meta.json) under ``ckpt_dir``, oldest first."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _TAG.match(p.name)
        if m and (p / META).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def read_meta(tag_dir: str | Path) -> dict[str, Any]:
    path = Path(tag_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: not a complete checkpoint (no {META})")
    return json.loads(path.read_text())


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine: Any, ckpt_dir: str | Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Collective save on every rank; meta.json last; then prune to the newest ``keep_last``."""
    root = Path(ckpt_dir)
    tag = tag_for(step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    torch.save(rng_state(), root / tag / f"rng_rank{rank}.pt")
    _barrier()  # every rank's shards are on disk before the checkpoint is declared complete
    if rank == 0:
        atomic_write_json(root / tag / META, {**meta, "step": step, "tag": tag})
        if keep_last > 0:
            for _, old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
                shutil.rmtree(old.with_name(old.name + "_universal"), ignore_errors=True)
    _barrier()
    log.info("checkpoint: saved %s", root / tag)
    return root / tag


def universal_dir(tag_dir: Path) -> Path:
    return tag_dir.with_name(tag_dir.name + "_universal")


def convert_to_universal(tag_dir: Path) -> Path:
    """DeepSpeed's universal checkpoint for ``tag_dir`` (rank 0 converts once; all ranks wait)."""
    out = universal_dir(tag_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not (out / ".complete").is_file():
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        shutil.rmtree(out, ignore_errors=True)
        log.info("checkpoint: converting %s to a universal checkpoint (rank count changed)", tag_dir)
        ds_to_universal(argparse.Namespace(
            input_folder=str(tag_dir), output_folder=str(out), num_extract_workers=1, num_merge_workers=1,
            keep_temp_folder=False, strict=True, inject_missing_state=True,
        ))
        (out / ".complete").write_text("ok\n")
    _barrier()
    return out


def load_checkpoint(engine: Any, tag_dir: Path, universal: bool) -> None:
    """Restore model, optimizer and LR scheduler (and this rank's RNG when the rank count matches)."""
    target = convert_to_universal(tag_dir) if universal else tag_dir
    path, _ = engine.load_checkpoint(
        str(target.parent), tag=target.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {target}")
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = tag_dir / f"rng_rank{rank}.pt"
    if not universal and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    log.info("checkpoint: resumed from %s%s", tag_dir, " (universal)" if universal else "")


def check_compatible(meta: dict[str, Any], shape: dict[str, Any], fingerprint: str, allow_data_change: bool,
                     tag_dir: Path) -> None:
    """Errors before any compute when the checkpoint belongs to another model or data stream."""
    saved = meta.get("model_shape", {})
    diff = {k: (saved.get(k), v) for k, v in shape.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{tag_dir}: checkpoint of another model shape ({details})")
    if meta.get("data_fingerprint") != fingerprint and not allow_data_change:
        raise CheckpointError(
            f"{tag_dir}: data fingerprint {meta.get('data_fingerprint')} differs from this run's {fingerprint}; "
            "set checkpoint.allow_data_change=true to resume on different data"
        )
