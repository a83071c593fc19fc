"""Document-aware attention for packed samples, plugged into transformers' attention registry.

A packed sample holds several documents; ``position_ids`` restart at 0 where a document starts.
The model is called with ``attention_mask=None``, so these functions receive no mask and derive the
document boundaries from ``position_ids`` themselves: no token ever attends across a boundary.

- ``doc_sdpa``: block-diagonal causal mask + ``torch.nn.functional.scaled_dot_product_attention``
  (CPU, and the reference).
- ``doc_flash``: ``flash_attn_varlen_func`` over ``cu_seqlens`` (CUDA; flash-attn imported lazily).

Select with ``model.attention: auto | doc_sdpa | doc_flash | sdpa | eager``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

DOC_BACKENDS = ("doc_sdpa", "doc_flash")
CHOICES = ("auto", *DOC_BACKENDS, "sdpa", "eager")


class AttentionBackendError(RuntimeError):
    """The requested attention backend cannot run here."""


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) positions -> (B, S) document index within each row (a new document at each 0)."""
    starts = position_ids == 0
    starts[:, 0] = True  # a row that starts mid-document still opens a block
    return torch.cumsum(starts.to(torch.int32), dim=1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) boolean mask: True where query i may attend key j (same document, j <= i)."""
    doc = document_ids(position_ids)
    seq = position_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    same_doc = doc[:, :, None] == doc[:, None, :]
    return (same_doc & causal)[:, None, :, :]


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flattened cumulative document lengths (int32, starting at 0) and the longest document."""
    flat = position_ids.reshape(-1)
    starts = flat == 0
    starts[:: position_ids.shape[1]] = True  # every row begins a document
    idx = torch.nonzero(starts, as_tuple=False).reshape(-1).to(torch.int32)
    total = torch.tensor([flat.numel()], dtype=torch.int32, device=flat.device)
    cu = torch.cat([idx, total])
    return cu, int((cu[1:] - cu[:-1]).max().item())


def _positions(kwargs: dict[str, Any], query: torch.Tensor) -> torch.Tensor:
    pos = kwargs.get("position_ids")
    if pos is None:  # unpacked call (e.g. plain generation): one document per row
        b, _, s, _ = query.shape
        return torch.arange(s, device=query.device).expand(b, s)
    return pos.expand(query.shape[0], -1) if pos.shape[0] == 1 else pos


def doc_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Block-diagonal causal SDPA. q: (B, H, S, D), k/v: (B, KV, S, D) -> (B, S, H, D)."""
    if key.shape[2] != query.shape[2]:
        raise AttentionBackendError("doc_sdpa is for training (no KV cache); use 'sdpa' for generation")
    pos = _positions(kwargs, query)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    restarts = bool((pos[:, 1:] == 0).any())
    if restarts:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=block_causal_mask(pos), dropout_p=dropout, scale=scaling
        )
    else:  # one document per row: plain causal attention is cheaper
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)
    return out.transpose(1, 2).contiguous(), None


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def doc_flash_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """flash_attn_varlen_func over the documents of the flattened batch (CUDA, fp16/bf16)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as err:
        raise AttentionBackendError(
            "model.attention=doc_flash needs flash-attn on a CUDA machine (pip install flash-attn); "
            "use doc_sdpa on CPU"
        ) from err
    b, h, s, d = query.shape
    pos = _positions(kwargs, query)
    cu, max_len = cu_seqlens_from_position_ids(pos)
    q = query.transpose(1, 2).reshape(b * s, h, d)
    k = key.transpose(1, 2).reshape(b * s, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * s, value.shape[1], d)
    out = flash_attn_varlen_func(
        q, k, v, cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling, causal=True
    )
    return out.reshape(b, s, h, d), None


def register_backends() -> None:
    """Make ``doc_sdpa`` and ``doc_flash`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register("doc_sdpa", doc_sdpa_forward)
    AttentionInterface.register("doc_flash", doc_flash_forward)


def resolve_backend(choice: str, device_type: str) -> str:
    """``auto`` -> doc_flash on CUDA with flash-attn, else doc_sdpa; checks explicit choices."""
    if choice not in CHOICES:
        raise AttentionBackendError(f"model.attention={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        return "doc_flash" if device_type == "cuda" and flash_attn_available() else "doc_sdpa"
    if choice == "doc_flash" and not (device_type == "cuda" and flash_attn_available()):
        raise AttentionBackendError(
            "model.attention=doc_flash needs CUDA and the flash-attn package; use doc_sdpa or auto"
        )
    return choice
