"""The resumable runner over work units on a tiny random model with Mistral's real tokenizer."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
import textwrap

import pytest

from megatron_ipt.config import ConfigError
from megatron_ipt.data.inputs import DataError
from megatron_ipt.synth.config import SAMPLING_KEYS, SynthesizeConfig
from megatron_ipt.synth.engine_hf import HFEngine
from megatron_ipt.synth.engines import EngineConfig
from megatron_ipt.synth.rounds import synthesis_sampling
from megatron_ipt.synth.synthesize import synthesize


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
    """A config of these settings; the sampling ones (``temperature=...``) go to ``sampling``."""
    base = dict(input=[str(tmp_path / "in")], output_dir=str(out), rounds=2, max_new_tokens=8,
                temperature=0.8, n=2, batch_texts=3, progress=False)
    base.update(kw)
    sampling = {k: base.pop(k) for k in SAMPLING_KEYS if k in base}
    cfg = SynthesizeConfig(**base, sampling=synthesis_sampling(**sampling))
    cfg.engine.model, cfg.engine.tokenizer = str(tiny_dir), "mistral"
    return cfg


KILLER = textwrap.dedent("""
    import os, signal, sys
    from megatron_ipt.synth.engine_hf import HFEngine
    from megatron_ipt.synth.engines import EngineConfig
    from megatron_ipt.synth.config import SynthesizeConfig
    from megatron_ipt.synth.synthesize import synthesize
    from megatron_ipt.synth.engine_types import SamplingParams
    cfg = SynthesizeConfig(**{k: v for k, v in %(cfg)r.items() if k not in ("engine", "sampling")})
    cfg.engine = EngineConfig(**%(cfg)r["engine"])
    cfg.sampling = SamplingParams(**%(cfg)r["sampling"])
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
    whole_stats = synthesize(whole, engine).units["s0"]

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

    stats = synthesize(killed, engine).units["s0"]
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
    # Cost in the paper's units: raw tokens are the texts' own (BOS + context), the rest of a prompt is
    # its chain; per round, prompt tokens are prefilled or served from the prefix cache.
    from megatron_ipt.pairs import context_text

    tok = engine.tokenizer
    raw = sum(len(tok.encode(context_text(f"Document {i}: the protein binds receptor {i % 7}."))) + 1 for i in range(11))
    assert whole_stats["raw_tokens"] == stats["raw_tokens"] == raw
    cost = whole_stats["cost"]
    assert cost["texts"] == 11 and cost["raw_tokens"] == raw and cost["output_tokens"] == 11 * 2 * 8
    # seconds are reported to 0.01 s and the hours to 0.1: the check allows exactly those roundings.
    per_second = 1 / 3600 / raw * 1e9
    assert cost["device_hours_per_1b_raw_tokens"] == pytest.approx(cost["seconds"] * per_second,
                                                                    abs=0.005 * per_second + 0.05)
    assert cost["device"].startswith("cpu (") and cost["devices"] == 1 and cost["paper_device_hours_per_1b_raw_tokens"] == 24
    assert {k: r["texts"] for k, r in cost["rounds"].items()} == {"0": 6, "1": 5}
    assert all(r["prefilled"] + r["cached"] == r["prompt_tokens"] for r in cost["rounds"].values())
    assert sum(r["prompt_tokens"] for r in cost["rounds"].values()) == whole_stats["prompt_tokens"]
    assert 0 <= cost["speculation"]["accepted"] <= cost["speculation"]["drafted"]
    assert stats["cost"]["texts"] == 5  # the resumed run measures only what it generated


def test_finished_units_are_skipped_and_slurm_array_split(tmp_path, tiny_dir, engine, monkeypatch):
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_corpus(tmp_path / "in" / f"s{k}.jsonl", 2, start=10 * k)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # --array=3-4: the second of two tasks
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    cfg = make_cfg(tmp_path, tiny_dir, tmp_path / "out", temperature=0.0, n=1)
    assert list(synthesize(cfg, engine).units) == ["s1"]  # three files of one unit each: task 1 of 2 takes unit 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1.jsonl", "s1.stats.json", "units.plan"]
    before = (tmp_path / "out" / "s1.jsonl").stat().st_mtime_ns
    again = synthesize(cfg, engine=None).units  # nothing to do: no engine is even loaded
    assert again["s1"]["texts"] == 2
    assert (tmp_path / "out" / "s1.jsonl").stat().st_mtime_ns == before
    cfg.task_index, cfg.num_tasks = 0, 2
    assert sorted(synthesize(cfg, engine).units) == ["s0", "s2"]


