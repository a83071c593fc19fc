"""The bad-input table: every row is one hostile input to a command-line tool.

Each row expects either a clear failure (exit 2, exactly one ``error:`` line on stderr that matches
``error`` — the file, line or key at fault — and no traceback) or a counted skip (exit 0 and the
skip counted in the tool's summary). Tools run in-process through their ``main(argv)`` under an
alarm (no hang); ``subprocess=True`` rows run the module under a timeout instead.

Adding a row: write a ``build(env) -> argv`` function (inputs go under ``env.tmp``; shared
fixtures are ``env.text_prefix`` (a good dataset), ``env.checkpoint`` (a real 1-rank ZeRO-1 run's
checkpoint root), ``env.tiny_model`` (an HF dir without tokenizer files) and ``env.synthesizer`` (the
same with Mistral's tokenizer)) and append a ``Case``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120

TOOLS = {
    "preprocess": "data_tools.preprocess_data",
    "build_corpora": "data_tools.build_corpora",
    "build_instruction_data": "data_tools.build_instruction_data",
    "synthesize": "data_tools.synthesize",
    "merge": "data_tools.merge_datasets",
    "inspect": "data_tools.inspect_data",
    "train": "megatron_ipt.train.__main__",
    "export": "megatron_ipt.train.export",
    "evaluate": "megatron_ipt.eval.heldout",
    "suite": "megatron_ipt.eval.suite",
    "eval_paper": "megatron_ipt.eval.paper",
    "build_synthesizer_data": "data_tools.build_synthesizer_data",
    "preflight": "megatron_ipt.cluster.preflight",
}


@dataclass
class Env:
    tmp: Path
    text_prefix: str
    checkpoint: Path
    tiny_model: Path
    synthesizer: Path

    def file(self, name: str, data: bytes | str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def jsonl(self, name: str, records: list) -> str:
        return self.file(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


@dataclass(frozen=True)
class Case:
    name: str
    tool: str
    build: Callable[[Env], list[str]]
    error: str | None = None  # regex the one error line must match; None: the run must succeed
    exit: int = 2
    check: Callable[[Env, str], None] | None = None  # extra assertions on success (stdout given)
    subprocess: bool = False
    needs_mount: bool = False
    after: Callable[[Env], None] | None = None  # assertions after the run, failed or not (what stayed in place)
    env: dict[str, str] | None = None  # environment variables set for the run


TEXTS = [{"text": f"Patients in cohort {i} received metformin for twelve weeks."} for i in range(5)]


def _pre(env: Env, inp: str, *extra: str, out: str = "out/ds") -> list[str]:
    return ["--input", inp, "--output-prefix", str(env.tmp / out), "--tokenizer", "mistral", "--workers", "0",
            "--no-progress", *extra]


def _summary(env: Env, out: str = "out/ds") -> dict:
    return json.loads((env.tmp / f"{out}_text_document.summary.json").read_text())


def _written(n: int, **skipped: int) -> Callable[[Env, str], None]:
    def check(env: Env, stdout: str) -> None:
        summary = _summary(env)
        assert summary["written"] == n, summary
        for reason, count in skipped.items():
            assert summary["skipped"].get(reason) == count, summary

    return check


def _gzip_cut(env: Env) -> str:
    data = gzip.compress("".join(json.dumps(t) + "\n" for t in TEXTS * 200).encode())
    return env.file("cut.jsonl.gz", data[: len(data) // 2])


def _dataset_copy(env: Env, name: str) -> str:
    dst = env.tmp / name
    for ext in (".bin", ".idx"):
        shutil.copyfile(env.text_prefix + ext, str(dst) + ext)
    return str(dst)


def _damage_idx(env: Env, name: str, edit: Callable[[np.ndarray, np.ndarray], None]) -> str:
    """A copy of the good dataset whose .idx sizes/pointers arrays are edited in place."""
    from megatron_ipt.data.indexed import HEADER_SIZE

    prefix = _dataset_copy(env, name)
    raw = bytearray(Path(prefix + ".idx").read_bytes())
    n = int(np.frombuffer(bytes(raw[HEADER_SIZE - 16: HEADER_SIZE - 8]), np.uint64)[0])
    sizes = np.frombuffer(raw, np.int32, n, HEADER_SIZE).copy()
    ptrs = np.frombuffer(raw, np.int64, n, HEADER_SIZE + 4 * n).copy()
    edit(sizes, ptrs)
    raw[HEADER_SIZE: HEADER_SIZE + 4 * n] = sizes.tobytes()
    raw[HEADER_SIZE + 4 * n: HEADER_SIZE + 12 * n] = ptrs.tobytes()
    Path(prefix + ".idx").write_bytes(bytes(raw))
    return prefix


def _truncated(env: Env, name: str, ext: str) -> str:
    prefix = _dataset_copy(env, name)
    p = Path(prefix + ext)
    p.write_bytes(p.read_bytes()[:-7])
    return prefix


def _swap_sizes(sizes: np.ndarray, ptrs: np.ndarray) -> None:
    sizes[0] += 5  # document 0 would read 5 tokens of document 1; the totals still agree
    sizes[1] -= 5


def _wild_pointer(sizes: np.ndarray, ptrs: np.ndarray) -> None:
    ptrs[1] = ptrs[2]


def _dataset(env: Env, name: str, docs: list[list[int]], dtype=np.int32) -> str:
    from megatron_ipt.data.indexed import IndexedDatasetWriter

    prefix = str(env.tmp / name)
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
    return prefix


def _train(env: Env, *extra: str, data: str | None = None) -> list[str]:
    return ["--config", str(ROOT / "configs/tiny.yaml"), f"--data.train={data or env.text_prefix}",
            f"--run_dir={env.tmp}/run", f"--checkpoint.dir={env.tmp}/run/ckpt", "--logging.tensorboard=false",
            "--data.seq_len=64", "--micro_batch_size=2", "--global_batch_size=2", "--steps=2", *extra]


def _smollm2() -> str:
    from megatron_ipt.model.hf_import import smollm2_hf_dir

    return str(smollm2_hf_dir())


def _smollm2_dataset(env: Env) -> str:
    """The good texts tokenized with SmolLM2's tokenizer (its summary records that tokenizer)."""
    from megatron_ipt.data.preprocess import preprocess

    src = env.jsonl("smol.jsonl", TEXTS)
    return preprocess(src, env.tmp / "smol", _smollm2(), workers=0, progress=False)["prefix"]


