"""Small indexed datasets for the packing, blending and loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.indexed import IndexedDatasetWriter, lossmask_prefix


def make_dataset(
    prefix: Path, n_docs: int, seed: int, max_len: int = 40, mask: bool = False, base: int = 0
) -> list:
    """Documents of random lengths whose tokens encode (document, position): easy to check."""
    rng = np.random.default_rng(seed)
    docs = []
    with IndexedDatasetWriter(prefix, np.int32) as w:
        mw = IndexedDatasetWriter(lossmask_prefix(prefix), np.uint8) if mask else None
        for d in range(n_docs):
            n = int(rng.integers(1, max_len))
            doc = base + d * 1000 + np.arange(n)
            docs.append(doc)
            w.add_document(doc)
            if mw is not None:
                mw.add_document((np.arange(n) % 3 != 0).astype(np.uint8))
        if mw is not None:
            mw.finalize()
    return docs


@pytest.fixture()
def small_dataset(tmp_path: Path) -> tuple[Path, list]:
    prefix = tmp_path / "small"
    return prefix, make_dataset(prefix, 200, seed=0)


@pytest.fixture()
def make_ds():
    """The :func:`make_dataset` factory (test modules cannot import conftest under importlib mode)."""
    return make_dataset
