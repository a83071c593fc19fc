"""Document-aware attention: packed logits equal each document run alone (fp32, <= 1e-5); boundaries
are built once per micro-batch; ``auto`` never picks an attention that crosses documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_ipt.data.loader import collate
from megatron_ipt.model import attention
from megatron_ipt.model.attention import (
    DOC_BACKENDS,
    AttentionBackendError,
    PackedDocuments,
    block_causal_mask,
    cu_seqlens_from_position_ids,
    doc_fa_varlen_forward,
    flash_attn_available,
    packed_documents,
    resolve_backend,
)
from megatron_ipt.model.build import build_model
from megatron_ipt.model.config import ModelConfig


def _tiny(arch: str, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=500, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=256, attention=attention)
    return build_model(cfg).eval()


LENGTHS = [[17, 40, 3, 36], [96]]  # two packed rows of 96 tokens: four documents, then one


def _packed_rows(gen: torch.Generator) -> tuple[list[list[torch.Tensor]], torch.Tensor, torch.Tensor, dict]:
    """Documents, (B, S) ids and positions, and the loader's collated batch of the same rows."""
    rows, positions, docs, samples = [], [], [], []
    for row in LENGTHS:
        ids = [torch.randint(3, 500, (n,), generator=gen) for n in row]
        docs.append(ids)
        rows.append(torch.cat(ids))
        positions.append(torch.cat([torch.arange(n) for n in row]))
        cu = np.cumsum([0, *row]).astype(np.int32)
        samples.append({"input_ids": rows[-1].numpy(), "labels": rows[-1].numpy(), "loss_mask": np.ones(96),
                        "position_ids": positions[-1].numpy(), "cu_seqlens": cu, "dataset_id": 0})
    return docs, torch.stack(rows), torch.stack(positions), collate(samples)


@pytest.mark.filterwarnings("ignore::UserWarning")  # FlexAttention warns that it runs uncompiled on CPU
@pytest.mark.parametrize("arch", ["mistral", "llama"])
@pytest.mark.parametrize("attention", ["doc_sdpa", "doc_flex", "sdpa"])
def test_packed_logits_equal_documents_alone(arch: str, attention: str) -> None:
    model = _tiny(arch, attention)
    docs, rows, positions, batch = _packed_rows(torch.Generator().manual_seed(1))
    with torch.no_grad():
        packed = model(input_ids=rows, position_ids=positions, attention_mask=None, use_cache=False).logits
        if attention in DOC_BACKENDS:  # boundaries from the loader, built once: the same logits
            once = packed_documents(attention, positions, batch["cu_seqlens"], batch["max_seqlen"])
            shared = model(input_ids=rows, position_ids=positions, attention_mask=None, use_cache=False,
                           packed_documents=once).logits
            assert (shared - packed).abs().max().item() <= 1e-6
        for b, ids in enumerate(docs):
            start = 0
            for doc in ids:
                alone = model(input_ids=doc[None], use_cache=False).logits[0]
                diff = (packed[b, start : start + len(doc)] - alone).abs().max().item()
                assert diff <= 1e-5, f"{arch}/{attention}: row {b} doc at {start}: max abs diff {diff}"
                start += len(doc)
    # And the boundary matters: without restarts the later documents' logits change.
    with torch.no_grad():
        unpacked = model(input_ids=rows[:1], use_cache=False).logits[0]
    assert (unpacked[17:] - packed[0, 17:]).abs().max() > 1e-3


def test_boundaries_built_once_per_forward_not_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passed in, the loader's boundaries reach every layer; no layer rebuilds them (or syncs)."""
    model = _tiny("mistral", "doc_sdpa")
    _, rows, positions, batch = _packed_rows(torch.Generator().manual_seed(2))
    built: list[str] = []
    real = attention.packed_documents

    def counting(*args, **kwargs):
        built.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "packed_documents", counting)
    seen: list[PackedDocuments] = []
    real_forward = attention.doc_sdpa_forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("packed_documents"))
        return real_forward(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register("doc_sdpa", spy)
    try:
        with torch.no_grad():
            model(input_ids=rows, position_ids=positions, attention_mask=None, use_cache=False)
            per_layer = len(built)
            built.clear()
            seen.clear()
            docs = attention.packed_documents("doc_sdpa", positions, batch["cu_seqlens"], batch["max_seqlen"])
            model(input_ids=rows, position_ids=positions, attention_mask=None, use_cache=False,
                  packed_documents=docs)
    finally:
        attention.register_backends()
    assert per_layer == 2  # without them: one build in each of the 2 layers
    assert built == ["doc_sdpa"]  # with them: the one build above, none inside the layers
    assert len(seen) == 2 and all(s is docs for s in seen)
    assert docs.cu_seqlens.tolist() == [0, 17, 57, 60, 96, 192] and docs.max_seqlen == 96 and docs.restarts


def test_masks_and_cu_seqlens_from_positions() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    mask = block_causal_mask(pos)[:, 0]
    assert mask[0, 3].tolist() == [False, False, False, True, False]
    assert mask[0, 2].tolist() == [True, True, True, False, False]
    assert mask[1].equal(torch.ones(5, 5, dtype=torch.bool).tril())
    cu, longest = cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 5, 10] and cu.dtype == torch.int32 and longest == 5


