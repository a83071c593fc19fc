"""Every attention backend name builds through ``build_model`` as it would on a GPU, and the varlen
kernels, run by SDPA stand-ins here (flash-attn and torch's varlen kernel are CUDA-only), give the
per-document logits of ``doc_sdpa``."""

from __future__ import annotations

import importlib.machinery
import inspect
import re
import sys
import types
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from megatron_ipt.model import attention
from megatron_ipt.model.build import build_model
from megatron_ipt.model.config import ModelConfig

LENGTHS = [[17, 40, 3, 36], [96]]  # two packed rows of 96 tokens


def _per_document_sdpa(q, k, v, cu, scale, gqa_native: bool) -> torch.Tensor:  # noqa: ANN001
    """(T, H, D) causal attention inside each ``cu`` span, as the CUDA varlen kernels compute it."""
    h = q.shape[1]
    if k.shape[1] != h:
        assert gqa_native, f"{k.shape[1]} KV heads for {h} query heads reached a kernel without GQA"
        k, v = k.repeat_interleave(h // k.shape[1], dim=1), v.repeat_interleave(h // v.shape[1], dim=1)
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out[a:b] = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                  v[a:b].transpose(0, 1), is_causal=True,
                                                  scale=scale).transpose(0, 1)
    return out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,  # noqa: ANN001, ANN201
                           dropout_p=0.0, softmax_scale=None, causal=False):
    """flash-attn's signature; GQA is native in flash-attn 2."""
    assert causal and dropout_p == 0.0 and cu_seqlens_q is cu_seqlens_k
    return _per_document_sdpa(q, k, v, cu_seqlens_q, softmax_scale, gqa_native=True)


def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,  # noqa: ANN001, ANN201
                     scale=None, window_size=(-1, -1)):
    """torch 2.11's ``varlen_attn`` keywords (no ``enable_gqa``)."""
    assert window_size == (-1, 0)
    return _per_document_sdpa(query, key, value, cu_seq_q, scale, gqa_native=False)


def varlen_attn_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,  # noqa: ANN001, ANN201
                     scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch 2.13's ``varlen_attn`` keywords: KV heads may be fewer only with ``enable_gqa``."""
    assert window_size == (-1, 0)
    return _per_document_sdpa(query, key, value, cu_seq_q, scale, gqa_native=enable_gqa)


@pytest.fixture
def gpu_like(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable], None]:
    """Pretend a CUDA sm80 machine with flash-attn; returns a setter for the varlen stand-in."""
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = flash_attn_varlen_func
    fake.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    monkeypatch.setattr(attention, "_cuda_sm80", lambda: True)
    import torch.nn.attention.varlen as varlen

    def use(fn: Callable) -> None:
        monkeypatch.setattr(varlen, "varlen_attn", fn)
        attention._varlen_parameters.cache_clear()

    use(varlen_attn_2_13)
    yield use
    attention._varlen_parameters.cache_clear()


def _cfg(name: str) -> ModelConfig:
    return ModelConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=256, attention=name)


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights for every backend
    return build_model(_cfg(name), "cuda", compute_dtype=torch.bfloat16).eval()


def _packed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 500, (len(LENGTHS), 96), generator=gen)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in LENGTHS])
    cu = torch.tensor([0, *[n for row in LENGTHS for n in row]]).cumsum(0).to(torch.int32)
    return ids, pos, cu, max(n for row in LENGTHS for n in row)


@pytest.mark.filterwarnings("ignore::UserWarning")  # FlexAttention runs uncompiled on CPU
def test_every_backend_name_builds_and_document_backends_match_sdpa(gpu_like) -> None:
    ids, pos, cu, longest = _packed()
    reference = None
    for name in [n for n in attention.CHOICES if n != "auto"]:
        model = _build(name)
        assert model.config._attn_implementation == name
        if name not in attention.DOC_BACKENDS:
            continue
        docs = attention.packed_documents(name, pos, cu, longest)
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False,
                           packed_documents=docs).logits
        if reference is None:
            assert name == "doc_sdpa"
            reference = logits
        assert (logits - reference).abs().max().item() <= 1e-5, name


