"""merge_datasets: documents in order, widened dtype, loss-mask twins merged (ones where missing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_tools.merge_datasets import main
from megatron_ipt.data.indexed import IndexedDataset, IndexedDatasetWriter, lossmask_prefix


def write(prefix: Path, docs: list[list[int]], dtype, mask: list[list[int]] | None = None) -> None:
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
    if mask is not None:
        with IndexedDatasetWriter(lossmask_prefix(prefix), np.uint8) as w:
            for m in mask:
                w.add_document(m)


def test_merge(tmp_path: Path, capsys) -> None:
    write(tmp_path / "a", [[1, 2, 3], [4]], np.uint16)
    write(tmp_path / "b", [[70000, 5]], np.int32, mask=[[0, 1]])
    write(tmp_path / "c", [[6, 7]], np.uint16)
    rc = main(["--input", *(str(tmp_path / n) for n in "abc"), "--output-prefix", str(tmp_path / "m")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 4 and summary["tokens"] == 8 and summary["dtype"] == "int32"
    ds = IndexedDataset(tmp_path / "m")
    assert [ds.get(i).tolist() for i in range(len(ds))] == [[1, 2, 3], [4], [70000, 5], [6, 7]]
    mask = IndexedDataset(lossmask_prefix(tmp_path / "m"))
    assert [mask.get(i).tolist() for i in range(len(mask))] == [[1, 1, 1], [1], [0, 1], [1, 1]]


def test_merge_errors(tmp_path: Path, capsys) -> None:
    write(tmp_path / "a", [[1]], np.uint16)
    assert (
        main(
            [
                "--input",
                str(tmp_path / "a"),
                str(tmp_path / "missing"),
                "--output-prefix",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "missing" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "a"), "--output-prefix", str(tmp_path / "a")]) == 2
    assert "also an input" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists()
