"""Document-aware attention for packed samples, plugged into transformers' attention registry.

A packed sample holds several documents; ``position_ids`` restart at 0 where a document starts.
The model is called with ``attention_mask=None``; no token ever attends across a boundary.
The boundaries come once per micro-batch as a :class:`PackedDocuments` (built by
:func:`packed_documents` from the loader's ``cu_seqlens``/``max_seqlen``, passed to the model as the
``packed_documents`` keyword, which transformers hands to every layer). Without it each layer derives
them from ``position_ids`` itself (plain calls, tests), which costs a host sync per layer.

- ``doc_sdpa``: block-diagonal causal mask + ``scaled_dot_product_attention`` (CPU, and the reference).
- ``doc_flex``: PyTorch FlexAttention with a document block mask (CUDA, compiled; no extra package).
  On CPU it runs forward only, eagerly (torch has no FlexAttention backward on CPU).
- ``doc_varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` over ``cu_seqlens``
  (CUDA, bf16/fp16, sm80+; no extra package).
  On torch builds whose ``varlen_attn`` has no ``enable_gqa`` keyword (2.11) the KV heads are repeated.
- ``doc_fa_varlen``: flash-attn's ``flash_attn_varlen_func`` over ``cu_seqlens`` (CUDA; imported lazily).
  No backend name contains "flash": transformers 5.x takes any such name for its own flash-attention
  kernels and refuses to build the model.

Select with ``model.attention: auto | doc_sdpa | doc_flex | doc_varlen | doc_fa_varlen | sdpa | eager``;
``auto`` never picks an attention that lets packed documents see each other.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

DOC_BACKENDS = ("doc_sdpa", "doc_flex", "doc_varlen", "doc_fa_varlen")
CHOICES = ("auto", *DOC_BACKENDS, "sdpa", "eager")
# Spellings that transformers cannot build (any name containing "flash"), with the name to use instead.
RENAMED = {"doc_flash": "doc_fa_varlen"}
HALF = (torch.bfloat16, torch.float16)


class AttentionBackendError(RuntimeError):
    """The requested attention backend cannot run here."""


def check_choice(choice: str) -> None:
    """Raise :class:`AttentionBackendError` naming the accepted values when ``choice`` is not one."""
    if choice in RENAMED:
        raise AttentionBackendError(
            f"model.attention={choice!r} is spelled {RENAMED[choice]!r} (transformers takes any attention "
            "name containing 'flash' for its own kernels and refuses to build the model)"
        )
    if choice not in CHOICES:
        raise AttentionBackendError(f"model.attention={choice!r}: expected one of {', '.join(CHOICES)}")


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) positions -> (B, S) document index within each row (a new document at each 0)."""
    starts = position_ids == 0
    starts[:, 0] = True  # a row that starts mid-document still opens a block
    return torch.cumsum(starts.to(torch.int32), dim=1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) boolean mask: True where query i may attend key j (same document, j <= i)."""
    return _mask_from_doc_ids(document_ids(position_ids))


def _mask_from_doc_ids(doc: torch.Tensor) -> torch.Tensor:
    seq = doc.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None, :, :]


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flattened cumulative document lengths (int32, starting at 0) and the longest document."""
    flat = position_ids.reshape(-1)
    starts = flat == 0
    starts[:: position_ids.shape[1]] = True  # every row begins a document
    idx = torch.nonzero(starts, as_tuple=False).reshape(-1).to(torch.int32)
    total = torch.tensor([flat.numel()], dtype=torch.int32, device=flat.device)
    cu = torch.cat([idx, total])
    return cu, int((cu[1:] - cu[:-1]).max().item())


@dataclass
class PackedDocuments:
    """The document boundaries of one micro-batch, in the form its attention backend consumes."""

    backend: str
    batch: int
    seq: int
    cu_seqlens: torch.Tensor  # int32 (n+1,) on the compute device, offsets into the flattened batch
    max_seqlen: int  # a host int: no device sync to read it
    restarts: bool  # any row holds more than one document
    mask: Any = None  # doc_sdpa (with restarts): (B, 1, S, S) bool; doc_flex: its BlockMask


def packed_documents(
    backend: str,
    position_ids: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    device: torch.device | str | None = None,
) -> PackedDocuments:
    """Boundaries of a (B, S) micro-batch for ``backend``, built once and shared by every layer.

    With the loader's host-side ``cu_seqlens``/``max_seqlen`` nothing here waits on the device;
    without them they are derived from ``position_ids`` (one sync, once per micro-batch).
    """
    device = torch.device(device) if device is not None else position_ids.device
    b, s = position_ids.shape
    if cu_seqlens is None or max_seqlen is None:
        cu_seqlens, max_seqlen = cu_seqlens_from_position_ids(position_ids)
    cu_host = cu_seqlens.to("cpu") if cu_seqlens.device.type != "cpu" else cu_seqlens
    restarts = cu_host.numel() - 1 > b
    docs = PackedDocuments(backend, b, s, cu_seqlens.to(device=device, dtype=torch.int32, non_blocking=True),
                           int(max_seqlen), restarts)
    if (backend == "doc_sdpa" and restarts) or backend == "doc_flex":
        lengths = (cu_host[1:] - cu_host[:-1]).to(torch.int64)
        doc = torch.repeat_interleave(torch.arange(lengths.numel()), lengths).reshape(b, s).to(device, non_blocking=True)
        docs.mask = _mask_from_doc_ids(doc) if backend == "doc_sdpa" else _flex_block_mask(doc)
    return docs


