"""preprocess(): round trips against the tokenizers, input formats, loss masks, bad input, resume."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from megatron_ipt.data.indexed import IndexedDataset
from megatron_ipt.data.inputs import DataError
from megatron_ipt.data.preprocess import preprocess
from megatron_ipt.tokenizer import load_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé — naïve café, 東京, emoji 🧬 and a tab\tin it.",
    "Line one\nline two\n\nparagraph three.",
    "  leading and trailing spaces  ",
    "Short.",
] * 8


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def docs(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds.get(i).tolist() for i in range(len(ds))]


@pytest.mark.parametrize("workers", [0, 2])
def test_round_trip_mistral(tmp_path: Path, mistral_tokenizer, workers: int) -> None:
    tok = mistral_tokenizer
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    s = preprocess(src, tmp_path / "out", tok, workers=workers, append_eod=True, batch_size=7, progress=False)
    assert s["prefix"] == f"{tmp_path}/out_text_document"
    assert s["read"] == s["written"] == len(TEXTS) and s["skipped"] == {}
    assert s["lossmask_prefix"] is None and s["dtype"] == "uint16"
    expected = [tok.encode(t) + [tok.eos_id] for t in TEXTS]
    assert docs(s["prefix"]) == expected
    assert s["tokens"] == sum(map(len, expected))
    summary = json.loads(Path(f"{s['prefix']}.summary.json").read_text())
    assert summary["written"] == len(TEXTS) and summary["elapsed_s"] >= 0
    assert tok.decode(docs(s["prefix"])[1][:-1]) == TEXTS[1]


def test_round_trip_hf_tokenizer_prepend_bos(tmp_path: Path, smollm2_dir: Path) -> None:
    tok = load_tokenizer(smollm2_dir)
    src = write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in TEXTS[:5]])
    s = preprocess(
        src, tmp_path / "out", tok, json_key="content", prepend_bos=True, workers=0, progress=False
    )
    assert s["prefix"].endswith("out_content_document")
    assert docs(s["prefix"]) == [[tok.bos_id] + tok.encode(t) for t in TEXTS[:5]]


def big_vocab_tokenizer(folder: Path):
    """A real HF (word-level) tokenizer whose 70,000-word vocabulary needs int32 tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["<unk>"] = 70_000
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>").save_pretrained(folder)
    return load_tokenizer(folder)


def test_int32_for_big_vocabulary(tmp_path: Path) -> None:
    tok = big_vocab_tokenizer(tmp_path / "tok")
    assert tok.vocab_size > 65500
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "w69999 w3 w65535"}, {"text": "w1"}])
    s = preprocess(src, tmp_path / "out", tok, workers=0, progress=False)
    assert s["dtype"] == "int32"
    assert docs(s["prefix"]) == [[69999, 3, 65535], [1]]


def test_input_formats_agree(tmp_path: Path, mistral_tokenizer) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": t} for t in TEXTS[:10]]
    d = tmp_path / "corpus"
    (d / "b_sub").mkdir(parents=True)
    write_jsonl(d / "a.jsonl", records[:3])
    write_jsonl(d / "b_sub" / "b.jsonl.gz", records[3:6], gz=True)
    pq.write_table(pa.table({"text": [r["text"] for r in records[6:]], "n": list(range(4))}), d / "c.parquet")
    (d / "notes.txt").write_text("ignored: not a corpus file")
    s = preprocess(d, tmp_path / "dir", mistral_tokenizer, workers=0, progress=False)
    expected = [mistral_tokenizer.encode(r["text"]) for r in records]
    assert docs(s["prefix"]) == expected and len(s["inputs"]) == 3

    hf = tmp_path / "hfds"
    datasets.Dataset.from_list(records).save_to_disk(str(hf))
    s2 = preprocess(hf, tmp_path / "hf", mistral_tokenizer, workers=0, progress=False)
    assert docs(s2["prefix"]) == expected


def test_segments_write_loss_mask_twin(tmp_path: Path, mistral_tokenizer) -> None:
    tok = mistral_tokenizer
    seg = [
        {"special": "bos", "loss": False},
        {"text": " <CON> context </CON>\n\n", "loss": False},
        {"text": "<QUE> q <ANS> a </END>", "loss": True},
        {"special": "eos", "loss": True},
    ]
    records = [{"text": "plain first"}, {"segments": seg}, {"text": "plain last"}]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    s = preprocess(src, tmp_path / "out", tok, workers=0, append_eod=True, batch_size=1, progress=False)
    toks, masks = docs(s["prefix"]), docs(s["lossmask_prefix"])
    a, b = tok.encode(seg[1]["text"]), tok.encode(seg[2]["text"])
    assert toks[1] == [tok.bos_id, *a, *b, tok.eos_id]  # --append-eod does not double the EOS
    assert masks[1] == [0] + [0] * len(a) + [1] * len(b) + [1]
    assert toks[0] == tok.encode("plain first") + [tok.eos_id]
    assert masks[0] == [1] * len(toks[0]) and masks[2] == [1] * len(toks[2])  # back-filled and later