def _ckpt_copy(env: Env) -> Path:
    dst = env.tmp / "ckpt"
    shutil.copytree(env.checkpoint, dst)
    from megatron_ipt.train.checkpoint import list_checkpoints

    return list_checkpoints(dst)[-1][1]


def _export(env: Env, damage: Callable[[Path], None]) -> list[str]:
    tag = _ckpt_copy(env)
    damage(tag)
    return [str(tag), str(env.tmp / "hf")]


def _user_folder(env: Env, kind: str) -> Path:
    """A target the export did not write: a run dir (checkpoints and metrics), a folder, or a file;
    its bytes are recorded in env.tmp/before.json for :func:`_untouched`."""
    if kind == "run":
        target = env.tmp / "run"
        shutil.copytree(env.checkpoint, target / "ckpt")
        (target / "metrics.jsonl").write_text('{"step": 1}\n')
    elif kind == "folder":
        target = Path(env.file("notes/a.txt", "mine\n")).parent
    else:
        target = Path(env.file("f", "precious\n"))
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    (env.tmp / "before.json").write_text(json.dumps({str(p): p.read_bytes().hex() for p in files}))
    return target


def _untouched(env: Env) -> None:
    before = json.loads((env.tmp / "before.json").read_text())
    now = {str(p): p.read_bytes().hex() for p in sorted(env.tmp.rglob("*")) if str(p) in before and p.is_file()}
    assert now == before, "the refused target changed"
    assert not [p.name for p in env.tmp.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


SYNTH_OK = {"id": "a", "text": "Metformin lowers glucose.", "round": 0, "linked": False, "slot": 0,
            "pairs": [{"instruction": "What lowers glucose?", "response": "Metformin."}]}
INSTRUCTIONS = [{"question": "Name a biguanide.", "response": "Metformin."}]


def _instr(env: Env, records: list, *extra: str) -> list[str]:
    return ["--input", env.jsonl("i.jsonl", records), "--tokenizer=mistral", f"--output-prefix={env.tmp / 'ins'}",
            "--workers=0", "--no-progress", *extra]


def _instr_summary(env: Env) -> dict:
    return json.loads((env.tmp / "ins_text_document.summary.json").read_text())


def _corpora(env: Env, synthesized: list, *extra: str, instructions: list | None = None) -> list[str]:
    syn = env.jsonl("synth/s.jsonl", synthesized)
    ins = env.jsonl("instructions.jsonl", INSTRUCTIONS if instructions is None else instructions)
    return [f"--synthesized={syn}", f"--instructions={ins}", "--tokenizer=mistral",
            f"--output-dir={env.tmp}/corpora", "--workers=0", "--progress=false", *extra]


def _general(env: Env, tuning: list) -> list[str]:
    syn = env.jsonl("synth/s.jsonl", [SYNTH_OK])
    tun = env.jsonl("tuning.jsonl", tuning)
    return ["--recipe=general", f"--synthesized={syn}", f"--tuning={tun}", "--tokenizer=mistral",
            f"--output-dir={env.tmp}/corpora", "--workers=0", "--progress=false"]


def _synth(env: Env, records: list, *extra: str) -> list[str]:
    inp = env.jsonl("raw/r.jsonl", records)
    return [f"--inputs={inp}", f"--output-dir={env.tmp}/synth_out", f"--engine.model={env.synthesizer}",
            "--engine.kind=hf", "--engine.dtype=float32", "--max_new_tokens=4", "--rounds=1", "--progress=false",
            *extra]


def _synth_counted(env: Env, stdout: str) -> None:
    stats = json.loads((env.tmp / "synth_out" / "r.stats.json").read_text())
    assert stats["texts"] == 1, stats
    assert stats["input"]["bad_records"] == 1, stats


def _synth_done(env: Env, records: list, *extra: str) -> list[str]:
    """The argv of a synthesis that has already run once to the end (its units finished)."""
    from data_tools import synthesize

    argv = _synth(env, records, *extra)
    assert synthesize.main(argv) == 0
    return argv


def _synth_edited(env: Env) -> list[str]:
    argv = _synth_done(env, TEXTS)
    raw = env.tmp / "raw" / "r.jsonl"
    raw.write_text(raw.read_text().replace("cohort 3", "cohort three"))
    return argv


def _synth_torn(env: Env) -> list[str]:
    argv = _synth_done(env, TEXTS)
    _cut(env.tmp / "synth_out" / "r.jsonl")
    return argv


def _synth_whole(env: Env, stdout: str) -> None:
    out, stats = env.tmp / "synth_out" / "r.jsonl", json.loads((env.tmp / "synth_out" / "r.stats.json").read_text())
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"r:{i}" for i in range(1, 6)]
    assert out.stat().st_size == stats["output"]["bytes"]


def _synth_plan(env: Env, name: str) -> list[str]:
    """A synthesis whose units.plan (same inputs, same settings) names a unit ``name``."""
    from megatron_ipt.data.inputs import expand_inputs
    from megatron_ipt.synth.units import file_signature

    argv = _synth(env, TEXTS)
    inp = env.tmp / "raw" / "r.jsonl"
    plan = {"spec": {"unit_texts": 10000, "limit": 0}, "files": [file_signature(f) for f in expand_inputs([inp])],
            "units": [{"file": str(inp), "start": 0, "stop": 5, "name": name}]}
    env.file("synth_out/units.plan", json.dumps(plan))
    return argv


def _synth_markers(env: Env, stdout: str) -> None:
    stats = json.loads((env.tmp / "synth_out" / "r.stats.json").read_text())
    assert stats["input"]["markers_escaped"] == 1, stats
    assert "<QUE>" not in (env.tmp / "synth_out" / "r.jsonl").read_text()


def _report(env: Env) -> dict:
    return json.loads((env.tmp / "corpora/mixture_report.json").read_text())


def _eval_dir(env: Env, files: dict[str, str]) -> str:
    (env.tmp / "evals").mkdir()
    for name, text in files.items():
        env.file(f"evals/{name}", text)
    return f"--contamination.eval_sets={env.tmp / 'evals'}"


def _synthesized_from(env: Env, folder: str) -> list[str]:
    return [f"--synthesized={env.tmp / folder}" if a.startswith("--synthesized=") else a
            for a in _corpora(env, [SYNTH_OK])]


def _corpora_crafted_plan(env: Env) -> list[str]:
    env.file("planned/units.plan", json.dumps({"units": [{"file": "c.jsonl", "start": 0, "stop": 1, "name": "../s"}]}))
    return _synthesized_from(env, "planned")


