"""Document-aware attention: packed logits equal each document run alone (fp32, <= 1e-5)."""

from __future__ import annotations

import pytest
import torch

from megatron_ipt.model.attention import (
    AttentionBackendError,
    block_causal_mask,
    cu_seqlens_from_position_ids,
    doc_flash_forward,
    flash_attn_available,
    resolve_backend,
)
from megatron_ipt.model.build import build_model
from megatron_ipt.model.config import ModelConfig


def _tiny(arch: str, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=500, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=256, attention=attention)
    return build_model(cfg).eval()


@pytest.mark.parametrize("arch", ["mistral", "llama"])
@pytest.mark.parametrize("attention", ["doc_sdpa", "sdpa"])
def test_packed_logits_equal_documents_alone(arch: str, attention: str) -> None:
    model = _tiny(arch, attention)
    gen = torch.Generator().manual_seed(1)
    lengths = [[17, 40, 3, 36], [96]]  # two packed rows of 96 tokens: four documents, then one
    rows, positions, docs = [], [], []
    for row in lengths:
        ids = [torch.randint(3, 500, (n,), generator=gen) for n in row]
        docs.append(ids)
        rows.append(torch.cat(ids))
        positions.append(torch.cat([torch.arange(n) for n in row]))
    with torch.no_grad():
        packed = model(input_ids=torch.stack(rows), position_ids=torch.stack(positions), attention_mask=None,
                       use_cache=False).logits
        for b, ids in enumerate(docs):
            start = 0
            for doc in ids:
                alone = model(input_ids=doc[None], use_cache=False).logits[0]
                diff = (packed[b, start : start + len(doc)] - alone).abs().max().item()
                assert diff <= 1e-5, f"{arch}/{attention}: row {b} doc at {start}: max abs diff {diff}"
                start += len(doc)
    # And the boundary matters: without restarts the later documents' logits change.
    with torch.no_grad():
        unpacked = model(input_ids=rows[0][None], use_cache=False).logits[0]
    assert (unpacked[17:] - packed[0, 17:]).abs().max() > 1e-3


def test_masks_and_cu_seqlens_from_positions() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    mask = block_causal_mask(pos)[:, 0]
    assert mask[0, 3].tolist() == [False, False, False, True, False]
    assert mask[0, 2].tolist() == [True, True, True, False, False]
    assert mask[1].equal(torch.ones(5, 5, dtype=torch.bool).tril())
    cu, longest = cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 5, 10] and cu.dtype == torch.int32 and longest == 5


def test_backend_selection_on_cpu() -> None:
    assert resolve_backend("auto", "cpu") == "doc_sdpa"
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(AttentionBackendError, match="flash-attn"):
        resolve_backend("doc_flash", "cpu")
    with pytest.raises(AttentionBackendError, match="expected one of"):
        resolve_backend("flash", "cpu")


@pytest.mark.skipif(flash_attn_available(), reason="flash-attn is installed")
def test_doc_flash_without_flash_attn_is_a_clear_error() -> None:
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(AttentionBackendError, match="pip install flash-attn"):
        doc_flash_forward(torch.nn.Module(), q, q, q, None, position_ids=torch.arange(4)[None])
