"""The preprocess_data command line: help, a run, the summary, exit codes on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.preprocess_data import main
from megatron_ipt.data.indexed import IndexedDataset


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--input",
        "--output-prefix",
        "--tokenizer",
        "--json-keys",
        "--workers",
        "--append-eod",
        "--skip-bad",
    ):
        assert flag in out


def test_run_and_skip_bad(tmp_path: Path, capsys, mistral_tokenizer) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"body": "first text"}\n{"body": ""}\n{"body": "third"}\n')
    out = tmp_path / "out"
    rc = main(
        [
            "--input",
            str(src),
            "--output-prefix",
            str(out),
            "--tokenizer",
            "mistral",
            "--json-keys",
            "body",
            "--no-progress",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{src}:2:" in err and "field 'body' is empty" in err and "--skip-bad" in err
    args = ["--input", str(src), "--output-prefix", str(out), "--tokenizer", "mistral", "--json-keys", "body"]
    rc = main([*args, "--skip-bad", "--append-eod", "--workers", "2", "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["written"] == 2 and printed["skipped"] == {"empty_text": 1}
    prefix = f"{out}_body_document"
    summary = json.loads(Path(f"{prefix}.summary.json").read_text())
    assert summary["read"] == 3 and summary["tokens"] == IndexedDataset(prefix).n_tokens
    assert IndexedDataset(prefix).get(1).tolist() == mistral_tokenizer.encode("third") + [
        mistral_tokenizer.eos_id
    ]


def test_bad_tokenizer_exit_code(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n')
    rc = main(
        ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "none")]
    )
    assert rc == 1 and "not found" in capsys.readouterr().err
