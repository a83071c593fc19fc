"""The preprocess_data command line: help, a run, the summary, exit codes on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from data_tools.preprocess_data import main
from megatron_ipt.data.indexed import IndexedDataset


def test_help(capsys) -> None:
    assert main(["--help"]) == 0
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
    assert rc == 2
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
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_megatron_lm_command_line_runs_unchanged(tmp_path: Path, capsys, mistral_tokenizer) -> None:
    """Megatron-LM's tools/preprocess_data.py spellings: --tokenizer-type/--tokenizer-model, --json-keys a b."""
    import shutil

    from megatron_ipt.tokenizer import mistral_model_path

    model = tmp_path / "tokenizer.model"
    shutil.copyfile(mistral_model_path(), model)
    src = tmp_path / "corpus.jsonl"
    src.write_text('{"text": "a first text", "title": "One"}\n{"text": "second", "title": "Two"}\n')
    out = tmp_path / "my-mistral"
    argv = ("--input", str(src), "--output-prefix", str(out), "--tokenizer-type", "GPTSentencePieceTokenizer",
            "--tokenizer-model", str(model), "--json-keys", "text", "title", "--workers", "1",
            "--append-eod")
    assert main(list(argv)) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [p["prefix"] for p in printed] == [f"{out}_text_document", f"{out}_title_document"]
    eos = mistral_tokenizer.eos_id
    assert IndexedDataset(f"{out}_text_document").get(1).tolist() == mistral_tokenizer.encode("second") + [eos]
    assert IndexedDataset(f"{out}_title_document").get(0).tolist() == mistral_tokenizer.encode("One") + [eos]
    from data_tools.preprocess_data import PreprocessArgs
    from megatron_ipt.config import config_from_argv

    for spelled in (["text title"], ["text,title"], ["text", "title"]):  # one shell word (slurm JSON_KEYS) too
        cfg = config_from_argv(PreprocessArgs, ["--input", "x", "--output-prefix", "o", "--tokenizer", "mistral",
                                                "--json-keys", *spelled])
        assert cfg.json_keys == ["text", "title"]
    bad = ["--input", str(src), "--output-prefix", str(out), "--tokenizer-type", "BertWordPieceLowerCase"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BertWordPieceLowerCase: not supported" in err


def test_megatron_lm_fast_command_line_and_flags(tmp_path: Path, capsys) -> None:
    """tools/preprocess_data_fast.py's line (GPT2BPETokenizer + --vocab-file/--merge-file) runs unchanged;
    --partitions and --keep-newlines keep Megatron-LM's meaning, --split-sentences says what to do instead."""
    from megatron_ipt.tokenizer import gpt2_bpe_files, load_tokenizer

    vocab, merges = gpt2_bpe_files()
    src = tmp_path / "corpus.jsonl"
    src.write_text('{"text": "Hello world", "title": "One"}\n{"text": "second text", "title": "Two"}\n')
    out = tmp_path / "gpt2"
    fast = ["--input", str(src), "--json-keys", "text", "title", "--output-prefix", str(out), "--tokenizer-type",
            "GPT2BPETokenizer", "--vocab-file", str(vocab), "--merge-file", str(merges), "--append-eod"]
    assert main([*fast, "--workers", "2", "--partitions", "2", "--keep-newlines", "--no-progress"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [p["written"] for p in printed] == [2, 2] and printed[0]["tokenizer_engine"].startswith("gigatoken")
    gpt2 = load_tokenizer("gpt2")
    assert IndexedDataset(f"{out}_text_document").get(0).tolist() == [15496, 995, gpt2.eos_id]
    assert IndexedDataset(f"{out}_title_document").get(1).tolist() == gpt2.encode("Two") + [gpt2.eos_id]
    summary = json.loads(Path(f"{out}_text_document.summary.json").read_text())
    assert summary["tokenizer_fingerprint"]["hash"] == gpt2.fingerprint()["hash"]
    assert main([*fast, "--split-sentences"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split-sentences: sentence-level datasets" in err and "drop the flag" in err
    assert main([*fast[:-5], "--tokenizer-engine", "reference", "--append-eod"]) == 2  # GPT2BPE without files
    assert "needs --vocab-file" in capsys.readouterr().err
    null = tmp_path / "ids.jsonl"
    null.write_text('{"text": "5 6 7"}\n')
    assert main(["--input", str(null), "--output-prefix", str(tmp_path / "null"), "--tokenizer-type",
                 "NullTokenizer", "--vocab-size", "10", "--append-eod", "--no-progress"]) == 0
    assert IndexedDataset(f"{tmp_path}/null_text_document").get(0).tolist() == [5, 6, 7, 10]


def test_concurrent_run_into_one_prefix_is_refused(tmp_path: Path, capsys, park) -> None:
    """A second preprocess into the prefix a running one writes: one line, exit 2; the first finishes intact."""
    import os
    import subprocess
    import sys

    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"text": f"Record {i} about metformin and glucose."}) + "\n"
                           for i in range(60000)))
    out = tmp_path / "o"
    lock = Path(f"{out}_text_document.lock")
    # The reference engine: gigatoken can finish these records before the lock is seen.
    argv = ["--input", str(src), "--output-prefix", str(out), "--tokenizer", "mistral", "--workers", "0",
            "--no-progress", "--checkpoint-seconds", "0"]
    # Held mid-write (parked after its first checkpoint, lock taken) while the second run tries.
    parking = park(tmp_path / "park")
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen([sys.executable, "-m", "data_tools.preprocess_data", *argv],
                                 cwd=Path(__file__).resolve().parents[2], stdout=fh, stderr=subprocess.STDOUT,
                                 env={**os.environ, **parking.env("preprocess_checkpoint:0")})
    try:
        parking.wait(1, lambda: first.poll() is None, log.read_text)
        assert lock.is_file() and lock.read_text().strip() == str(first.pid), "the first run never took its lock"
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("error: ") == 1 and "Traceback" not in err
        assert f"another run (pid {first.pid}) is writing this output now" in err
    finally:
        parking.release()
    assert first.wait(300) == 0, log.read_text()[-2000:]
    assert len(IndexedDataset(f"{out}_text_document")) == 60000
    assert not lock.exists()