def test_auto_on_a_gpu_with_flash_attn_builds(gpu_like) -> None:
    model = build_model(_cfg("auto"), "cuda", compute_dtype=torch.bfloat16)
    assert model.config._attn_implementation == "doc_fa_varlen"


@pytest.mark.parametrize("varlen", [varlen_attn_2_11, varlen_attn_2_13], ids=["torch2.11", "torch2.13"])
def test_doc_varlen_passes_gqa_the_way_this_torch_takes_it(gpu_like, varlen: Callable,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_like(varlen)
    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    assert attention.torch_varlen_available()
    assert attention.resolve_backend("auto", "cuda", torch.bfloat16) == "doc_varlen"
    ids, pos, cu, longest = _packed()
    torch.manual_seed(2)
    q = torch.randn(2, 4, 96, 16, requires_grad=True)
    kv = torch.randn(2, 2, 96, 16, requires_grad=True)
    docs = attention.packed_documents("doc_varlen", pos, cu, longest)
    out, _ = attention.doc_varlen_forward(torch.nn.Module(), q, kv, kv, None, scaling=0.25, packed_documents=docs)
    ref, _ = attention.doc_sdpa_forward(torch.nn.Module(), q, kv, kv, None, scaling=0.25,
                                        packed_documents=attention.packed_documents("doc_sdpa", pos, cu, longest))
    assert (out - ref).abs().max().item() <= 1e-5
    out.sum().backward()  # the repeat keeps gradients flowing to the grouped KV heads
    assert kv.grad is not None and kv.grad.shape == kv.shape
    assert ("enable_gqa" in inspect.signature(varlen).parameters) == ("enable_gqa" in attention._varlen_parameters())


def test_explicit_doc_varlen_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.attention.varlen as varlen

    attention._varlen_parameters.cache_clear()
    try:
        if attention.torch_varlen_available():
            with pytest.raises(attention.AttentionBackendError, match="needs a CUDA device"):
                attention.resolve_backend("doc_varlen", "cpu", torch.bfloat16)
        monkeypatch.setattr(attention, "_cuda_sm80", lambda: True)
        monkeypatch.setattr(varlen, "varlen_attn", varlen_attn_2_11)
        attention._varlen_parameters.cache_clear()
        with pytest.raises(attention.AttentionBackendError, match="bf16 or fp16 compute .*float32"):
            attention.resolve_backend("doc_varlen", "cuda", torch.float32)

        def no_window(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):  # noqa: ANN001, ANN202
            raise AssertionError("never called")

        monkeypatch.setattr(varlen, "varlen_attn", no_window)
        attention._varlen_parameters.cache_clear()
        with pytest.raises(attention.AttentionBackendError, match=re.escape(f"torch {torch.__version__} has no window_size")):
            attention.resolve_backend("doc_varlen", "cuda", torch.bfloat16)
    finally:
        attention._varlen_parameters.cache_clear()


def test_the_flash_spelling_names_its_replacement() -> None:
    from megatron_ipt.config import ConfigError

    with pytest.raises(ConfigError, match="'doc_flash' is spelled 'doc_fa_varlen'"):
        _cfg("doc_flash").validate()
    with pytest.raises(attention.AttentionBackendError, match="spelled 'doc_fa_varlen'"):
        attention.resolve_backend("doc_flash", "cuda", torch.bfloat16)
    assert not [n for n in attention.CHOICES if "flash" in n]


def test_a_fresh_model_is_built_in_the_weights_dtype_where_it_trains() -> None:
    """bf16 weights allocated on the given device (meta here: no memory), never fp32 on the host first."""
    model = build_model(_cfg("doc_sdpa"), "cpu", dtype=torch.bfloat16, compute_dtype=torch.bfloat16, device="meta")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"meta"}
