"""Checkpoints: DeepSpeed save/load plus our own meta.json (step, sampler position, fingerprint).

Layout: ``DIR/step_00000100/`` is one DeepSpeed tag; ``meta.json`` inside it is written last by
rank 0 and marks the checkpoint complete, so a kill mid-save never leaves a "latest" that does not
load. Every rank calls the save (it is a collective); only file bookkeeping is rank-0 work.
A checkpoint saved on a different number of ranks is converted once to DeepSpeed's universal
format (``step_00000100_universal/``) and loaded with ``checkpoint.load_universal``.

Trust: checkpoint files are pickles, and unpickling can run code. Our own files (RNG states) hold
tensors and plain values only and are read with ``torch.load(weights_only=True)``. DeepSpeed's own
loader unpickles its shards without that guard, so before it runs, :func:`check_checkpoint` scans the
pickle of every ``.pt`` file (without loading tensor data) and refuses any global outside
:data:`SAFE_GLOBALS`. Even so, load checkpoints only from sources you trust.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_ipt.io import atomic_write_json
from megatron_ipt.log import get_logger
from megatron_ipt.train.distributed import wait_for_rank0

log = get_logger(__name__)

META = "meta.json"
_TAG = re.compile(r"^step_(\d{8})$")
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")
# Non-tensor classes DeepSpeed pickles into its shards (ZeRO stage enum, loss scaler, bf16
# fragment addresses); anything else in a checkpoint pickle is refused before DeepSpeed loads it.
SAFE_GLOBALS = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
})
REQUIRED_META = ("step", "global_batch_size", "world_size")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit this run."""


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"  # checkpoint directory (relative: under the cwd)
    interval: int = 1000  # steps between saves (0: only at the end and on preemption)
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    resume: str = "auto"  # auto | none | a checkpoint tag directory
    allow_data_change: bool = False  # resume although data, tokenizer or sample count differ (changes logged)
    save_at_end: bool = True  # save a checkpoint after the last step
    # Steps between checks for a preemption signal (each check is a collective and a host sync); after a
    # signal the checkpoint waits for the next check: keep interval x step time below the signal's lead.
    signal_check_interval: int = 5

    def build(self) -> Checkpointer:
        return Checkpointer(self)


@dataclass
class CheckpointMeta:
    """What ``meta.json`` records about a checkpoint: where the run stood and what it ran on."""

    step: int
    global_batch_size: int
    world_size: int
    consumed_samples: int = 0
    zero_stage: int = 1
    model_shape: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    data_spec: dict[str, Any] | None = None
    tokenizer: str = ""  # the tokenizer spec export writes beside the weights
    tokenizer_fingerprint: dict[str, Any] | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    tokens_per_dataset: dict[str, int] = field(default_factory=dict)
    tag: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: Path) -> CheckpointMeta:
        """The meta of a ``meta.json`` object; keys this version does not know are ignored."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: a JSON {type(data).__name__}, expected an object")
        missing = [k for k in REQUIRED_META if not isinstance(data.get(k), int)]
        if missing:
            raise CheckpointError(f"{where}: key {missing[0]!r} missing or not an integer")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def changes_from(self, run: CheckpointMeta) -> list[str]:
        """What differs between this checkpoint's data stream and ``run``'s, one ``key: old -> new`` each."""
        changes: list[str] = []
        if self.data_fingerprint != run.data_fingerprint:
            if isinstance(self.data_spec, dict) and run.data_spec is not None:
                old, new = _flatten(self.data_spec), _flatten(run.data_spec)
                changes += [f"{k}: {old.get(k, '(none)')} -> {new.get(k, '(none)')}"
                            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            if not changes:
                changes.append(f"data fingerprint: {self.data_fingerprint} -> {run.data_fingerprint}")
        saved, now = self.tokenizer_fingerprint, run.tokenizer_fingerprint
        if isinstance(saved, dict) and now is not None and saved.get("hash") != now.get("hash"):
            changes.append(f"tokenizer: {saved.get('name')} (hash {saved.get('hash')}) -> "
                           f"{now.get('name')} (hash {now.get('hash')})")
        return changes


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


def read_meta(tag_dir: str | Path) -> CheckpointMeta:
    path = Path(tag_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{tag_dir}: not a complete checkpoint (no {META})")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: empty, truncated or corrupt ({err})") from None
    return CheckpointMeta.from_json(data, path)


def unsafe_globals(path: Path) -> list[str]:
    """Globals the pickle in ``path`` would import that are not plain tensors/containers or
    :data:`SAFE_GLOBALS`; reads only the pickle, not the tensor data."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # a truncated zip, a legacy/non-torch file, ...
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint file ({_one_line(err)})") from None
    return sorted(set(found) - SAFE_GLOBALS)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def check_checkpoint(tag_dir: Path, meta: CheckpointMeta) -> None:
    """Every shard and RNG file of the saved world size is present, intact and free of unknown
    pickled globals (checked before DeepSpeed's unguarded loader touches any of them)."""
    world = meta.world_size
    files = sorted(tag_dir.glob("*.pt"))
    names = {p.name for p in files}
    missing_rng = [f"rng_rank{r}.pt" for r in range(world) if f"rng_rank{r}.pt" not in names]
    if missing_rng:
        raise CheckpointError(f"{tag_dir}: per-rank RNG file {missing_rng[0]} is missing "
                              f"(saved on {world} ranks): the checkpoint is incomplete")
    stage = meta.zero_stage
    if stage in (0, 1, 2) and "mp_rank_00_model_states.pt" not in names:
        raise CheckpointError(f"{tag_dir}: model shard mp_rank_00_model_states.pt is missing")
    kinds = ("model", "optim") if stage == 3 else ("optim",) if stage else ()
    for kind in kinds:
        ranks = {int(m.group(1)) for p in files if (m := _RANK_FILE.search(p.name)) and m.group(2) == kind}
        absent = sorted(set(range(world)) - ranks)
        if absent:
            raise CheckpointError(f"{tag_dir}: ZeRO-{stage} {kind} shard of rank {absent[0]} is missing "
                                  f"(saved on {world} ranks)")
    for path in files:
        bad = unsafe_globals(path)
        if bad:
            raise CheckpointError(f"{path}: refused to load: its pickle imports {', '.join(bad[:3])} "
                                  "(not a tensor or a known DeepSpeed class; load only trusted checkpoints)")