def _documents(kwargs: dict[str, Any], query: torch.Tensor, backend: str) -> PackedDocuments:
    docs = kwargs.get("packed_documents")
    if isinstance(docs, PackedDocuments) and docs.backend == backend:
        return docs
    return packed_documents(backend, _positions(kwargs, query))


def _positions(kwargs: dict[str, Any], query: torch.Tensor) -> torch.Tensor:
    pos = kwargs.get("position_ids")
    if pos is None:  # unpacked call (e.g. plain generation): one document per row
        b, _, s, _ = query.shape
        return torch.arange(s, device=query.device).expand(b, s)
    return pos.expand(query.shape[0], -1) if pos.shape[0] == 1 else pos


def _no_cache(query: torch.Tensor, key: torch.Tensor, name: str) -> None:
    if key.shape[2] != query.shape[2]:
        raise AttentionBackendError(f"{name} is for training (no KV cache); use 'sdpa' for generation")


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
    _no_cache(query, key, "doc_sdpa")
    docs = _documents(kwargs, query, "doc_sdpa")
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if docs.restarts:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=docs.mask, dropout_p=dropout,
                                             scale=scaling)
    else:  # one document per row: plain causal attention is cheaper
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)
    return out.transpose(1, 2).contiguous(), None


# -- FlexAttention -----------------------------------------------------------------------------
_compiled_flex: Any = None


FLEX_BLOCK = 128  # FlexAttention's sparse block size