def test_packed_documents_from_loader_match_positions() -> None:
    _, _, positions, batch = _packed_rows(torch.Generator().manual_seed(3))
    from_loader = packed_documents("doc_sdpa", positions, batch["cu_seqlens"], batch["max_seqlen"])
    derived = packed_documents("doc_sdpa", positions)
    assert from_loader.mask.equal(derived.mask) and from_loader.mask.equal(block_causal_mask(positions))
    assert from_loader.cu_seqlens.equal(derived.cu_seqlens) and from_loader.max_seqlen == derived.max_seqlen
    single = packed_documents("doc_sdpa", torch.arange(8).expand(2, 8))
    assert not single.restarts and single.mask is None  # plain causal path, no dense mask


def test_auto_on_cuda_is_always_document_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every availability combination: the best document backend, never plain causal attention."""
    for flash in (True, False):
        for varlen in (True, False):
            for sm80 in (True, False):
                monkeypatch.setattr(attention, "flash_attn_available", lambda f=flash: f)
                monkeypatch.setattr(attention, "torch_varlen_available", lambda v=varlen: v)
                monkeypatch.setattr(attention, "_cuda_sm80", lambda s=sm80: s)
                for dtype in (torch.bfloat16, torch.float16, torch.float32):
                    got = resolve_backend("auto", "cuda", dtype)
                    half = dtype != torch.float32
                    want = ("doc_fa_varlen" if half and flash else "doc_varlen" if half and varlen and sm80
                            else "doc_flex")
                    assert got == want, (flash, varlen, sm80, dtype)
                    assert got in DOC_BACKENDS
    monkeypatch.setattr(attention, "torch_varlen_available", lambda: False)
    with pytest.raises(AttentionBackendError, match="varlen"):
        resolve_backend("doc_varlen", "cuda", torch.bfloat16)


def test_backend_selection_on_cpu() -> None:
    assert resolve_backend("auto", "cpu") == "doc_sdpa"
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "doc_sdpa"
    assert resolve_backend("doc_flex", "cpu") == "doc_flex"  # forward only (evaluation)
    with pytest.raises(AttentionBackendError, match="varlen"):
        resolve_backend("doc_varlen", "cpu", torch.bfloat16)
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(AttentionBackendError, match="flash-attn"):
        resolve_backend("doc_fa_varlen", "cpu")
    with pytest.raises(AttentionBackendError, match="expected one of"):
        resolve_backend("flash", "cpu")


@pytest.mark.skipif(flash_attn_available(), reason="flash-attn is installed")
def test_doc_fa_varlen_without_flash_attn_is_a_clear_error() -> None:
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(AttentionBackendError, match="pip install flash-attn"):
        doc_fa_varlen_forward(torch.nn.Module(), q, q, q, None, position_ids=torch.arange(4)[None])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_doc_flex_training_on_cpu_is_a_clear_error() -> None:
    model = _tiny("mistral", "doc_flex").train()
    with pytest.raises(AttentionBackendError, match="no backward on CPU"):
        model(input_ids=torch.randint(3, 500, (1, 8)), use_cache=False)


def _same_document_causal(doc: torch.Tensor):  # noqa: ANN202
    return lambda b, h, q, k: (doc[b, q] == doc[b, k]) & (q >= k)


@pytest.mark.parametrize("seq", [128, 300, 1000])
def test_flex_block_mask_from_document_blocks_equals_torchs(seq: int) -> None:
    """The block mask built from per-block document ids (no S x S mask) lists exactly the partial and
    full blocks ``create_block_mask`` finds by evaluating every (q, k) pair, and masks the same pairs."""
    from torch.nn.attention.flex_attention import create_block_mask

    gen = torch.Generator().manual_seed(seq)
    for _ in range(3):
        rows = []
        for _ in range(2):
            lengths: list[int] = []
            while sum(lengths) < seq:
                lengths.append(int(torch.randint(1, 400, (1,), generator=gen)))
            lengths[-1] -= sum(lengths) - seq
            rows.append(torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)))
        doc = torch.stack(rows)
        ours = attention._flex_block_mask(doc)
        theirs = create_block_mask(_same_document_causal(doc), 2, None, seq, seq, device="cpu")
        assert torch.equal(ours.to_dense(), theirs.to_dense())
        for mine, ref in ((ours.kv_num_blocks, theirs.kv_num_blocks), (ours.full_kv_num_blocks, theirs.full_kv_num_blocks)):
            assert torch.equal(mine, ref)
        for idx, num, ref_idx in ((ours.kv_indices, ours.kv_num_blocks, theirs.kv_indices),
                                  (ours.full_kv_indices, ours.full_kv_num_blocks, theirs.full_kv_indices)):
            for b in range(2):
                for i in range(num.shape[-1]):
                    n = int(num[b, 0, i])
                    assert idx[b, 0, i, :n].tolist() == sorted(ref_idx[b, 0, i, :n].tolist())
