"""The dtype policy: one spelling set, normalised to torch's names, and the one rule for ``auto``."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from megatron_ipt.config.error import ConfigError

if TYPE_CHECKING:
    import torch


class DType(StrEnum):
    """A compute dtype under torch's name (a ``str``, so configs and JSON keep plain names)."""

    BF16 = "bfloat16"
    FP16 = "float16"
    FP32 = "float32"

    @property
    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.value)


# One spelling set for dtypes, normalised to torch's names.
DTYPE_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


def normalize_dtype(dtype: str) -> str:
    """``auto`` or a canonical torch dtype name (``bf16`` -> ``bfloat16``); a clear error otherwise."""
    if dtype == "auto":
        return dtype
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ConfigError(f"dtype must be auto or one of {sorted(DTYPE_NAMES)}, got {dtype!r}") from None


def auto_dtype(device_type: str | None = None) -> DType:
    """What ``auto`` means for compute: bfloat16 on a GPU, float32 on CPU (no native bf16 matmuls here:
    bf16 trained at about half fp32's speed and scored 5.5x slower). ``device_type``: the device the
    work runs on (``cuda``, ``cpu``); None: a GPU when torch sees one."""
    if device_type is None:
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return DType.BF16 if device_type == "cuda" else DType.FP32


def resolve_dtype(dtype: str, device_type: str | None = None) -> DType:
    """Any accepted spelling, ``auto`` included, as the :class:`DType` it means on ``device_type``."""
    name = normalize_dtype(dtype)
    return auto_dtype(device_type) if name == "auto" else DType(name)
