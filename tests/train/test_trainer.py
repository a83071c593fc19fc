"""The trainer's forward path: the loader's document boundaries reach the model once per micro-batch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from megatron_ipt.data.loader import collate
from megatron_ipt.model.attention import PackedDocuments
from megatron_ipt.train.trainer import Trainer


def _micro_batch() -> dict:
    samples = []
    for lengths in ([5, 3], [8]):
        pos = np.concatenate([np.arange(n) for n in lengths])
        samples.append({"input_ids": np.arange(8), "labels": np.arange(8), "loss_mask": np.ones(8, np.float32),
                        "position_ids": pos, "cu_seqlens": np.cumsum([0, *lengths]).astype(np.int32),
                        "dataset_id": 0})
    return collate(samples)


def test_model_inputs_carry_the_loaders_boundaries() -> None:
    mb = _micro_batch()
    fake = SimpleNamespace(device=torch.device("cpu"), attention="doc_sdpa")
    inputs = Trainer._model_inputs(fake, mb)
    docs = inputs["packed_documents"]
    assert isinstance(docs, PackedDocuments) and docs.backend == "doc_sdpa"
    assert docs.cu_seqlens.tolist() == mb["cu_seqlens"].tolist() == [0, 5, 8, 16]
    assert docs.max_seqlen == mb["max_seqlen"] == 8 and docs.restarts
    assert docs.mask[0, 0, 5].tolist() == [False] * 5 + [True] + [False] * 2
    plain = Trainer._model_inputs(SimpleNamespace(device=torch.device("cpu"), attention="sdpa"), mb)
    assert "packed_documents" not in plain  # transformers' own attention derives its mask itself