BAD_CASES = {
    "malformed_json": (b'{"text": "unterminated\n', "malformed JSON"),
    "missing_key": (b'{"body": "no text field"}\n', "field 'text' missing"),
    "non_string_text": (b'{"text": 42}\n', "field 'text' is a int"),
    "empty_text": (b'{"text": "   "}\n', "field 'text' is empty"),
    "invalid_utf8": (b'{"text": "caf\xe9 latin-1"}\n', "invalid UTF-8"),
    "bad_segments": (b'{"segments": [{"text": "x"}]}\n', "segments[0]'].loss"),
}


@pytest.mark.parametrize("engine", ["gigatoken", "reference"])
@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_record_error_and_skip(tmp_path: Path, mistral_tokenizer, reason: str, engine: str) -> None:
    bad_line, message = BAD_CASES[reason]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "good one"}\n' + bad_line + b'{"text": "good two"}\n')
    with pytest.raises(DataError) as err:
        preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, progress=False, tokenizer_engine=engine)
    assert f"{src}:2:" in str(err.value) and message.split("'].")[0] in str(err.value)
    assert not Path(f"{tmp_path}/out_text_document.bin").exists()
    s = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, skip_bad=True, progress=False,
                   tokenizer_engine=engine)
    assert s["skipped"] == {reason: 1} and s["written"] == 2 and s["read"] == 3
    assert s["tokenizer_engine"].split()[0] == engine
    assert s["skip_examples"][0].startswith(f"{reason}: {src}:2:")
    assert docs(s["prefix"]) == [mistral_tokenizer.encode("good one"), mistral_tokenizer.encode("good two")]


def test_truncated_gzip(tmp_path: Path, mistral_tokenizer) -> None:
    full = gzip.compress("".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(400)).encode())
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match=rf"{src}:\d+: corrupt or truncated gzip"):
        preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    s = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=2, skip_bad=True, progress=False)
    assert s["skipped"] == {"truncated_gzip": 1}
    assert 0 < s["written"] < 400 and s["written"] + 1 == s["read"]
    assert docs(s["prefix"])[0] == mistral_tokenizer.encode("doc 0 " * 50)


def test_unreadable_parquet(tmp_path: Path, mistral_tokenizer) -> None:
    good = write_jsonl(tmp_path / "a.jsonl", [{"text": "fine"}])
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataError, match=rf"{bad}: unreadable parquet"):
        preprocess([good, bad], tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    s = preprocess([good, bad], tmp_path / "out", mistral_tokenizer, workers=0, skip_bad=True, progress=False)
    assert s["skipped"] == {"unreadable_parquet": 1} and s["written"] == 1 and s["read"] == 2


def test_missing_input_and_unknown_type(tmp_path: Path, mistral_tokenizer) -> None:
    with pytest.raises(DataError, match="no such file"):
        preprocess(tmp_path / "nope.jsonl", tmp_path / "out", mistral_tokenizer, progress=False)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown input type"):
        preprocess(tmp_path / "x.csv", tmp_path / "out", mistral_tokenizer, progress=False)


def test_complete_output_is_reused_and_changes_redo(tmp_path: Path, mistral_tokenizer) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:5]])
    s1 = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    mtime = Path(f"{s1['prefix']}.bin").stat().st_mtime_ns
    s2 = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    assert s2 == s1 and Path(f"{s1['prefix']}.bin").stat().st_mtime_ns == mtime
    s3 = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, append_eod=True, progress=False)
    assert s3["tokens"] == s1["tokens"] + 5


