"""The sharded, resumable runner on a tiny random model with Mistral's real tokenizer."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pytest

from megatron_ipt.data.readers import DataError
from megatron_ipt.synth.engine_hf import HFEngine
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.synthesize import (
    SynthesizeConfig,
    read_texts,
    selected,
    synthesize,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, save_tiny_llama):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def engine(tiny_dir, mistral_tokenizer):
    return HFEngine(EngineConfig(model=str(tiny_dir), batch_size=4), tokenizer=mistral_tokenizer)


def write_corpus(path, n, start=0):
    with open(path, "w") as fh:
        for i in range(start, start + n):
            fh.write(json.dumps({"id": f"d{i}", "text": f"Document {i}: the protein binds receptor {i % 7}."}) + "\n")


def make_cfg(tmp_path, tiny_dir, out, **kw):
    base = dict(inputs=[str(tmp_path / "in")], output_dir=str(out), rounds=2, max_new_tokens=8,
                temperature=0.8, n=2, batch_texts=3, progress=False)
    base.update(kw)
    cfg = SynthesizeConfig(**base)
    cfg.engine.model, cfg.engine.tokenizer = str(tiny_dir), "mistral"
    return cfg


KILLER = textwrap.dedent("""
    import os, signal, sys
    from megatron_ipt.synth.engine_hf import HFEngine
    from megatron_ipt.synth.engines import EngineConfig
    from megatron_ipt.synth.synthesize import SynthesizeConfig, synthesize
    cfg = SynthesizeConfig(**{k: v for k, v in %(cfg)r.items() if k != "engine"})
    cfg.engine = EngineConfig(**%(cfg)r["engine"])
    real = HFEngine(EngineConfig(model=cfg.engine.model, tokenizer="mistral", batch_size=4))

    class KilledOnThirdBatch:
        tokenizer, max_model_len, calls = real.tokenizer, real.max_model_len, 0
        def generate(self, prompts, params, show_progress=False):
            self.calls += 1
            if self.calls == 3:  # the third batch is in flight: die without any cleanup
                os.kill(os.getpid(), signal.SIGKILL)
            return real.generate(prompts, params)

    synthesize(cfg, KilledOnThirdBatch())
""")


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_dir, engine):
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 11)
    whole = make_cfg(tmp_path, tiny_dir, tmp_path / "whole")
    synthesize(whole, engine)

    killed = make_cfg(tmp_path, tiny_dir, tmp_path / "killed")
    import dataclasses

    script = KILLER % {"cfg": dataclasses.asdict(killed)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    partial = tmp_path / "killed" / ".s0.partial.jsonl"
    assert not (tmp_path / "killed" / "s0.jsonl").exists()
    assert len(partial.read_text().splitlines()) == 3  # header + the two finished batches
    with open(partial, "a") as fh:
        fh.write('{"round": 0, "batch": 2, "entries": [{"id": "d6", "te')  # a torn write, too

    stats = synthesize(killed, engine)[str(tmp_path / "in" / "s0.jsonl")]
    assert stats["resumed_texts"] == 6
    assert (tmp_path / "killed" / "s0.jsonl").read_bytes() == (tmp_path / "whole" / "s0.jsonl").read_bytes()
    assert not partial.exists()
    records = [json.loads(x) for x in (tmp_path / "whole" / "s0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"d{i}" for i in range(11)]
    assert [r["round"] for r in records] == [0] * 6 + [1] * 5
    # The random model never writes </END>: every output is unfinished, no pair, and the run completes.
    assert stats["texts"] == 11 and stats["pairs"] == 0 and stats["parse"]["unfinished_outputs"] == 22
    assert stats["output_tokens"] == 11 * 2 * 8 and stats["finish_reasons"] == {"length": 22}
    assert stats["prompt_tokens"] > 11 * 10


def test_finished_shards_are_skipped_and_slurm_array_split(tmp_path, tiny_dir, engine, monkeypatch):
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_corpus(tmp_path / "in" / f"s{k}.jsonl", 2, start=10 * k)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    cfg = make_cfg(tmp_path, tiny_dir, tmp_path / "out", temperature=0.0, n=1)
    assert list(synthesize(cfg, engine)) == [str(tmp_path / "in" / "s1.jsonl")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1.jsonl", "s1.stats.json"]
    before = (tmp_path / "out" / "s1.jsonl").stat().st_mtime_ns
    again = synthesize(cfg, engine=None)  # nothing to do: no engine is even loaded
    assert again[str(tmp_path / "in" / "s1.jsonl")]["texts"] == 2
    assert (tmp_path / "out" / "s1.jsonl").stat().st_mtime_ns == before
    cfg.shard_index, cfg.num_shards = 0, 2
    assert sorted(synthesize(cfg, engine)) == [str(tmp_path / "in" / f"s{k}.jsonl") for k in (0, 2)]


def test_bad_input_is_counted_or_named(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "   "}\n{"id": "a", "text": "again"}\n')
        fh.write(b'{"id": "c", "text": "caf\xe9 latin-1"}\n\n{"text": "no id"}\n{"id": "d", "txt": "x"}\n')
        fh.write(b'{"id": "e", "text": "trunc\n')
    cfg = SynthesizeConfig(inputs=[str(path)], output_dir="x")
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
    cfg = SynthesizeConfig(inputs=[str(tmp_path)], output_dir="x", fraction=0.2)
    from collections import Counter

    stats: Counter = Counter()
    kept = read_texts(tmp_path / "p.parquet", cfg, stats)
    assert 25 <= len(kept) <= 55 and stats["not_selected"] == 200 - len(kept)
    assert [i for i, _ in kept] == [i for i in ids if selected(i, 0.2)]