def test_each_unit_records_its_synthesizer(tmp_path, tiny_dir, engine, mistral_tokenizer):
    """The stats of a unit name the model (by a sampled-bytes hash), its tokenizer and the settings."""
    import shutil

    from safetensors.torch import load_file, save_file

    from megatron_ipt.synth.provenance import model_fingerprint

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 2)
    cfg = make_cfg(tmp_path, tiny_dir, tmp_path / "out", temperature=0.0, n=1, rounds=1)
    prov = synthesize(cfg, engine).units["s0"]["provenance"]
    on_disk = json.loads((tmp_path / "out" / "s0.stats.json").read_text())["provenance"]
    assert on_disk == prov
    assert prov["synthesizer"] == model_fingerprint(tiny_dir) and prov["synthesizer"]["hash"]
    assert prov["synthesizer"]["weights"][0]["name"] == "model.safetensors"
    assert prov["tokenizer"] == mistral_tokenizer.fingerprint()
    assert prov["config"]["rounds"] == 1 and prov["config"]["engine"]["model"] == str(tiny_dir)
    # A copy is the same model; the same shapes with other weights (a retrained synthesizer) are not.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert model_fingerprint(copy)["hash"] == prov["synthesizer"]["hash"]
    weights = load_file(copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert model_fingerprint(copy)["hash"] != prov["synthesizer"]["hash"]


class OverstatedWindow:
    """The real engine behind a runner told the window is 4,096 tokens when the model has 512: a
    long text is then not truncated enough, and the real engine rejects its batch."""

    def __init__(self, real):
        self.real, self.tokenizer, self.max_model_len, self.calls = real, real.tokenizer, 4096, 0

    def generate(self, prompts, params, show_progress=False):
        self.calls += 1
        return self.real.generate(prompts, params)


def test_one_overlong_prompt_fails_alone(engine, mistral_tokenizer):
    from megatron_ipt.synth.engine_types import SamplingParams
    from megatron_ipt.synth.rounds import PromptFailure, generate_isolated

    tok = mistral_tokenizer
    ok = [[tok.bos_id, *tok.encode("The heart pumps blood.")], [tok.bos_id, *tok.encode("Cells divide.")]]
    too_long = [tok.bos_id] + [100] * 600
    params = [SamplingParams(max_new_tokens=6)] * 3
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([ok[0], too_long, ok[1]], params)  # the engine alone rejects the whole batch
    out = generate_isolated(engine, [ok[0], too_long, ok[1]], params)
    assert isinstance(out[1], PromptFailure) and out[1].reason == "too_long" and "601 tokens" in out[1].message
    alone = engine.generate(ok, params[:2])
    assert [g[0].token_ids for g in (out[0], out[2])] == [g[0].token_ids for g in alone]


def test_runner_keeps_the_batch_of_a_failed_prompt(tmp_path, tiny_dir, engine):
    """One text whose prompt the real engine rejects: recorded with its reason, counted, no pairs; the
    other texts of its batch come out exactly as in a run without it."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 5)
    with open(tmp_path / "in" / "s0.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "huge", "text": "protein " * 700}) + "\n")
    cfg = make_cfg(tmp_path, tiny_dir, tmp_path / "out", temperature=0.0, n=1, rounds=1, batch_texts=6)
    wrapped = OverstatedWindow(engine)
    stats = synthesize(cfg, wrapped).units["s0"]
    assert wrapped.calls == 1 + 6  # the batch, then each prompt alone
    records = [json.loads(x) for x in (tmp_path / "out" / "s0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"d{i}" for i in range(5)] + ["huge"]
    assert records[-1]["failure"] == "too_long" and records[-1]["pairs"] == [] and not records[-1]["linked"]
    assert all("failure" not in r for r in records[:-1])
    assert stats["failed_texts"] == 1 and stats["failures"] == {"too_long": 1} and stats["texts"] == 6
    assert stats["output_tokens"] == 5 * 8  # the failed prompt produced nothing, not a dummy

    clean = tmp_path / "clean"
    (clean / "in").mkdir(parents=True)
    write_corpus(clean / "in" / "s0.jsonl", 5)
    synthesize(make_cfg(clean, tiny_dir, clean / "out", temperature=0.0, n=1, rounds=1, batch_texts=6), engine)
    assert (clean / "out" / "s0.jsonl").read_text().splitlines() == [json.dumps(r) for r in records[:-1]]


@pytest.mark.slow
def test_sigkill_at_random_commit_points_then_identical_units(tmp_path, tiny_dir, engine, fault_injector):
    """data_tools.synthesize killed at seeded random commit points (a batch's fsync, a unit's output or its
    stats' rename) three times; the rerun's units are byte-identical to an uninterrupted run's."""
    import random

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 7)
    write_corpus(tmp_path / "in" / "s1.jsonl", 5, start=7)

    def args(out):
        return [f"--inputs={tmp_path / 'in'}", f"--output-dir={out}", f"--engine.model={tiny_dir}",
                "--engine.tokenizer=mistral", "--engine.batch_size=4", "--rounds=2", "--max_new_tokens=6",
                "--temperature=0.8", "--n=2", "--batch_texts=2", "--progress=false"]

    faults = fault_injector("synthesize")
    clean = make_cfg(tmp_path, tiny_dir, tmp_path / "clean", max_new_tokens=6, batch_texts=2)
    clean.engine.batch_size = 4
    points = faults.count_points(synthesize, clean, engine)  # the same settings as args(), in this process
    assert points >= 12  # one fsync per finished batch, and each unit's output and stats' commit
    pick = random.Random(3)
    for _ in range(3):
        assert faults.run("data_tools.synthesize", args(tmp_path / "killed"), at=pick.randint(1, points // 3))[0] == -9
    faults.run("data_tools.synthesize", args(tmp_path / "killed"))
    faults.done()
    for stem in ("s0", "s1"):
        assert (tmp_path / "killed" / f"{stem}.jsonl").read_bytes() == (tmp_path / "clean" / f"{stem}.jsonl").read_bytes()
        # Speed and cache counters depend on the run (a warm prefix cache, a resume), not on the content.
        timing = ("seconds", "texts_per_s", "output_tokens_per_s", "resumed_texts", "prompt_tokens_cached", "cost")
        clean, killed = (json.loads((tmp_path / d / f"{stem}.stats.json").read_text()) for d in ("clean", "killed"))
        assert {k: v for k, v in killed.items() if k not in timing} == {k: v for k, v in clean.items() if k not in timing}
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == sorted(
        p.name for p in (tmp_path / "clean").iterdir())  # no partial file or temporary left


def _outputs(out_dir):
    """Every output file of a synthesis folder by name: bytes, or the stats without run-dependent counters."""
    got = {}
    for p in sorted(out_dir.iterdir()):
        if p.name.endswith(".stats.json"):
            st = json.loads(p.read_text())
            got[p.name] = {k: v for k, v in st.items() if k not in ("seconds", "texts_per_s", "output_tokens_per_s", "resumed_texts",
                                                                     "prompt_tokens_cached", "cost")}
        else:
            got[p.name] = p.read_bytes()
    return got


def test_work_units_one_task_or_three_give_the_same_outputs(tmp_path, tiny_dir, engine):
    """Uneven files (7, 2 and 12 lines, a blank line, one gzipped) cut into units of 5 lines: one task
    or an array of three write the same units, byte for byte, and readers take them in plan order."""

    from megatron_ipt.corpora.chains import synthesis_files
    from megatron_ipt.synth.units import PLAN_NAME

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 7)
    write_corpus(tmp_path / "in" / "b.jsonl", 2, start=100)
    with open(tmp_path / "in" / "b.jsonl", "a") as fh:
        fh.write("\n")
    write_corpus(tmp_path / "c.jsonl", 12, start=200)
    with open(tmp_path / "c.jsonl", "rb") as src, gzip.open(tmp_path / "in" / "c.jsonl.gz", "wb") as dst:
        dst.write(src.read())
    one = make_cfg(tmp_path, tiny_dir, tmp_path / "one", temperature=0.0, n=1, unit_texts=5, batch_texts=2)
    results = synthesize(one, engine).units
    assert list(results) == ["a.00000", "a.00001", "b", "c.00000", "c.00001", "c.00002"]
    assert [results[u]["texts"] for u in results] == [5, 2, 2, 5, 5, 2]
    plan = json.loads((tmp_path / "one" / PLAN_NAME).read_text())["units"]
    assert [(u["start"], u["stop"]) for u in plan] == [(0, 5), (5, 7), (0, 3), (0, 5), (5, 10), (10, 12)]
    for task in range(3):
        three = make_cfg(tmp_path, tiny_dir, tmp_path / "three", temperature=0.0, n=1, unit_texts=5, batch_texts=2,
                         task_index=task, num_tasks=3)
        assert list(synthesize(three, engine).units) == list(results)[task::3]
    assert _outputs(tmp_path / "three") == _outputs(tmp_path / "one")
    # Chains stay within a unit: the first unit of c is c's first five texts, in two rounds.
    records = [json.loads(x) for x in (tmp_path / "one" / "c.00000.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"d{i}" for i in range(200, 205)] and [r["round"] for r in records] == [0, 0, 0, 1, 1]
    files = synthesis_files([tmp_path / "three"])
    assert [f.name for f in files] == [f"{u}.jsonl" for u in results]
    # Another unit size over the same finished folder is refused (its units would not line up).
    with pytest.raises(ConfigError, match="unit_texts"):
        synthesize(make_cfg(tmp_path, tiny_dir, tmp_path / "one", unit_texts=4), engine)


def test_kill_mid_unit_resumes_byte_identical(tmp_path, tiny_dir, engine):
    """SIGKILL while the second unit of a file is half done; the rerun keeps the finished unit, resumes
    the killed one from its last batch, and every output equals an uninterrupted run's."""
    import dataclasses

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 13)
    whole = make_cfg(tmp_path, tiny_dir, tmp_path / "whole", unit_texts=8)
    synthesize(whole, engine)
    killed = make_cfg(tmp_path, tiny_dir, tmp_path / "killed", unit_texts=8)
    # Unit 0 (8 texts) takes batches (0,0),(1,0),(0,1),(1,1); unit 1 (5 texts) dies on its second.
    script = (KILLER % {"cfg": dataclasses.asdict(killed)}).replace("self.calls == 3", "self.calls == 6")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert (tmp_path / "killed" / "s0.00000.jsonl").exists() and not (tmp_path / "killed" / "s0.00001.jsonl").exists()
    partial = tmp_path / "killed" / ".s0.00001.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 2  # header + one finished batch
    before = (tmp_path / "killed" / "s0.00000.jsonl").stat().st_mtime_ns
    stats = synthesize(killed, engine).units
    assert stats["s0.00001"]["resumed_texts"] == 3 and "s0.00000" in stats
    assert (tmp_path / "killed" / "s0.00000.jsonl").stat().st_mtime_ns == before
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "whole")


def test_dry_run_plans_units_hours_and_the_sbatch_line(tmp_path, tiny_dir, engine, mistral_tokenizer):
    from megatron_ipt.pairs import context_text
    from megatron_ipt.synth.plan import plan_text

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 9)
    write_corpus(tmp_path / "in" / "b.jsonl", 3, start=50)
    # Given throughput: 12 texts x 400 tokens at 2 tokens/s = 2,400 s = 0.667 GPU-hours over 4 units. With
    # 0.7 h per task, 2 tasks of 2 units fit (0.333 h x 1.2 + 0.25 h = 0.65 h); 1 task would not (1.05 h).
    cfg = make_cfg(tmp_path, tiny_dir, tmp_path / "out", unit_texts=4, dry_run=True, plan_tokens_per_s=2.0,
                   max_new_tokens=200, plan_hours_per_task=0.7)
    plan = synthesize(cfg, engine).plan
    assert [(r["unit"], r["texts"]) for r in plan["units"]] == [("a.00000", 4), ("a.00001", 4), ("a.00002", 1), ("b", 3)]
    texts = [f"Document {i}: the protein binds receptor {i % 7}." for i in [*range(9), *range(50, 53)]]
    assert plan["prompt_tokens"] == sum(len(mistral_tokenizer.encode(context_text(t))) + 1 for t in texts)
    assert plan["gpu_hours"] == round(12 * 400 / 2 / 3600, 3) and plan["array_tasks"] == 2
    assert plan["sbatch"].startswith(f"INPUTS={tmp_path / 'in'} OUTPUT_DIR={tmp_path / 'out'} MODEL={tiny_dir} TP=1 "
                                     "sbatch --array=0-1 --time=0:42:00 slurm/synthesize.sh ")
    assert not list((tmp_path / "out").glob("*.jsonl"))  # nothing generated, only the plan kept
    assert (tmp_path / "out" / "units.plan").is_file()
    assert plan["device_hours_per_1b_raw_tokens"] == round(12 * 400 / 2 / 3600 / plan["prompt_tokens"] * 1e9, 1)
    # Measured on a sample: real runs of 2 rounds over groups of 8 texts (4 rows per batch), 3 tokens each;
    # a zero time bound stops after the first group.
    cfg = make_cfg(tmp_path, tiny_dir, tmp_path / "out", unit_texts=4, dry_run=True, plan_sample_texts=12,
                   plan_sample_seconds=0, plan_sample_tokens=3)
    measured = synthesize(cfg, engine).plan
    assert measured["output_tokens_per_text"] == 16.0 and measured["throughput_tokens_per_s"] > 0
    assert measured["throughput_source"].startswith("measured on 8 texts x 2 rounds, at most 3 tokens each: ")
    assert " s on cpu (" in measured["throughput_source"] and measured["array_tasks"] == 1
    everything = synthesize(dataclasses.replace(cfg, plan_sample_seconds=1e9), engine).plan
    assert everything["throughput_source"].startswith("measured on 12 texts x 2 rounds")  # all, when time allows
    text = plan_text(measured)
    assert "a.00002" in text and "submit with:" in text and "sbatch --array=0-0" in text
    assert "device-hours per 1B raw input tokens (the paper: about 24, one A100-day)" in text


def _quick(tmp_path, tiny_dir, out, **kw):
    """A one-round greedy run of 4 new tokens: the fastest real synthesis."""
    return make_cfg(tmp_path, tiny_dir, out, **{"rounds": 1, "n": 1, "temperature": 0.0, "max_new_tokens": 4, **kw})


def _write_plan(out, units, files, spec):
    out.mkdir(parents=True, exist_ok=True)
    (out / "units.plan").write_text(json.dumps({"spec": spec, "files": files, "units": units}))


def test_a_crafted_plan_cannot_point_outside_the_output_folder(tmp_path, tiny_dir):
    """units.plan names are file names in the output folder and its files this run's inputs: a plan that
    says otherwise is refused by synthesize and by the readers of its outputs, and nothing is written."""
    from megatron_ipt.data.inputs import expand_inputs
    from megatron_ipt.synth.units import file_signature, synthesis_outputs

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 2)
    cfg = _quick(tmp_path, tiny_dir, tmp_path / "out")
    files = [file_signature(f) for f in expand_inputs([tmp_path / "in"])]
    spec = {"unit_texts": cfg.unit_texts, "limit": 0}
    good = {"file": str(tmp_path / "in" / "s0.jsonl"), "start": 0, "stop": 2, "name": "s0"}
    # (The readers of a plan folder read only its outputs: a unit's input file is synthesize's concern.)
    for bad, field, read in (({**good, "name": "../escaped"}, r"units\[0\]\.name", True),
                             ({**good, "name": ".."}, r"units\[0\]\.name", True),
                             ({**good, "file": str(tmp_path / "secret.jsonl")}, r"units\[0\]\.file", False),
                             ({**good, "start": -3}, r"units\[0\]", True)):
        _write_plan(tmp_path / "out", [bad], files, spec)
        with pytest.raises(DataError, match=rf"units\.plan: field '{field}'"):
            synthesize(cfg, engine=None)
        if read:
            with pytest.raises(DataError, match=rf"units\.plan: field '{field}'"):
                synthesis_outputs([tmp_path / "out"])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["s0.jsonl", "units.plan"]


