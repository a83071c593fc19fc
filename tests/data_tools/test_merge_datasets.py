"""merge_datasets: documents in order, loss-mask twins merged (ones where missing); mixed tokenizers or dtypes refused."""

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
    write(tmp_path / "a", [[1, 2, 3], [4]], np.int32)
    write(tmp_path / "b", [[70000, 5]], np.int32, mask=[[0, 1]])
    write(tmp_path / "c", [[6, 7]], np.int32)
    rc = main(["--input", *(str(tmp_path / n) for n in "abc"), "--output-prefix", str(tmp_path / "m")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 4 and summary["tokens"] == 8 and summary["dtype"] == "int32"
    assert summary["tokenizer_fingerprint"] is None  # hand-written inputs carry no record
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


def test_merge_refuses_other_tokenizer_or_dtype(tmp_path: Path, capsys, mistral_tokenizer, smollm2_dir) -> None:
    """Ids of two tokenizers mean different things: merging them is refused, naming both."""
    from megatron_ipt.data.preprocess import preprocess
    from megatron_ipt.tokenizer import load_tokenizer

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "The same words, two tokenizers."}) + "\n")
    smol = load_tokenizer(smollm2_dir)
    a = preprocess(src, tmp_path / "a", mistral_tokenizer, workers=0, progress=False)["prefix"]
    a2 = preprocess(src, tmp_path / "a2", "mistral", workers=0, progress=False)["prefix"]
    b = preprocess(src, tmp_path / "b", smol, workers=0, progress=False)["prefix"]
    assert main(["--input", a, b, "--output-prefix", str(tmp_path / "m")]) == 2  # bad input: exit 2
    err = capsys.readouterr().err
    assert f"cannot merge {a} (tokenized with mistral (vocab 32000" in err and str(smollm2_dir) in err
    assert not (tmp_path / "m.bin").exists()
    # Same tokenizer: merged, and the record travels to the output's summary.
    assert main(["--input", a, a2, "--output-prefix", str(tmp_path / "m")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer_fingerprint"] == {**mistral_tokenizer.fingerprint(), "dtype": "uint16"}
    assert json.loads((tmp_path / "m.summary.json").read_text())["tokenizer_fingerprint"]["hash"] == (
        mistral_tokenizer.vocab_hash)
    # Different dtypes (even without records) are refused too.
    write(tmp_path / "u16", [[1, 2]], np.uint16)
    write(tmp_path / "i32", [[70000]], np.int32)
    assert main(["--input", str(tmp_path / "u16"), str(tmp_path / "i32"), "--output-prefix", str(tmp_path / "x")]) == 2
    assert "different token dtypes" in capsys.readouterr().err and not (tmp_path / "x.bin").exists()


def test_merge_refuses_one_dataset_given_twice(tmp_path: Path, capsys) -> None:
    write(tmp_path / "a", [[1, 2]], np.uint16)
    write(tmp_path / "b", [[3]], np.uint16)
    (tmp_path / "x").mkdir()
    for twice in ([tmp_path / "a", tmp_path / "b", tmp_path / "a"], [tmp_path / "a", tmp_path / "x" / ".." / "a"]):
        assert main(["--input", *map(str, twice), "--output-prefix", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert [ln.startswith("error: ") for ln in err.splitlines()].count(True) == 1 and f"{twice[-1]} names the same dataset as {tmp_path / 'a'}" in err, err
    assert not (tmp_path / "m.bin").exists()