@pytest.mark.parametrize("engine", ["gigatoken", "reference"])
def test_kill9_then_resume(tmp_path: Path, mistral_tokenizer, park, engine: str) -> None:
    """SIGKILL a real run after a checkpoint: no final file appears; the rerun resumes and matches a clean run
    of the reference engine byte for byte."""
    import os
    import signal
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    words = np.array("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split())
    for f in range(3):
        write_jsonl(
            tmp_path / f"in{f}.jsonl", [{"text": " ".join(rng.choice(words, 40))} for _ in range(4000)]
        )
    inputs = [str(tmp_path / f"in{f}.jsonl") for f in range(3)]
    args = [
        "--input",
        *inputs,
        "--tokenizer",
        "mistral",
        "--workers",
        "1",
        "--batch-size",
        "20",
        "--no-progress",
        "--tokenizer-engine",
        engine,
    ]
    cmd = [sys.executable, "-m", "data_tools.preprocess_data", *args, "--checkpoint-seconds", "0"]
    out = tmp_path / "killed"
    prefix = f"{out}_text_document"
    repo = Path(__file__).resolve().parents[2]
    # Parked right after its first checkpoint past the first input file, whatever the machine's speed.
    parking = park(tmp_path / "park")
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([*cmd, "--output-prefix", str(out)], cwd=repo, stderr=fh,
                                env={**os.environ, **parking.env("preprocess_checkpoint:1")})
    progress = Path(f"{prefix}.progress.json")
    parking.wait(1, lambda: proc.poll() is None, log.read_text)
    assert json.loads(progress.read_text())["file_index"] == 1
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not Path(f"{prefix}.bin").exists() and not Path(f"{prefix}.idx").exists()
    resumed = preprocess(inputs, out, "mistral", workers=1, batch_size=20, progress=False, tokenizer_engine=engine)
    assert resumed["resumed_documents"] > 0 and resumed["tokenizer_engine"].split()[0] == engine
    clean = preprocess(inputs, tmp_path / "clean", "mistral", workers=0, progress=False, tokenizer_engine="reference")
    assert resumed["read"] == resumed["written"] == clean["written"] == 12000
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{clean['prefix']}{suffix}").read_bytes()
    assert not list(tmp_path.glob("*.partial")) and not progress.exists()


def test_rerun_without_segments_drops_stale_twin(tmp_path: Path, mistral_tokenizer) -> None:
    seg = [{"text": "a", "loss": False}, {"text": "b", "loss": True}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"segments": seg}])
    s = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    assert Path(f"{s['lossmask_prefix']}.idx").is_file()
    write_jsonl(src, [{"text": "plain now"}])
    s2 = preprocess(src, tmp_path / "out", mistral_tokenizer, workers=0, progress=False)
    assert s2["lossmask_prefix"] is None and not Path(f"{s['lossmask_prefix']}.idx").exists()


@pytest.mark.slow
def test_sigkill_at_random_commit_points_then_identical_output(tmp_path: Path, fault_injector) -> None:
    """The CLI is killed at seeded random commit points (fsync/rename) three times in a row; the rerun
    after the last kill writes the same bytes as an uninterrupted run."""
    import random

    rng = np.random.default_rng(1)
    words = np.array("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split())
    inputs = []
    for f in range(2):
        inputs.append(write_jsonl(tmp_path / f"in{f}.jsonl",
                                  [{"text": " ".join(rng.choice(words, 30))} for _ in range(300)]))

    def args(out: Path) -> list[str]:
        return ["--input", *map(str, inputs), "--output-prefix", str(out), "--tokenizer", "mistral", "--workers", "1",
                "--batch-size", "20", "--checkpoint-seconds", "0", "--append-eod", "--no-progress"]

    faults = fault_injector("preprocess")
    _, points = faults.run("data_tools.preprocess_data", args(tmp_path / "clean"))
    assert points > 30  # a checkpoint per batch, plus the final renames
    pick = random.Random(7)
    for _ in range(3):
        rc, _ = faults.run("data_tools.preprocess_data", args(tmp_path / "killed"), at=pick.randint(1, points // 3))
        assert rc == -9
        assert not Path(f"{tmp_path}/killed_text_document.summary.json").exists()
    faults.run("data_tools.preprocess_data", args(tmp_path / "killed"))
    # And once among the last commit points of a run (the final renames, the summary).
    assert faults.run("data_tools.preprocess_data", args(tmp_path / "late"), at=pick.randint(points - 3, points))[0] == -9
    faults.run("data_tools.preprocess_data", args(tmp_path / "late"))
    faults.done()
    clean, killed = (f"{tmp_path}/{n}_text_document" for n in ("clean", "killed"))
    for suffix in (".bin", ".idx"):
        assert Path(killed + suffix).read_bytes() == Path(clean + suffix).read_bytes()
        assert Path(f"{tmp_path}/late_text_document{suffix}").read_bytes() == Path(clean + suffix).read_bytes()
    timing = ("prefix", "elapsed_s", "docs_per_s", "tokens_per_s", "resumed_documents")
    s_clean, s_killed = (json.loads(Path(p + ".summary.json").read_text()) for p in (clean, killed))
    assert {k: v for k, v in s_killed.items() if k not in timing} == {k: v for k, v in s_clean.items() if k not in timing}
    assert s_killed["resumed_documents"] > 0 and s_killed["written"] == 600
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.progress.json"))