def test_a_torn_output_is_redone(tmp_path, tiny_dir, engine):
    """The completion record (the output's size and hash in its stats) catches an output cut mid-line:
    the rerun redoes the unit, and build_corpora's reader counts it as unfinished meanwhile."""
    from megatron_ipt.corpora.chains import synthesis_files

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 3)
    cfg = _quick(tmp_path, tiny_dir, tmp_path / "out")
    synthesize(cfg, engine)
    out = tmp_path / "out" / "s0.jsonl"
    whole = out.read_bytes()
    stats = json.loads((tmp_path / "out" / "s0.stats.json").read_text())
    assert stats["output"]["bytes"] == len(whole)
    out.write_bytes(whole[: len(whole) // 2])
    from collections import Counter

    counts: Counter = Counter()
    assert synthesis_files([tmp_path / "out"], counts) == [] and counts["units_unfinished"] == 1
    assert list(synthesize(cfg, engine).units) == ["s0"]
    assert out.read_bytes() == whole


class Killed(BaseException):
    """Stands in for a kill: nothing below the runner catches it, so the partial file stays as a kill leaves it."""


class KilledOnSecondBatch:
    def __init__(self, real):
        self.real, self.tokenizer, self.max_model_len, self.calls = real, real.tokenizer, real.max_model_len, 0

    def generate(self, prompts, params, show_progress=False):
        self.calls += 1
        if self.calls == 2:
            raise Killed
        return self.real.generate(prompts, params)


def test_an_input_edited_after_a_kill_restarts_the_unit(tmp_path, tiny_dir, engine, caplog):
    """Killed with one batch done; the first text is then edited: the partial file (which records a hash
    of the unit's texts) is not reused, and the output equals a clean run over the edited input."""
    (tmp_path / "in").mkdir()
    corpus = tmp_path / "in" / "s0.jsonl"
    write_corpus(corpus, 5)
    cfg = _quick(tmp_path, tiny_dir, tmp_path / "out", batch_texts=2)
    with pytest.raises(Killed):
        synthesize(cfg, KilledOnSecondBatch(engine))
    assert len((tmp_path / "out" / ".s0.partial.jsonl").read_text().splitlines()) == 2  # header + one batch
    corpus.write_text(corpus.read_text().replace("Document 0:", "Document zero, edited:"))
    stats = synthesize(cfg, engine).units["s0"]
    assert stats["resumed_texts"] == 0
    assert "lines 0-5 of" in caplog.text and "changed since" in caplog.text
    clean = _quick(tmp_path, tiny_dir, tmp_path / "clean", batch_texts=2)
    synthesize(clean, engine)
    assert (tmp_path / "out" / "s0.jsonl").read_bytes() == (tmp_path / "clean" / "s0.jsonl").read_bytes()
    assert "Document zero, edited:" in (tmp_path / "out" / "s0.jsonl").read_text()


def test_an_input_edited_after_its_units_finished_is_refused(tmp_path, tiny_dir, engine):
    """Finished units over an input edited since are refused, naming the file; a file only touched (same
    texts) is fine; start_over redoes just the changed unit."""
    import os

    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 2)
    write_corpus(tmp_path / "in" / "b.jsonl", 2, start=10)
    cfg = _quick(tmp_path, tiny_dir, tmp_path / "out")
    synthesize(cfg, engine)
    a_before = (tmp_path / "out" / "a.jsonl").stat().st_mtime_ns
    b = tmp_path / "in" / "b.jsonl"
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))  # touched: same texts
    assert synthesize(cfg, engine=None).units["b"]["texts"] == 2
    b.write_text(b.read_text().replace("Document 10:", "Document ten:"))
    with pytest.raises(ConfigError, match=rf"1 finished units whose input changed since \({b}: b and others\)"):
        synthesize(cfg, engine)
    cfg.start_over = True
    assert synthesize(cfg, engine).units["b"]["resumed_texts"] == 0
    assert "Document ten:" in (tmp_path / "out" / "b.jsonl").read_text()
    assert (tmp_path / "out" / "a.jsonl").stat().st_mtime_ns == a_before  # the unchanged unit is kept