def resumable_checkpoint(ckpt_dir: str | Path) -> tuple[Path, CheckpointMeta] | None:
    """The newest checkpoint that is complete and intact; corrupt newer ones are skipped with a warning.

    None when there is no checkpoint; an error when there are some but none of them loads.
    """
    found = list_checkpoints(ckpt_dir)
    problems = []
    for _, tag_dir in reversed(found):
        try:
            meta = read_meta(tag_dir)
            check_checkpoint(tag_dir, meta)
        except CheckpointError as err:
            log.warning("checkpoint: skipping %s: %s", tag_dir.name, err)
            problems.append(str(err))
            continue
        return tag_dir, meta
    if problems:
        raise CheckpointError(f"{ckpt_dir}: no intact checkpoint to resume from (newest: {problems[0]}); "
                              "set checkpoint.resume=none to start over")
    return None


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values only (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(int(x) for x in py_state.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_rng_file(path: Path) -> dict[str, Any]:
    """Read an RNG file with ``weights_only=True``: a crafted pickle is refused, never run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for foreign globals, RuntimeError for a torn zip, ...
        raise CheckpointError(f"{path}: refused to load the RNG state ({_one_line(err)}); "
                              "checkpoints must come from a trusted source") from None
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        raise CheckpointError(f"{path}: not an RNG state file (keys python, numpy, torch expected)")
    return state


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine: Any, ckpt_dir: str | Path, meta: CheckpointMeta, keep_last: int) -> Path:
    """Collective save on every rank; meta.json last; then prune to the newest ``keep_last``."""
    root = Path(ckpt_dir)
    tag = tag_for(meta.step)
    rank = dist.get_rank() if dist.is_initialized() else 0
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    torch.save(rng_state(), root / tag / f"rng_rank{rank}.pt")
    _barrier()  # every rank's shards are on disk before the checkpoint is declared complete
    if rank == 0:
        atomic_write_json(root / tag / META, dataclasses.replace(meta, tag=tag).to_json())
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
    """DeepSpeed's universal checkpoint for ``tag_dir`` (rank 0 converts once; the others wait for
    it beyond the collective timeout: 8B states take longer than that)."""
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
    wait_for_rank0()
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
    if not universal:  # a resharded resume draws new RNG streams; same ranks restore them exactly
        set_rng_state(load_rng_file(tag_dir / f"rng_rank{rank}.pt"))
    log.info("checkpoint: resumed from %s%s", tag_dir, " (universal)" if universal else "")


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}


class Checkpointer:
    """A run's checkpoints: layout, listing, which one to resume, save, load and compatibility."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.dir)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def resume_point(self) -> tuple[Path, CheckpointMeta] | None:
        """The checkpoint ``resume`` names: the newest intact one (auto), none, or a given tag directory."""
        if self.cfg.resume == "none":
            return None
        if self.cfg.resume == "auto":
            return resumable_checkpoint(self.dir)  # skips corrupt newer ones, with a warning
        tag_dir = Path(self.cfg.resume)
        meta = read_meta(tag_dir)
        check_checkpoint(tag_dir, meta)
        return tag_dir, meta

    def check_resumable(self, tag_dir: Path, saved: CheckpointMeta, run: CheckpointMeta) -> None:
        """Errors before any compute when the checkpoint belongs to another batch size, model or data
        stream (the blend, its weights, seed, seq_len and sample count, and the tokenizer); with
        ``allow_data_change`` a changed stream is accepted and every change is logged."""
        if saved.global_batch_size != run.global_batch_size:
            raise CheckpointError(f"{tag_dir}: saved with global_batch_size={saved.global_batch_size}, "
                                  f"this run uses {run.global_batch_size}")
        diff = {k: (saved.model_shape.get(k), v) for k, v in run.model_shape.items() if saved.model_shape.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{tag_dir}: checkpoint of another model shape ({details})")
        changes = saved.changes_from(run)
        if not changes:
            return
        if not self.cfg.allow_data_change:
            raise CheckpointError(
                f"{tag_dir}: data fingerprint {saved.data_fingerprint} differs from this run's {run.data_fingerprint} "
                f"({'; '.join(changes)}); set checkpoint.allow_data_change=true to resume on different data"
            )
        log.warning("checkpoint: resuming %s on changed data (checkpoint.allow_data_change=true): %s", tag_dir,
                    "; ".join(changes))

    def save(self, engine: Any, meta: CheckpointMeta) -> Path:
        return save_checkpoint(engine, self.dir, meta, self.cfg.keep_last)

    def load(self, engine: Any, tag_dir: Path, universal: bool) -> None:
        load_checkpoint(engine, tag_dir, universal)