def _two_settings(env: Env) -> list[str]:
    """A synthesis folder of two units made with other rounds (one synthesizer)."""
    import hashlib

    units = []
    for k, rounds in enumerate((2, 3)):
        data = (json.dumps({**SYNTH_OK, "id": f"t{k}"}) + "\n").encode()
        env.file(f"units/u{k}.jsonl", data)
        prov = {"synthesizer": {"path": "synth/hf", "hash": "ab12", "weights": []}, "config": {"rounds": rounds}}
        env.file(f"units/u{k}.stats.json", json.dumps({"texts": 1, "pairs": 1, "provenance": prov, "output": {
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}))
        units.append({"file": "corpus.jsonl", "start": k, "stop": k + 1, "name": f"u{k}"})
    env.file("units/units.plan", json.dumps({"spec": {}, "files": [], "units": units}))
    return _synthesized_from(env, "units")


def _planned_with_stray(env: Env) -> list[str]:
    """A synthesis folder with one finished unit (and its completion record) and a unit file its plan does not list."""
    import hashlib

    data = (json.dumps(SYNTH_OK) + "\n").encode()
    env.file("units/u.jsonl", data)
    env.file("units/u.stats.json", json.dumps({"texts": 1, "pairs": 1, "output": {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}))
    env.file("units/units.plan", json.dumps({"spec": {}, "files": [], "units": [
        {"file": "corpus.jsonl", "start": 0, "stop": 1, "name": "u"}]}))
    env.jsonl("units/copied.jsonl", [{**SYNTH_OK, "id": "other"}])
    return _synthesized_from(env, "units")


def _tmpfs(env: Env, size: str, readonly: bool) -> Path:
    """A small tmpfs under env.tmp (unmounted by the runner)."""
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True, capture_output=True)
    return mnt


def _unwritable_dir(env: Env) -> Path:
    if os.geteuid() == 0:  # root ignores permission bits: a read-only mount is truly unwritable
        return _tmpfs(env, "64k", readonly=True)
    d = env.tmp / "locked"
    d.mkdir()
    d.chmod(0o500)
    return d


CASES: list[Case] = [
    # -- preprocess: records ------------------------------------------------------------------
    Case("malformed JSON", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], '{"text": "cut', TEXTS[1]])),
         r"a\.jsonl:2: .*malformed JSON"),
    Case("malformed JSON, skipped and counted", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], '{"text": "cut', TEXTS[1]]), "--skip-bad"),
         check=_written(2, malformed_json=1)),
    Case("text of the wrong type", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], {"text": 5}])), r"a\.jsonl:2: .*'text'.*int"),
    Case("text null", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [{"text": None}])), r"a\.jsonl:1: .*'text'"),
    Case("empty text", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], {"text": "  "}])), r"a\.jsonl:2: .*'text'.*empty"),
    Case("record is a JSON list", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [[1, 2]])), r"a\.jsonl:1: .*expected an object"),
    Case("invalid UTF-8", "preprocess",
         lambda e: _pre(e, e.file("a.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')),
         r"a\.jsonl:2: .*UTF-8"),
    Case("NUL bytes in a line", "preprocess",
         lambda e: _pre(e, e.file("a.jsonl", b'{"text": "ok"}\n{"text": "a\x00b"}\n')),
         r"a\.jsonl:2: .*malformed JSON"),
    Case("a UTF-8 BOM is read as UTF-8", "preprocess",
         lambda e: _pre(e, e.file("a.jsonl", "\ufeff" + "".join(json.dumps(t) + "\n" for t in TEXTS))),
         check=_written(5)),
    Case("CRLF line ends", "preprocess",
         lambda e: _pre(e, e.file("a.jsonl", "".join(json.dumps(t) + "\r\n" for t in TEXTS))),
         check=_written(5)),
    Case("lone surrogate", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], '{"text": "bad \\ud800 text"}'])),
         r"a\.jsonl:2: .*'text'.*surrogate"),
    Case("lone surrogate, skipped and counted", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], '{"text": "bad \\udfff"}']), "--skip-bad"),
         check=_written(1, lone_surrogate=1)),
    Case("segments of the wrong shape", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [{"segments": [{"text": "x", "loss": "yes"}]}])),
         r"a\.jsonl:1: .*segments\[0\].*loss"),
    Case("NullTokenizer text that is not ids", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [{"text": "1 2"}, {"text": "one two"}]), "--tokenizer-type",
                        "NullTokenizer", "--vocab-size", "10"), r"a\.jsonl:2: .*'text'.*not space-separated integers"),
    Case("NullTokenizer text that is not ids, skipped and counted", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [{"text": "1 2"}, {"text": "1 99"}]), "--tokenizer-type",
                        "NullTokenizer", "--vocab-size", "10", "--skip-bad"), check=_written(1, untokenizable=1)),
    Case("--split-sentences (Megatron-LM's sentence datasets)", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS), "--split-sentences"), r"--split-sentences: .*drop the flag"),
    Case("GPT2BPETokenizer without its files", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS), "--tokenizer-type", "GPT2BPETokenizer"),
         r"GPT2BPETokenizer needs --vocab-file"),
    Case("segment naming a special token the tokenizer lacks, skipped and counted", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [TEXTS[0], {"segments": [{"special": "<|im_start|>", "loss": False},
                                                                       {"text": "hi", "loss": True}]}]), "--skip-bad"),
         check=_written(1, bad_segments=1)),
    Case("segment naming a special token the tokenizer lacks", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", [{"segments": [{"special": "<|im_start|>", "loss": False},
                                                            {"text": "hi", "loss": True}]}])),
         r"a\.jsonl:1: .*segments\[0\].*'<\|im_start\|>' is not a special token of tokenizer mistral"),
    # -- preprocess: files ---------------------------------------------------------------------
    Case("gzip cut short", "preprocess", lambda e: _pre(e, _gzip_cut(e)), r"cut\.jsonl\.gz:\d+: .*gzip"),
    Case("gzip cut short, skipped and counted", "preprocess", lambda e: _pre(e, _gzip_cut(e), "--skip-bad"),
         check=lambda e, out: _summary(e)["skipped"]["truncated_gzip"] == 1 or pytest.fail(str(_summary(e)))),
    Case("empty file", "preprocess", lambda e: _pre(e, e.file("empty.jsonl", b"")),
         r"empty\.jsonl.*no documents"),
    Case("every record skipped", "preprocess",
         lambda e: _pre(e, e.jsonl("bad.jsonl", ["{", "{"]), "--skip-bad"), r"bad\.jsonl.*no documents.*2 skipped"),
    Case("missing input path", "preprocess", lambda e: _pre(e, str(e.tmp / "nope.jsonl")),
         r"nope\.jsonl: no such file"),
    Case("input of an unknown type", "preprocess", lambda e: _pre(e, e.file("a.csv", "text\nx\n")),
         r"a\.csv: unknown input type"),
    Case("output prefix under a file", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS), out=str(Path(e.file("blocker", "x")) / "ds")),
         r"cannot write .*ds_text_document \(.*blocker\): a file stands where a folder must be"),
    Case("unwritable output", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS), out=str(_unwritable_dir(e) / "ds")),
         r"cannot write .*ds_text_document", needs_mount=True),
    Case("full disk", "preprocess",
         lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS * 400), out=str(_tmpfs(e, "16k", readonly=False) / "ds")),
         r"cannot write .*ds_text_document.*No space left", needs_mount=True),
    Case("--workers -1", "preprocess", lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS), "--workers", "-1"),
         r"--workers"),
    Case("--batch-size 0", "preprocess", lambda e: _pre(e, e.jsonl("a.jsonl", TEXTS), "--batch-size", "0"),
         r"--batch-size"),
    # -- indexed datasets ----------------------------------------------------------------------
    Case("truncated .idx", "inspect", lambda e: [_truncated(e, "t", ".idx")], r"t\.idx: .*truncated or corrupt"),
    Case("truncated .bin", "inspect", lambda e: [_truncated(e, "t", ".bin")], r"t\.bin: .*inconsistent"),
    Case("sizes disagree with pointers", "inspect", lambda e: [_damage_idx(e, "s", _swap_sizes)],
         r"s\.idx: .*pointer.*document 1"),
    Case("wild pointer", "inspect", lambda e: [_damage_idx(e, "w", _wild_pointer)], r"w\.idx: .*pointer"),
    Case("negative size", "inspect",
         lambda e: [_damage_idx(e, "n", lambda s, p: s.__setitem__(0, -3))], r"n\.idx: .*negative"),
    Case("merge a truncated .idx", "merge",
         lambda e: ["--input", e.text_prefix, _truncated(e, "t", ".idx"), "--output-prefix", str(e.tmp / "m")],
         r"t\.idx: .*truncated or corrupt"),
    Case("merge of different tokenizers", "merge",
         lambda e: ["--input", e.text_prefix, _smollm2_dataset(e), "--output-prefix", str(e.tmp / "m")],
         r"cannot merge .*good \(tokenized with mistral .* and .*smol_text_document \(tokenized with .*SmolLM2"),
    Case("merge of different dtypes", "merge",
         lambda e: ["--input", _dataset(e, "u16", [[1, 2]], np.uint16), _dataset(e, "i32", [[70000]], np.int32),
                    "--output-prefix", str(e.tmp / "m")],
         r"different token dtypes .*u16: uint16, .*i32: int32"),
    Case("merge of one dataset given twice", "merge",
         lambda e: ["--input", e.text_prefix, str(Path(e.text_prefix).parent / "x" / ".." / "good"),
                    "--output-prefix", str(e.tmp / "m")], r"x/\.\./good names the same dataset as .*good"),
    Case("missing dataset", "inspect", lambda e: [str(e.tmp / "nothing")], r"nothing.*missing"),
    Case("inspect: decode with another tokenizer", "inspect",
         lambda e: [_smollm2_dataset(e), "--decode", "1", "--tokenizer", "mistral"],
         r"smol_text_document: tokenized with .*SmolLM2.*but the tokenizer given is mistral"),
    # -- training config and data ---------------------------------------------------------------
    Case("negative blend weight", "train", lambda e: _train(e, data=f"-0.5 {e.text_prefix} 1 {e.text_prefix}"),
         r"data\.train: .*weight.*positive.*-0\.5"),
    Case("zero blend weight", "train", lambda e: _train(e, data=f"0 {e.text_prefix}"),
         r"data\.train: .*weight.*positive"),
    Case("non-numeric blend weight", "train", lambda e: _train(e, data=f"heavy {e.text_prefix} 1 {e.text_prefix}"),
         r"data\.train: .*not a number"),
    Case("blend naming one dataset twice", "train", lambda e: _train(e, data=f"0.5 {e.text_prefix} 0.5 {e.text_prefix}"),
         r"data\.train: .*good names the same dataset as .*good \(blend entries 1 and 2\)"),
    Case("unknown config key", "train", lambda e: _train(e, "--optim.learning_rate=1"),
         r"unknown config key optim\.learning_rate"),
    Case("config value of the wrong type", "train", lambda e: _train(e, "--steps=many"), r"steps"),
    Case("attention name transformers refuses", "train", lambda e: _train(e, "--model.attention=doc_flash"),
         r"model\.attention='doc_flash' is spelled 'doc_fa_varlen'"),
    Case("non-positive collective timeout", "train", lambda e: _train(e, "--dist.timeout_minutes=0"),
         r"dist\.timeout_minutes must be positive"),
    Case("train: in-loop evaluation task folder missing", "train",
         lambda e: _train(e, "--eval.downstream_interval=1", f"--eval.downstream_tasks=[{e.tmp}/no_suite]"),
         r"eval\.downstream_tasks: .*no_suite: no such folder"),
    Case("train: in-loop evaluation of an untrusted task folder", "train",
         lambda e: _train(e, "--eval.downstream_interval=1", f"--eval.downstream_tasks=[{e.file('suite/t.yaml', 'task: t')[:-7]}]"),
         r"eval\.downstream_tasks: .*suite: .*downstream_trust_task_code=true"),
    Case("train: in-loop evaluation without tasks", "train", lambda e: _train(e, "--eval.downstream_interval=1"),
         r"eval\.downstream_tasks is empty"),
    Case("seq_len above the model's positions", "train", lambda e: _train(e, "--data.seq_len=4096"),
         r"data\.seq_len=4096 exceeds"),
    Case("vocab mismatch", "train", lambda e: _train(e, "--model.vocab_size=32768", "--model.expected_parameters=null"),
         r"32000 tokens but the model's embedding has 32768"),
    Case("token ids above the vocabulary", "train",
         lambda e: _train(e, data=_dataset(e, "big", [[1, 2, 40000, 5] * 40] * 4)),
         r"big: .*token id 40000.*32000"),
    Case("empty dataset", "train", lambda e: _train(e, data=_dataset(e, "void", [])), r"void: .*no documents"),
    Case("missing data prefix", "train", lambda e: _train(e, data=str(e.tmp / "absent")), r"data\.train: .*absent.*missing .*absent\.bin"),
    Case("tokenizer mismatch", "train",
         lambda e: _train(e, f"--data.tokenizer={_smollm2()}", "--model.vocab_size=49152",
                          "--model.expected_parameters=null"),
         r"data\.train: dataset .*good was tokenized with mistral \(vocab 32000.* but data\.tokenizer is "
         r".*SmolLM2.*\(vocab 49152.*data\.allow_tokenizer_mismatch=true"),
    Case("resume with more steps (another sample order)", "train",
         lambda e: _train(e, f"--checkpoint.resume={_ckpt_copy(e)}", "--steps=4"),
         r"data fingerprint .*num_samples: 4 -> 8.*checkpoint\.allow_data_change=true"),
    Case("preflight: token ids above the vocabulary", "preflight",
         lambda e: ["--train-config", str(ROOT / "configs/tiny.yaml"), "--",
                    f"--data.train={_dataset(e, 'big', [[1, 2, 40000, 5] * 40] * 4)}"],
         r"preflight failed: data\.train: .*big: .*token id 40000.*32000"),
    Case("unknown key in preflight", "preflight",
         lambda e: ["--train-config", str(ROOT / "configs/tiny.yaml"), "--", "--data.trian=x"],
         r"unknown config key data\.trian"),
    # -- checkpoints ------------------------------------------------------------------------------
    Case("checkpoint: missing shard", "export",
         lambda e: _export(e, lambda t: next(t.glob("*optim_states.pt")).unlink()), r"optim shard of rank 0 is missing"),
    Case("checkpoint: empty meta.json", "export", lambda e: _export(e, lambda t: (t / "meta.json").write_text("")),
         r"meta\.json: empty, truncated or corrupt"),
    Case("checkpoint: truncated meta.json", "export", lambda e: _export(e, lambda t: _cut(t / "meta.json")),
         r"meta\.json: empty, truncated or corrupt"),
    Case("checkpoint: truncated optimizer file", "export",
         lambda e: _export(e, lambda t: _cut(next(t.glob("*optim_states.pt")))), r"optim_states\.pt: truncated or corrupt"),
    Case("export into a run dir", "export",
         lambda e: [str(e.tmp / "run" / "ckpt"), str(_user_folder(e, "run"))],
         r"run: the folder holds files this tool did not write", after=_untouched),
    Case("export into a folder of other files", "export",
         lambda e: [str(e.checkpoint), str(_user_folder(e, "folder"))],
         r"notes: the folder holds files this tool did not write", after=_untouched),
    Case("export onto a file", "export", lambda e: [str(e.checkpoint), str(_user_folder(e, "file"))],
         r"/f: a file stands there; refusing to replace it", after=_untouched),
    Case("train: export.dir is run_dir", "train", lambda e: _train(e, f"--export.dir={e.tmp}/run"),
         r"export\.dir=.*/run is run_dir=.*give it one of its own"),
    Case("train: export.dir holds other files", "train",
         lambda e: _train(e, f"--export.dir={_user_folder(e, 'folder')}"),
         r"export\.dir: .*notes: the folder holds files this tool did not write", after=_untouched),
    Case("checkpoint: missing RNG file on resume", "train",
         lambda e: _train(e, f"--checkpoint.resume={_rm(_ckpt_copy(e), 'rng_rank0.pt')}", "--steps=4"),
         r"rng_rank0\.pt is missing"),
    # -- build_corpora ------------------------------------------------------------------------------
    Case("synthesized text null", "build_corpora", lambda e: _corpora(e, [{**SYNTH_OK, "text": None}]),
         r"s\.jsonl:1: field 'text'"),
    Case("synthesized linked as a string", "build_corpora", lambda e: _corpora(e, [{**SYNTH_OK, "linked": "no"}]),
         r"s\.jsonl:1: field 'linked'.*true or false"),
    Case("synthesized round not a number", "build_corpora", lambda e: _corpora(e, [{**SYNTH_OK, "round": "x"}]),
         r"s\.jsonl:1: field 'round'"),
    Case("synthesized pairs not a list", "build_corpora", lambda e: _corpora(e, [{**SYNTH_OK, "pairs": "q a"}]),
         r"s\.jsonl:1: field 'pairs'"),
    Case("synthesized pair of the wrong shape", "build_corpora",
         lambda e: _corpora(e, [{**SYNTH_OK, "pairs": [["q"]]}]), r"s\.jsonl:1: field 'pairs\[0\]'"),
    Case("synthesized pair without a response", "build_corpora",
         lambda e: _corpora(e, [{**SYNTH_OK, "pairs": [{"instruction": "q"}]}]), r"s\.jsonl:1: field 'pairs\[0\]'"),
    Case("malformed synthesized JSONL", "build_corpora", lambda e: _corpora(e, [SYNTH_OK, "{oops"]),
         r"s\.jsonl:2: "),
    Case("empty synthesized input", "build_corpora", lambda e: _corpora(e, []),
         r"synthesized: .*no documents"),
    Case("instruction of the wrong type, skipped and counted", "build_corpora",
         lambda e: _corpora(e, [SYNTH_OK], "--skip_bad_records=true",
                            instructions=[*INSTRUCTIONS, {"question": 3, "response": []}]),
         check=lambda e, out: json.loads((e.tmp / "corpora/mixture_report.json").read_text())
         ["components"]["instructions"]["counts"]["bad_records"] == 1 or pytest.fail("not counted")),
    Case("malformed tuning pairs", "build_corpora", lambda e: _general(e, [{"context": "c", "pairs": [5]}]),
         r"tuning\.jsonl:1: field 'pairs\[0\]'"),
    Case("--workers -1 (corpora)", "build_corpora", lambda e: _corpora(e, [SYNTH_OK], "--workers=-1"), r"workers"),
    Case("corpora: output dir under a file", "build_corpora",
         lambda e: [*_corpora(e, [SYNTH_OK]), f"--output-dir={e.file('blocker', 'x')}/corpora"],
         r"output_dir: cannot write .*blocker: a file stands where a folder must be"),
    # -- build_instruction_data ---------------------------------------------------------------------
    Case("instruction record without a response", "build_instruction_data",
         lambda e: _instr(e, [*INSTRUCTIONS, {"instruction": "Name a statin."}]), r"i\.jsonl:2: field 'response'"),
    Case("instruction record without a response, skipped and counted", "build_instruction_data",
         lambda e: _instr(e, [*INSTRUCTIONS, {"instruction": "Name a statin."}], "--skip-bad-records"),
         check=lambda e, out: _instr_summary(e)["instructions"]["skipped"] == {"bad_records": 1}
         or pytest.fail("not counted")),
    Case("conversation that is not a list of turns", "build_instruction_data",
         lambda e: _instr(e, [{"messages": "hi"}]), r"i\.jsonl:1: field 'messages'"),
    Case("malformed instruction JSONL", "build_instruction_data", lambda e: _instr(e, [*INSTRUCTIONS, "{oops"]),
         r"i\.jsonl:2: "),
    Case("chat template with a tokenizer that has none", "build_instruction_data",
         lambda e: _instr(e, INSTRUCTIONS, "--template.kind=chat"), r"template\.kind=chat needs"),
    Case("template without {content}", "build_instruction_data",
         lambda e: _instr(e, INSTRUCTIONS, "--template.user=Question:"), r"template\.user must hold \{content\}"),
    # -- synthesize ---------------------------------------------------------------------------------
    Case("synthesize: lone surrogate, skipped and counted", "synthesize",
         lambda e: _synth(e, [{"id": "a", "text": "Metformin lowers glucose."}, '{"id": "b", "text": "x \\ud800"}'],
                          "--skip_bad_records=true"),
         check=_synth_counted),
    Case("synthesize: lone surrogate", "synthesize",
         lambda e: _synth(e, ['{"id": "b", "text": "x \\ud800"}']), r"r\.jsonl:1: field 'text'.*surrogate"),
    Case("synthesize: output dir under a file", "synthesize",
         lambda e: [*_synth(e, TEXTS), f"--output-dir={e.file('blocker', 'x')}/out"],
         r"output_dir: cannot write .*blocker.*Not a directory"),
    Case("train: checkpoint dir under a file", "train",
         lambda e: _train(e, f"--checkpoint.dir={e.file('blocker', 'x')}/ckpt"),
         r"checkpoint\.dir: cannot write .*blocker: a file stands where a folder must be"),
    Case("corpora: full disk", "build_corpora",
         lambda e: [*_corpora(e, [{**SYNTH_OK, "id": f"t{i}", "slot": i} for i in range(300)]),
                    f"--output-dir={_tmpfs(e, '16k', readonly=False)}/corpora"],
         r"output_dir: cannot write .*No space left", needs_mount=True),
    Case("synthesize: unwritable output", "synthesize",
         lambda e: [*_synth(e, TEXTS), f"--output-dir={_unwritable_dir(e)}/out"],
         r"output_dir: cannot write .*out", needs_mount=True),
    Case("synthesize: full disk", "synthesize",
         lambda e: [*_synth(e, [{"id": f"t{i}", "text": "Metformin lowers glucose in adults. " * 4}
                               for i in range(200)], "--batch_texts=100"),
                    f"--output-dir={_tmpfs(e, '16k', readonly=False)}/out"],
         r"cannot write .*No space left", needs_mount=True),
    Case("train: run dir under a file", "train", lambda e: _train(e, f"--run_dir={e.file('blocker', 'x')}/run"),
         r"run_dir: cannot write .*blocker"),
    Case("synthesize: malformed JSON", "synthesize", lambda e: _synth(e, ['{"id": ']), r"r\.jsonl:1: "),
    Case("synthesize: model without tokenizer", "synthesize",
         lambda e: [*_synth(e, TEXTS), f"--engine.model={e.tiny_model}"], r"engine\.model: cannot load .*tiny_model"),
    Case("synthesize: batch_texts 0", "synthesize", lambda e: _synth(e, TEXTS, "--batch_texts=0"), r"batch_texts"),
    Case("synthesize: units.plan naming a unit outside the output dir", "synthesize",
         lambda e: _synth_plan(e, "../escaped"), r"units\.plan: field 'units\[0\]\.name': '\.\./escaped' is not"),
    Case("synthesize: torn unit output, redone", "synthesize", _synth_torn, check=_synth_whole),
    Case("synthesize: input edited after its units finished", "synthesize", _synth_edited,
         r"1 finished units whose input changed since \(.*raw/r\.jsonl"),
    Case("synthesize: other settings into a finished output dir", "synthesize",
         lambda e: [*_synth_done(e, TEXTS), "--rounds=2", "--temperature=0.7"],
         r"other settings \(rounds 1 -> 2; temperature 0\.0 -> 0\.7, in r\)"),
    Case("synthesize: negative --num_tasks", "synthesize", lambda e: _synth(e, TEXTS, "--num_tasks=-5"),
         r"num_tasks must be 1 or more"),
    Case("synthesize: negative --task_index", "synthesize", lambda e: _synth(e, TEXTS, "--task_index=-1"),
         r"task_index must be 0 or more"),
    Case("synthesize: corrupt parquet input", "synthesize",
         lambda e: [*_synth(e, TEXTS), f"--inputs={e.file('raw/c.parquet', b'PAR1 not a parquet file PAR1')}"],
         r"c\.parquet: unreadable parquet"),
    Case("synthesize: Slurm array not a range", "synthesize", lambda e: _synth(e, TEXTS),
         r"Slurm array task 7 .*submit a range",
         env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"}),
    Case("synthesize: format markers in a text, escaped and counted", "synthesize",
         lambda e: _synth(e, [{"text": "Paris. </CON>\n\n<QUE> Capital of Germany? <ANS> Berlin </END>"}]),
         check=_synth_markers),
    Case("corpora: units.plan naming a unit outside the folder", "build_corpora",
         _corpora_crafted_plan, r"units\.plan: field 'units\[0\]\.name': '\.\./s' is not"),
    Case("corpora: unit file not in units.plan, counted", "build_corpora", _planned_with_stray,
         check=lambda e, out: _report(e)["synthesis"]["units_unlisted"] == 1 or pytest.fail(str(_report(e)))),
    Case("corpora: shard without stats.json, counted", "build_corpora", lambda e: _corpora(e, [SYNTH_OK]),
         check=lambda e, out: (_report(e)["synthesis"]["shards_without_stats"], _report(e)["synthesis"]["texts"])
         == (1, 1) or pytest.fail(str(_report(e)["synthesis"]))),
    Case("corpora: repeated slot and round", "build_corpora",
         lambda e: _corpora(e, [SYNTH_OK, {**SYNTH_OK, "id": "b"}]),
         r"s\.jsonl:2: field 'slot': repeats slot 0, round 0 of line 1"),
    Case("corpora: extra pair keys, counted", "build_corpora",
         lambda e: _corpora(e, [{**SYNTH_OK, "pairs": [{**SYNTH_OK["pairs"][0], "score": 0.5}]}]),
         check=lambda e, out: _report(e)["components"]["instruct"]["counts"]["dropped_pair_key:score"] == 1
         or pytest.fail(str(_report(e)["components"]["instruct"]))),
    Case("corpora: shards of two settings, named", "build_corpora", _two_settings,
         check=lambda e, out: [s["differs"] for s in _report(e)["synthesis"]["synthesizers"]]
         == [{"config.rounds": 2}, {"config.rounds": 3}] or pytest.fail(str(_report(e)["synthesis"]))),
    Case("corpora: eval_sets an empty folder", "build_corpora",
         lambda e: [*_corpora(e, [SYNTH_OK]), _eval_dir(e, {})], r"contamination\.eval_sets: .*evals holds no"),
    Case("corpora: eval_sets with no readable set", "build_corpora",
         lambda e: [*_corpora(e, [SYNTH_OK]), _eval_dir(e, {"items.csv": "q\nx\n", "README.md": "# evals\n"})],
         r"evals holds no evaluation set"),
    Case("corpora: contamination fields no item has", "build_corpora",
         lambda e: [*_corpora(e, [SYNTH_OK]), _eval_dir(e, {"a.jsonl": '{"question": "x"}\n'}),
                    "--contamination.fields=[query]"], r"a\.jsonl: no item has any of the fields \['query'\]"),
    Case("corpora: empty evaluation file, warned", "build_corpora",
         lambda e: [*_corpora(e, [SYNTH_OK]), _eval_dir(e, {"a.jsonl": ""})],
         check=lambda e, out: _report(e)["contamination"]["sets"]["a"]["items"] == 0
         or pytest.fail(str(_report(e).get("contamination")))),
    # -- evaluate ---------------------------------------------------------------------------------------
    Case("evaluate: invalid UTF-8", "evaluate",
         lambda e: ["--model", str(e.tiny_model), "--texts", e.file("h.jsonl", b'{"text": "caf\xe9"}\n')],
         r"h\.jsonl:1: .*UTF-8"),
    Case("evaluate: missing tokenizer", "evaluate",
         lambda e: ["--model", str(e.tiny_model), "--texts", e.jsonl("h.jsonl", TEXTS)],
         r"tiny_model.*tokenizer"),
    Case("evaluate: missing model", "evaluate",
         lambda e: ["--model", str(e.tmp / "no_model"), "--texts", e.jsonl("h.jsonl", TEXTS)], r"no_model"),
    Case("evaluate: empty texts file", "evaluate", lambda e: _evaluate(e, "\n \n"), r"h\.jsonl: no texts in it"),
    Case("evaluate: --limit_texts 0", "evaluate", lambda e: _evaluate(e, GOOD_TEXTS, "--limit_texts", "0"),
         r"--limit_texts must be at least 1"),
    Case("evaluate: --max_length 1", "evaluate", lambda e: _evaluate(e, GOOD_TEXTS, "--max_length", "1"),
         r"--max_length must be at least"),
    Case("evaluate: truncated model.safetensors", "evaluate", lambda e: _evaluate(e, GOOD_TEXTS, model=_torn_weights(e)),
         r"torn: cannot load the model"),
    Case("evaluate: --output is a folder", "evaluate",
         lambda e: _evaluate(e, GOOD_TEXTS, "--output", str(Path(e.file("o/x", "")).parent)),
         r"/o: a folder stands where the output must be"),
    Case("evaluate: --output under a file", "evaluate",
         lambda e: _evaluate(e, GOOD_TEXTS, "--output", e.file("blocker", "x") + "/e.json"),
         r"cannot write under .*blocker: a file stands where a folder must be"),
    Case("suite: !function in a task YAML", "suite",
         lambda e: _suite(e, lambda s: _append(s / "sky.yaml", "process_docs: !function utils.docs\n")),
         r"sky\.yaml:\d+: '!function utils\.docs' runs Python .*--trust-task-code"),
    Case("suite: utils.py in the folder", "suite",
         lambda e: _suite(e, lambda s: (s / "utils.py").write_text("x = 1\n")), r"utils\.py: Python in the task folder"),
    Case("suite: a Jinja template", "suite",
         lambda e: _suite(e, lambda s: (s / "sky.yaml").write_text(
             (s / "sky.yaml").read_text().replace("doc_to_text: query", "doc_to_text: '{{query}}'"))),
         r"sky\.yaml: outside the plain task format: doc_to_text"),
    Case("suite: two YAMLs of one task name", "suite",
         lambda e: _suite(e, lambda s: shutil.copyfile(s / "sky.yaml", s / "sky2.yaml")),
         r"sky2\.yaml: task 'ipt_sky' is also defined in .*sky\.yaml"),
    Case("suite: missing item file", "suite", lambda e: _suite(e, lambda s: (s / "sky.jsonl").unlink()),
         r"sky\.yaml: item file .*sky\.jsonl does not exist"),
    Case("suite: empty item file", "suite", lambda e: _suite(e, lambda s: (s / "sky.jsonl").write_text("")),
         r"sky\.jsonl: no items"),
    Case("suite: gold index out of range", "suite",
         lambda e: _suite(e, lambda s: (s / "sky.jsonl").write_text(json.dumps({**SUITE_ITEMS[0], "gold": 2}))),
         r"sky\.jsonl:1: field 'gold': 2 is not an index"),
    Case("suite: item without choices", "suite",
         lambda e: _suite(e, lambda s: (s / "sky.jsonl").write_text('{"query": "q", "gold": 0}\n')),
         r"sky\.jsonl:1: field 'choices'"),
    Case("suite: malformed item JSON", "suite", lambda e: _suite(e, lambda s: (s / "sky.jsonl").write_text("{oops\n")),
         r"sky\.jsonl:1: malformed JSON"),
    Case("suite: model dir without config.json", "suite", lambda e: _suite(e, model=str(e.tmp)),
         r"not a Hugging Face model directory \(no config\.json\)"),
    Case("suite: model path with trust_remote_code pasted in", "suite",
         lambda e: _suite(e, model=f"{e.synthesizer},trust_remote_code=True"),
         r"trust_remote_code=True: no such model directory"),
    Case("suite: --output is a folder", "suite",
         lambda e: _suite(e, lambda s: None, "--output", str(Path(e.file("o/x", "")).parent)),
         r"/o: a folder stands where the output must be"),
    Case("suite: a quoted task name is read as YAML", "suite",
         lambda e: _suite(e, lambda s: (s / "sky.yaml").write_text(
             (s / "sky.yaml").read_text().replace("task: ipt_sky", 'task: "ipt_sky"'))),
         check=lambda e, out: json.loads(out)["ipt_sky"]["n"] == 1 or pytest.fail(out)),
    Case("build_synthesizer_data: output prefix under a file", "build_synthesizer_data",
         lambda e: ["--input", e.jsonl("t.jsonl", [{"context": "c", "pairs": [{"instruction": "i", "response": "r"}]}]),
                    "--output-prefix", e.file("blocker", "x") + "/o", "--tokenizer", "mistral"],
         r"cannot write under .*blocker: a file stands where a folder must be"),
    Case("evaluate: malformed tasks file", "evaluate",
         lambda e: ["--model", str(e.tiny_model), "--tasks", e.jsonl("t.jsonl", [{"context": "c", "pairs": "x"}])],
         r"t\.jsonl:1: field 'pairs'"),
    # -- eval_paper (every task file is checked before the model loads) ---------------------------------
    Case("eval_paper: missing task file", "eval_paper", lambda e: _paper(e, {}), r"FPB/test\.json: file not found"),
    Case("eval_paper: row without gold_index", "eval_paper",
         lambda e: _paper(e, {"FPB/test.json": [{"input": "x", "options": ["a", "b", "c"]}]}),
         r"FPB/test\.json line 1: field 'gold_index'"),
    Case("eval_paper: wrong option count", "eval_paper",
         lambda e: _paper(e, {"FPB/test.json": [{"input": "x", "options": ["a", "b"], "gold_index": 0}]}),
         r"FPB/test\.json line 1: field 'options': 2 options, FPB has 3"),
    Case("eval_paper: generation row without label", "eval_paper",
         lambda e: _paper(e, {"NER/test.json": [{"input": "x", "answer": "y"}]}), r"NER/test\.json line 1: field 'label'"),
]


