"""The one reader layer: every format, folders, globs, saved datasets, line ranges, and errors
that name file, line and field."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from megatron_ipt.data.inputs import DataError, FileFault, InputFile, expand_inputs, input_stem
from megatron_ipt.data.readers import iter_records, read_jsonl_lines, read_records, scan_records

RECORDS = [{"id": f"r{i}", "text": f"text {i}"} for i in range(7)]


def jsonl_bytes(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.json", "a.ndjson.zst"])
def test_every_jsonl_compression(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, jsonl_bytes(RECORDS[:3]) + b"\n" + jsonl_bytes(RECORDS[3:]))
    got = list(iter_records(path))
    assert [r for r, _ in got] == RECORDS
    # line numbers count the blank line 4
    assert [w for _, w in got] == [f"{path}:{n}" for n in (1, 2, 3, 5, 6, 7, 8)]
    assert input_stem(path) == "a"


def test_multi_frame_zstd_and_truncated_zstd(tmp_path: Path) -> None:
    c = zstandard.ZstdCompressor()
    path = tmp_path / "two.jsonl.zst"
    path.write_bytes(c.compress(jsonl_bytes(RECORDS[:2])) + c.compress(jsonl_bytes(RECORDS[2:])))
    assert [r for r, _ in iter_records(path)] == RECORDS
    whole = c.compress(jsonl_bytes(RECORDS * 50))
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(whole[: len(whole) // 2])  # zstandard's own stream reader ends silently here
    with pytest.raises(FileFault, match=rf"{cut}:\d+: corrupt or truncated zstd") as err:
        list(iter_records(cut))
    assert err.value.reason == "truncated_zstd" and isinstance(err.value, DataError)


def test_truncated_gzip_names_the_line(tmp_path: Path) -> None:
    data = gzip.compress(jsonl_bytes(RECORDS * 200))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{cut}:\d+: corrupt or truncated gzip"):
        list(iter_records(cut))


def test_parquet_and_saved_dataset(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p.parquet")
    got = list(iter_records(tmp_path / "p.parquet"))
    assert [r for r, _ in got] == RECORDS and got[2][1] == f"{tmp_path / 'p.parquet'}:3"
    assert [r for r, _ in iter_records(tmp_path / "p.parquet", columns=["text"])][0] == {"text": "text 0"}
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(saved))
    [f] = expand_inputs(saved)
    assert f == InputFile(saved, "hf_dataset")
    assert [r for r, _ in iter_records(saved)] == RECORDS
    assert [r["id"] for _, r, _ in scan_records(f, 2, 4)] == ["r2", "r3"]


def test_folders_globs_and_order(tmp_path: Path) -> None:
    import datasets

    write(tmp_path / "d" / "b.jsonl", jsonl_bytes(RECORDS[:1]))
    write(tmp_path / "d" / "sub" / "a.jsonl.zst", jsonl_bytes(RECORDS[1:2]))
    write(tmp_path / "d" / "notes.txt", b"not an input")
    datasets.Dataset.from_list(RECORDS[2:3]).save_to_disk(str(tmp_path / "d" / "hf"))  # holds state.json
    z = write(tmp_path / "z.jsonl", jsonl_bytes(RECORDS[3:4]))
    files = expand_inputs([z, tmp_path / "d"])
    assert [(f.path.relative_to(tmp_path).as_posix(), f.kind) for f in files] == [
        ("z.jsonl", "jsonl"), ("d/hf", "hf_dataset"), ("d/b.jsonl", "jsonl"), ("d/sub/a.jsonl.zst", "jsonl")]
    # a glob: sorted matches, files that are no input left out, a file named twice read once
    files = expand_inputs([str(tmp_path / "d" / "**" / "*"), str(tmp_path / "d" / "b.jsonl")])
    assert [f.path.name for f in files] == ["b.jsonl", "hf", "a.jsonl.zst"]
    assert [r["id"] for r, _ in iter_records([str(tmp_path / "d" / "*.jsonl"), z])] == ["r0", "r3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.jsonl", "missing.jsonl: no such file or directory"),
        ("nothing-*.jsonl", r"nothing-\*.jsonl: the glob matches no file"),
        ("notes.txt", "notes.txt: unknown input type"),
        ("empty_dir", "empty_dir: directory holds no .jsonl"),
    ],
)
def test_bad_specs(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=message):
        expand_inputs(str(tmp_path / spec))


def test_bad_lines_name_file_line_reason(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl.gz", b'{"text": "ok"}\n{oops\n[1, 2]\n{"text": "caf\xe9"}\n{"text": "end"}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON") as err:
        list(iter_records(path))
    assert err.value.where == f"{path}:2" and err.value.reason == "malformed_json"
    stats: Counter = Counter()
    assert [w for _, w in iter_records(path, skip_bad=True, stats=stats)] == [f"{path}:1", f"{path}:5"]
    assert stats == Counter(malformed_json=1, not_an_object=1, invalid_utf8=1)
    errors = [e for _, _, e in scan_records(path) if e is not None]
    assert [str(e) for e in errors] == [
        f"{path}:2: malformed JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:3: a JSON list, expected an object",
        f"{path}:4: invalid UTF-8 at byte 13",
    ]


def test_error_message_names_field() -> None:
    err = DataError("missing or not a string", where="a.jsonl:3", field="text")
    assert str(err) == "a.jsonl:3: field 'text': missing or not a string"
    assert (err.where, err.field, err.detail) == ("a.jsonl:3", "text", "missing or not a string")


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz", "r.jsonl.zst"])
def test_line_ranges(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, jsonl_bytes(RECORDS))
    assert [r["id"] for r, _ in read_jsonl_lines(path, 2, 5)] == ["r2", "r3", "r4"]
    assert [w for _, w in read_jsonl_lines(path, 5)] == [f"{path}:6", f"{path}:7"]
    assert list(read_jsonl_lines(path, 7, 9)) == []
    # ranges that tile the file read every record exactly once
    tiles = [r for a in range(0, 7, 3) for r, _ in read_jsonl_lines(path, a, a + 3)]
    assert tiles == RECORDS


def test_read_records_batches_raw_lines_and_resumes(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl.zst", jsonl_bytes(RECORDS))
    batches = list(read_records(InputFile(path, "jsonl"), ["text"], start=4, batch_size=2))
    assert [[n for n, _ in b] for b in batches] == [[5, 6], [7]]
    assert json.loads(batches[0][0][1]) == RECORDS[4]


LINES = [b'{"text": "plain"}', b'{"text": "caf\xc3\xa9 \\ud83d\\ude00 \\u0000 end", "n": 123456789012345678901234567890}',
         b'{"text": "a\\ud800b"}', b'{"text": NaN}', b'\xef\xbb\xbf{"text": "bom"}', b'{"text": 1e400}',
         b'{"text": "caf\xe9"}', b'{"text": 18446744073709551616}', b'[1, 2]', b'{"text": "  "}', b'{"body": "x"}',
         b'{"segments": [{"text": "q", "loss": false}, {"special": "eos", "loss": true}]}', b'{"text": "x", "text": "y"}']


@pytest.mark.parametrize("line", LINES)
def test_orjson_fast_path_gives_the_json_paths_results(line: bytes, monkeypatch) -> None:
    """Texts, errors and messages are the same whether orjson parses the line or json does."""
    import megatron_ipt.data.readers as readers

    def outcome() -> object:
        try:
            return readers.parse_record(line, "text")
        except readers.BadRecord as err:
            return (err.reason, str(err))

    fast = outcome()
    monkeypatch.setattr(readers, "_orjson_loads", None)
    assert outcome() == fast
