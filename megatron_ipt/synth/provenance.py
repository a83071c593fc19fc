"""Which synthesizer wrote a unit: a fingerprint of the model directory, stored in every unit's stats.

Hashing a 7B model's weights would read gigabytes per run, so the fingerprint hashes what tells
models apart cheaply: ``config.json``, ``generation_config.json``, the name and size of every
weights file, and 16 evenly spaced 64 KiB samples of each weights file (two fine-tunes of one base
share shapes and sizes, never those bytes). The tokenizer is recorded by its own fingerprint.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_SAMPLES = 16
_SAMPLE_BYTES = 1 << 16


def _sampled_digest(path: Path, h: Any) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for k in range(_SAMPLES):
            fh.seek(max(0, (size - _SAMPLE_BYTES) * k // max(_SAMPLES - 1, 1)))
            h.update(fh.read(_SAMPLE_BYTES))


@lru_cache(maxsize=8)
def _fingerprint(path: str, stamp: tuple) -> dict[str, Any]:
    root = Path(path)
    h = hashlib.sha256()
    files: list[dict[str, Any]] = []
    for name in ("config.json", "generation_config.json"):
        if (root / name).is_file():
            h.update(name.encode() + b"\0" + (root / name).read_bytes())
    for f in sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        size = f.stat().st_size
        h.update(f"{f.name}|{size}\n".encode())
        _sampled_digest(f, h)
        files.append({"name": f.name, "bytes": size})
    return {"path": str(root), "hash": h.hexdigest()[:16], "weights": files}


def model_fingerprint(model: str | Path) -> dict[str, Any]:
    """``{"path", "hash", "weights": [{"name", "bytes"}]}`` of a model directory (or a ``.gguf`` file).

    Cached per process while the files are unchanged. A model that is not a local path (a hub name
    for vLLM) gets ``hash: None``.
    """
    p = Path(model)
    if p.is_file():  # a single-file model (.gguf)
        h = hashlib.sha256(f"{p.name}|{p.stat().st_size}\n".encode())
        _sampled_digest(p, h)
        return {"path": str(p), "hash": h.hexdigest()[:16], "weights": [{"name": p.name, "bytes": p.stat().st_size}]}
    if not p.is_dir():
        return {"path": str(model), "hash": None, "weights": []}
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file())
    return dict(_fingerprint(str(p.resolve()), stamp))