SUITE_ITEMS = [{"id": "q", "query": "The sky is", "choices": [" blue", " green"], "gold": 0}]


def _suite(env: Env, edit: Callable[[Path], None] = lambda suite: None, *extra: str, model: str = "") -> list[str]:
    """A plain suite of one task (edited by ``edit``) scored on the tiny synthesizer model."""
    from megatron_ipt.eval.suite import write_suite

    suite = env.tmp / "suite"
    write_suite({"sky": SUITE_ITEMS}, suite)
    edit(suite)
    return ["--model", model or str(env.synthesizer), "--suite", str(suite), "--device", "cpu", *extra]


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def _evaluate(env: Env, texts: str, *extra: str, model: str = "") -> list[str]:
    return ["--model", model or str(env.synthesizer), "--texts", env.file("h.jsonl", texts), "--fp32", *extra]


def _torn_weights(env: Env) -> str:
    model = env.tmp / "torn"
    shutil.copytree(env.synthesizer, model)
    _cut(model / "model.safetensors")
    return str(model)


GOOD_TEXTS = "".join(json.dumps(t) + "\n" for t in TEXTS)


def _paper(env: Env, files: dict[str, list]) -> list[str]:
    """The finance suite over the test fixtures with ``files`` replaced (an empty dict: no files)."""
    data = env.tmp / "tasks"
    data.mkdir()
    if files:
        shutil.copytree(ROOT / "tests" / "eval" / "paper_fixtures", data, dirs_exist_ok=True)
    for rel, rows in files.items():
        env.jsonl(f"tasks/{rel}", rows)
    return ["--suite", "finance", "--data-dir", str(data), "--model", str(env.synthesizer), "--output",
            str(env.tmp / "scores.json")]