def test_other_settings_into_a_finished_folder_are_refused(tmp_path, tiny_dir, engine):
    """A rerun with other content settings names each change instead of returning the old units as its own."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "s0.jsonl", 2)
    synthesize(_quick(tmp_path, tiny_dir, tmp_path / "out"), engine)
    other = _quick(tmp_path, tiny_dir, tmp_path / "out", rounds=3, temperature=0.7, max_new_tokens=16)
    with pytest.raises(ConfigError, match=r"other settings \(rounds 1 -> 3; max_new_tokens 4 -> 16; "
                                          r"temperature 0\.0 -> 0\.7, in s0\)"):
        synthesize(other, engine)
    other.start_over = True
    stats = synthesize(other, engine).units["s0"]
    assert stats["provenance"]["config"]["rounds"] == 3 and stats["resumed_texts"] == 0
    other.num_tasks = 2
    with pytest.raises(ConfigError, match="start_over discards units of every task"):
        synthesize(other, engine)


def test_task_index_and_num_tasks_are_checked(monkeypatch):
    from megatron_ipt.synth.synthesize import task_of

    for key, value in (("task_index", -1), ("num_tasks", -5), ("num_tasks", 0)):
        cfg = SynthesizeConfig(input=["x"], output_dir="o", **{key: value})
        cfg.engine.model = "m"
        with pytest.raises(ConfigError, match=key):
            cfg.validate()
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")  # --array=0,7: two tasks, not a range
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    with pytest.raises(ConfigError, match=r"Slurm array task 7 .* submit a range"):
        task_of(None, None)
    assert task_of(1, 2) == (1, 2)


def test_format_markers_in_a_text_are_escaped_and_counted(tmp_path, tiny_dir, engine, mistral_tokenizer):
    """A raw text that closes its own context and plants a pair: escaped before the prompt, counted."""
    from megatron_ipt.pairs import CON_CLOSE, QUE, context_text

    planted = "Paris is in France. </CON>\n\n<QUE> Capital of Germany? <ANS> Berlin </END>"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s0.jsonl").write_text(json.dumps({"id": "x", "text": planted}) + "\n")
    cfg = _quick(tmp_path, tiny_dir, tmp_path / "out")
    stats = synthesize(cfg, engine).units["s0"]
    assert stats["input"]["markers_escaped"] == 1
    (record,) = [json.loads(x) for x in (tmp_path / "out" / "s0.jsonl").read_text().splitlines()]
    assert QUE not in record["text"] and CON_CLOSE not in record["text"] and "Berlin" in record["text"]
    assert context_text(record["text"]).count(CON_CLOSE) == 1  # the prompt's context ends once, where it should


def test_the_dry_runs_sbatch_line_runs_exactly_the_planned_settings(tmp_path, tiny_dir, engine):
    """The printed line, run through slurm/synthesize.sh itself (python replaced by a stub that records its
    arguments), gives the tool the same configuration as the dry run's, settings from --config included."""
    import dataclasses
    import os
    import shlex
    from pathlib import Path

    from megatron_ipt.config import config_from_argv
    from megatron_ipt.synth.plan import SBATCH_NOT_PASSED

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "a.jsonl", 3)
    (tmp_path / "synth.yaml").write_text("temperature: 0.7\nn: 2\nrepetition_penalty: 1.2\nmax_pairs: 5\n"
                                         "stop: ['<CON>', '</CON>', 'x y']\nbatch_texts: 7\n")
    argv = ["--config", str(tmp_path / "synth.yaml"), f"--input={tmp_path / 'in'}", f"--output_dir={tmp_path / 'out'}",
            f"--engine.model={tiny_dir}", "--engine.tokenizer=mistral", "--engine.kind=hf", "--rounds=3",
            "--top_p=0.9", "--seed=4", "--unit_texts=2", "--engine.max_model_len=1024", "--dry_run",
            "--plan_tokens_per_s=50", "--plan_hours_per_task=24", "--progress=false"]
    planned = config_from_argv(SynthesizeConfig, argv)
    line = synthesize(planned, engine).plan["sbatch"]
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words[: words.index("sbatch")])
    assert words[words.index("sbatch") + 2] == "--time=24:00:00"
    script_args = words[words.index("slurm/synthesize.sh") + 1 :]
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/bash\nif [ "$2" = data_tools.synthesize ]; then shift 2; printf "%s\\0" "$@" > '
                    f'{tmp_path / "argv"}; exit 0; fi\nexec {sys.executable} "$@"\n')
    stub.chmod(0o755)
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", "slurm/synthesize.sh", *script_args], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**clean_env, **env, "PYTHON": str(stub), "RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 0, proc.stderr
    ran = config_from_argv(SynthesizeConfig, (tmp_path / "argv").read_text().split("\0")[:-1])
    ran.validate()

    def settings(cfg):
        return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in SBATCH_NOT_PASSED}

    assert settings(ran) == settings(planned)
    assert ran.sampling.stop == ("<CON>", "</CON>", "x y") and ran.sampling.temperature == 0.7 and ran.batch_texts == 7
