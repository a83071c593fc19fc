"""Work units and the inputs they read: records counted or named, fraction selection, units over
parquet rows and unterminated lines."""

from __future__ import annotations

import gzip

import pytest

from megatron_ipt.data.inputs import DataError
from megatron_ipt.synth.config import SynthesizeConfig
from megatron_ipt.synth.units import read_texts, selected


def test_bad_input_is_counted_or_named(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "   "}\n{"id": "a", "text": "again"}\n')
        fh.write(b'{"id": "c", "text": "caf\xe9 latin-1"}\n\n{"text": "no id"}\n{"id": "d", "txt": "x"}\n')
        fh.write(b'{"id": "e", "text": "trunc\n')
    cfg = SynthesizeConfig(input=[str(path)], output_dir="x")
    from collections import Counter

    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:7: field 'text': missing"):
        read_texts(path, cfg, Counter())
    cfg.skip_bad_records = True
    stats: Counter = Counter()
    assert read_texts(path, cfg, stats) == [("a", "fine"), ("bad:6", "no id")]
    assert stats == Counter(bad_utf8=1, bad_records=2, empty_texts=1, duplicate_ids=1)


def test_parquet_input_and_fraction(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"p{i}" for i in range(200)]
    pq.write_table(pa.table({"id": ids, "text": [f"text {i}" for i in range(200)]}), tmp_path / "p.parquet")
    cfg = SynthesizeConfig(input=[str(tmp_path)], output_dir="x", fraction=0.2)
    from collections import Counter

    stats: Counter = Counter()
    kept = read_texts(tmp_path / "p.parquet", cfg, stats)
    assert 25 <= len(kept) <= 55 and stats["not_selected"] == 200 - len(kept)
    assert [i for i, _ in kept] == [i for i in ids if selected(i, 0.2)]


def test_parquet_rows_and_unterminated_lines_make_units(tmp_path):
    """Units over parquet rows (counted from metadata) and a JSON-lines file whose last line has no
    newline: every row/line lands in exactly one unit, ids by absolute line number."""
    from collections import Counter
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from megatron_ipt.data.inputs import count_lines, expand_inputs
    from megatron_ipt.synth.units import plan_units

    pq.write_table(pa.table({"id": [f"p{i}" for i in range(7)], "text": [f"text {i}" for i in range(7)]}),
                   tmp_path / "p.parquet", row_group_size=3)
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}')
    files = expand_inputs([tmp_path / "p.parquet", tmp_path / "q.jsonl"])
    assert [count_lines(f) for f in files] == [7, 4]
    units = plan_units(files, unit_texts=3)
    assert [(u.name, u.start, u.stop) for u in units] == [("p.00000", 0, 3), ("p.00001", 3, 6), ("p.00002", 6, 7),
                                                          ("q.00000", 0, 3), ("q.00001", 3, 4)]
    cfg = SynthesizeConfig(input=[str(tmp_path)], output_dir="x")
    got = [read_texts(Path(u.file), cfg, Counter(), u.start, u.stop) for u in units]
    assert got == [[("p0", "text 0"), ("p1", "text 1"), ("p2", "text 2")],
                   [("p3", "text 3"), ("p4", "text 4"), ("p5", "text 5")], [("p6", "text 6")],
                   [("q:1", "a"), ("q:3", "b")], [("q:4", "c")]]
    limited = plan_units(files, unit_texts=3, limit=2)  # the first two lines (rows) of each file
    assert [(u.name, u.start, u.stop) for u in limited] == [("p", 0, 2), ("q", 0, 2)]