def _flex_block_mask(doc: torch.Tensor) -> Any:
    """A BlockMask letting query q see key k when both lie in one document and k <= q.

    Built from the per-block first and last document ids (documents are contiguous along a row), so
    its cost is B x (S/128)^2 rather than the B x S x S booleans ``create_block_mask`` evaluates
    uncompiled; ``same_document_causal`` refines the partial blocks inside the kernel.
    """
    from torch.nn.attention.flex_attention import BlockMask

    def same_document_causal(b, h, q, k):  # noqa: ANN001 (FlexAttention's mask_mod signature)
        return (doc[b, q] == doc[b, k]) & (q >= k)

    b, s = doc.shape
    n = -(-s // FLEX_BLOCK)
    starts = torch.arange(n, device=doc.device) * FLEX_BLOCK
    first = doc[:, starts]  # (B, n) document of each block's first token
    last = doc[:, torch.clamp(starts + FLEX_BLOCK - 1, max=s - 1)]  # and of its last token
    q_first, kv_last = first[:, :, None], last[:, None, :]
    below = torch.ones(n, n, dtype=torch.bool, device=doc.device).tril()
    # A key block reaches a query block when it is not later and its last document is not earlier.
    touched = below & (kv_last >= q_first)
    # Fully visible: strictly earlier, and both blocks lie whole inside a single document (a short last
    # block stays partial: its padding is masked by the mask function).
    single = (first == last) & (starts + FLEX_BLOCK <= s)
    full = below.tril(-1) & single[:, :, None] & single[:, None, :] & (q_first == first[:, None, :])
    partial = touched & ~full

    def as_indices(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = blocks.sum(-1, dtype=torch.int32)[:, None]  # (B, 1, n)
        order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None]
        return count, order  # the listed blocks first, ascending

    kv_num, kv_idx = as_indices(partial)
    full_num, full_idx = as_indices(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=same_document_causal, seq_lengths=(s, s))


def _flex() -> Any:
    """flex_attention, compiled once per process on CUDA (eager it materializes the scores)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None and torch.cuda.is_available():
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex or flex_attention


def doc_flex_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """FlexAttention under the micro-batch's document block mask. -> (B, S, H, D)."""
    _no_cache(query, key, "doc_flex")
    if dropout:
        raise AttentionBackendError("doc_flex has no attention dropout; set the model's attention_dropout to 0")
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        raise AttentionBackendError("doc_flex has no backward on CPU (a torch limit); train with doc_sdpa")
    docs = _documents(kwargs, query, "doc_flex")
    with warnings.catch_warnings():  # eager on CPU is deliberate (forward only); torch warns every process
        warnings.filterwarnings("ignore", message=".*flex_attention.*without torch.compile", category=UserWarning)
        out = _flex()(query, key, value, block_mask=docs.mask, scale=scaling,
                      enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


# -- varlen kernels over cu_seqlens ------------------------------------------------------------------
def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    """The keywords of this torch's ``varlen_attn`` (empty when torch has none)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def torch_varlen_available() -> bool:
    """torch ships ``torch.nn.attention.varlen.varlen_attn`` with causal windows (CUDA only).

    GQA needs no keyword: without ``enable_gqa`` (torch 2.11) the KV heads are repeated.
    """
    return "window_size" in _varlen_parameters()


def _varlen_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    b, h, s, d = query.shape
    q = query.transpose(1, 2).reshape(b * s, h, d)
    k = key.transpose(1, 2).reshape(b * s, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * s, value.shape[1], d)
    return q, k, v


def doc_varlen_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """torch's ``varlen_attn`` (causal) over the documents of the flattened batch -> (B, S, H, D)."""
    _no_cache(query, key, "doc_varlen")
    if dropout:
        raise AttentionBackendError("doc_varlen has no attention dropout; set the model's attention_dropout to 0")
    from torch.nn.attention.varlen import varlen_attn

    b, h, s, d = query.shape
    docs = _documents(kwargs, query, "doc_varlen")
    gqa: dict[str, bool] = {}
    if key.shape[1] != h:
        if "enable_gqa" in _varlen_parameters():
            gqa["enable_gqa"] = True
        else:  # this torch's varlen_attn takes one KV head per query head
            key = key.repeat_interleave(h // key.shape[1], dim=1)
            value = value.repeat_interleave(h // value.shape[1], dim=1)
    q, k, v = _varlen_inputs(query, key, value)
    out = varlen_attn(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen, docs.max_seqlen,
                      scale=scaling, window_size=(-1, 0), **gqa)
    return out.reshape(b, s, h, d), None


def doc_fa_varlen_forward(
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
            "model.attention=doc_fa_varlen needs flash-attn on a CUDA machine (pip install flash-attn "
            "--no-build-isolation); use doc_sdpa on CPU"
        ) from err
    b, h, s, d = query.shape
    _no_cache(query, key, "doc_fa_varlen")
    docs = _documents(kwargs, query, "doc_fa_varlen")
    q, k, v = _varlen_inputs(query, key, value)
    out = flash_attn_varlen_func(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen, docs.max_seqlen,
                                 dropout_p=dropout, softmax_scale=scaling, causal=True)
    return out.reshape(b, s, h, d), None


def register_backends() -> None:
    """Make the document backends known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register("doc_sdpa", doc_sdpa_forward)
    AttentionInterface.register("doc_flex", doc_flex_forward)
    AttentionInterface.register("doc_varlen", doc_varlen_forward)
    AttentionInterface.register("doc_fa_varlen", doc_fa_varlen_forward)


def _cuda_sm80() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def resolve_backend(choice: str, device_type: str, dtype: torch.dtype = torch.float32) -> str:
    """The attention to build for ``device_type`` computing in ``dtype``; checks explicit choices.

    ``auto``: CPU -> doc_sdpa; CUDA -> doc_fa_varlen (flash-attn installed, half precision), else
    doc_varlen (torch's varlen kernel, half precision, sm80+), else doc_flex. All are document-masked.
    """
    check_choice(choice)
    cuda, half = device_type == "cuda", dtype in HALF
    if choice == "auto":
        if not cuda:
            return "doc_sdpa"
        if half and flash_attn_available():
            return "doc_fa_varlen"
        if half and torch_varlen_available() and _cuda_sm80():
            return "doc_varlen"
        return "doc_flex"
    if choice == "doc_fa_varlen" and not (cuda and flash_attn_available()):
        raise AttentionBackendError(
            "model.attention=doc_fa_varlen needs CUDA and the flash-attn package; use doc_sdpa or auto"
        )
    if choice == "doc_varlen":
        missing = varlen_missing(cuda, dtype)
        if missing:
            raise AttentionBackendError(f"model.attention=doc_varlen needs {missing}; use auto")
    return choice


def varlen_missing(cuda: bool, dtype: torch.dtype) -> str:
    """What ``doc_varlen`` lacks here, in words ("" when it can run)."""
    if not torch_varlen_available():
        return (f"torch.nn.attention.varlen.varlen_attn with window_size (torch {torch.__version__} has "
                f"{'no such module' if not _varlen_parameters() else 'no window_size keyword'})")
    if not cuda:
        return "a CUDA device (this run has none)"
    if dtype not in HALF:
        return f"bf16 or fp16 compute (this run computes in {str(dtype).removeprefix('torch.')})"
    if not _cuda_sm80():
        return f"an sm80+ GPU (this one is sm{''.join(map(str, torch.cuda.get_device_capability()))})"
    return ""