def _rm(tag: Path, name: str) -> Path:
    (tag / name).unlink()
    return tag


@pytest.fixture(scope="module")
def shared(tmp_path_factory, save_tiny_llama) -> dict:
    """A good dataset, a real 1-rank ZeRO-1 checkpoint and a tiny HF model (no tokenizer files)."""
    from megatron_ipt.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("table")
    (root / "good.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TEXTS * 20))
    prefix = preprocess(root / "good.jsonl", root / "good", "mistral", workers=0, prepend_bos=True,
                        append_eod=True, dataset_suffix=False, progress=False)["prefix"]
    run = root / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_ipt.train", "--config", "configs/tiny.yaml", f"--data.train={prefix}",
         f"--run_dir={run}", f"--checkpoint.dir={run}/ckpt", "--logging.tensorboard=false", "--data.seq_len=64",
         "--micro_batch_size=2", "--global_batch_size=2", "--steps=2", "--ds_config=ds_configs/zero1.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from megatron_ipt.train.export import save_tokenizer

    synthesizer = save_tiny_llama(root / "synthesizer")
    save_tokenizer("mistral", synthesizer)
    return {"text_prefix": prefix, "checkpoint": run / "ckpt", "tiny_model": save_tiny_llama(root / "tiny_model"),
            "synthesizer": synthesizer}


class _Hang(Exception):
    pass


def run_in_process(module: str, argv: list[str]) -> tuple[int, str, str]:
    import importlib

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM)}

    def hang(signum, frame):
        raise _Hang(f"{module} {argv} ran past {TIMEOUT_S}s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(TIMEOUT_S)
    # The package's log handler may be bound to a stream of an earlier test (pytest's capture): point
    # it at this call's stderr, as a fresh process would have it.
    handlers = [h for h in logging.getLogger("megatron_ipt").handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    for h in handlers:
        h.stream = err  # not setStream: it would flush a stream pytest may have closed
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.alarm(0)
        for s, h in saved.items():
            signal.signal(s, h)
        for h, stream in zip(handlers, streams, strict=True):
            h.stream = stream
    return int(code or 0), out.getvalue(), err.getvalue()


def run_subprocess(module: str, argv: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return proc.returncode, proc.stdout, proc.stderr


def test_the_table_is_large_and_names_are_distinct() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, shared: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path, **shared)
    for name, value in (case.env or {}).items():
        monkeypatch.setenv(name, value)
    mnt = tmp_path / "mnt"
    try:
        try:
            argv = case.build(env)
        except subprocess.CalledProcessError as err:
            pytest.skip(f"cannot mount a small tmpfs here ({err.stderr.strip()})")
        runner = run_subprocess if case.subprocess else run_in_process
        code, stdout, stderr = runner(TOOLS[case.tool], argv)
    finally:
        if case.needs_mount and os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=True)
    assert "Traceback" not in stderr, stderr[-3000:]
    if case.error is None:
        assert code == 0, stderr[-3000:]
        if case.check is not None:
            case.check(env, stdout)
        return
    assert code == case.exit, f"exit {code}\n{stderr[-3000:]}"
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, stderr[-3000:]
    assert __import__("re").search(case.error, errors[0]), errors[0]
    if case.after is not None:
        case.after(env)
