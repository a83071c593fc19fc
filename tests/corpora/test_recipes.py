"""The general and domain recipes end to end: documents → indexed datasets → a blend the trainer reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from megatron_ipt.config import ConfigError, load_config
from megatron_ipt.corpora.recipes import CorporaConfig, build_corpora
from megatron_ipt.data.blend import Blend
from megatron_ipt.data.indexed import IndexedDataset

REPO = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def synthesized(tmp_path: Path) -> Path:
    recs = []
    for i in range(6):
        pairs = [{"instruction": f"What does protein {i} bind?", "response": f"Receptor {i}."}] if i != 2 else []
        recs.append({"id": f"d{i}", "text": f"Protein {i} binds receptor {i} in liver cells.", "pairs": pairs,
                     "round": i // 3, "slot": i % 3, "linked": i >= 3 and i != 5})
    return write_jsonl(tmp_path / "synth" / "s0.jsonl", recs)


def test_domain_recipe(tmp_path, mistral_tokenizer):
    synthesized(tmp_path)
    prov = {"synthesizer": {"path": "runs/synth/hf", "hash": "ab12", "weights": []},
            "tokenizer": mistral_tokenizer.fingerprint(), "config": {"rounds": 2}}
    (tmp_path / "synth" / "s0.stats.json").write_text(json.dumps({"texts": 6, "pairs": 5, "texts_without_pairs": 1,
                                                                  "degenerate_outputs": 2, "texts_truncated": 0,
                                                                  "parse": {"malformed_pieces": 3},
                                                                  "provenance": prov}))
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"question": f"Name color {i}.", "response": f"Color {i} is blue."}
                                                   for i in range(4)])
    cfg = CorporaConfig(recipe="domain", synthesized=[str(tmp_path / "synth")], instructions=[str(instr)],
                        output_dir=str(tmp_path / "out"), tokenizer="mistral", workers=0, progress=False)
    report = build_corpora(cfg)
    comps = report["components"]
    assert report["synthesis"]["shards"] == 1 and report["synthesis"]["degenerate_outputs"] == 2
    assert report["synthesis"]["pairs_per_text"] == round(5 / 6, 3) and report["synthesis"]["malformed_pieces"] == 3
    # Chains: d0-d3, d1-d4, d2 (no pairs; d5 not linked), d5.
    assert comps["instruct"]["documents"] == 4 and comps["instructions"]["documents"] == 4
    assert sum(comps["instruct"]["templates"].values()) == 4 and "raw" in comps["instruct"]["templates"]
    tok = mistral_tokenizer
    for name in ("instruct", "instructions"):
        ds = IndexedDataset(comps[name]["prefix"])
        assert len(ds) == comps[name]["documents"]
        assert int(ds.sizes.sum()) == comps[name]["tokens"]
        for i in range(len(ds)):
            ids = ds.get(i).tolist()
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.bos_id not in ids[1:]
    first = IndexedDataset(comps["instructions"]["prefix"]).get(0).tolist()
    assert first[1:-1] == tok.encode("Name color 0. Color 0 is blue.")  # {question} {response}, no template
    # 1:1 by tokens: the small instruction set is weighted up to the domain documents' token count.
    assert [w for w, _ in report["blend"]] == [0.5, 0.5]
    assert comps["instructions"]["repeat"] > 1
    blend_file = tmp_path / "out" / "blend.yaml"
    assert yaml.safe_load(blend_file.read_text())["data"]["train"] == [
        {"weight": w, "prefix": p} for w, p in report["blend"]]
    assert list(Blend.load(blend_file)) == [tuple(b) for b in report["blend"]]
    md = (tmp_path / "out" / "mixture_report.md").read_text()
    assert "instruct" in md and "synthesizer runs/synth/hf (hash ab12): 1 shard(s)" in md
    # Provenance: the synthesizer that wrote the shards, and the tokenizer, travel with the corpora.
    assert report["synthesis"]["synthesizers"] == [{**prov, "shards": 1}]
    record = {**mistral_tokenizer.fingerprint(), "dtype": "uint16"}
    assert report["tokenizer_fingerprint"] == record
    for name in ("instruct", "instructions"):
        summary = json.loads(Path(f"{comps[name]['prefix']}.summary.json").read_text())
        assert summary["tokenizer_fingerprint"] == record
    blend_text = blend_file.read_text()
    assert yaml.safe_load(blend_text)["data"]["tokenizer"] == "mistral"
    assert f"hash {mistral_tokenizer.vocab_hash}" in blend_text.splitlines()[1]

    # The trainer's config accepts the blend file as an include.
    from megatron_ipt.train.config import TrainConfig

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"include": [str(REPO / "configs" / "tiny.yaml"), str(blend_file)]}))
    train_cfg = load_config(TrainConfig, run)
    blend = Blend.parse(train_cfg.data.train, "data.train").check_exists()
    assert list(blend) == [tuple(b) for b in report["blend"]]
    assert train_cfg.data.tokenizer == "mistral"  # training with the corpora's own tokenizer


def test_general_recipe(tmp_path):
    shard = synthesized(tmp_path)
    raw = write_jsonl(tmp_path / "raw" / "r.jsonl", [{"id": f"d{i}", "text": f"Raw text {i} about heart."}
                                                     for i in range(10)])
    tuning = write_jsonl(tmp_path / "tuning.jsonl", [{"context": "Ctx.", "pairs": [{"instruction": "Q?",
                                                                                    "response": "A."}]}])
    cfg = CorporaConfig(recipe="general", synthesized=str(shard), raw=[str(raw)], tuning=[str(tuning)],
                        output_dir=str(tmp_path / "out"), tokenizer="mistral", workers=0, progress=False)
    cfg.validate()
    report = build_corpora(cfg)
    comps = report["components"]
    assert comps["raw"]["documents"] == 4 and comps["raw"]["counts"]["excluded_converted"] == 6
    w = dict(zip(comps, [c["weight"] for c in comps.values()], strict=True))
    ratio = (w["tuning"] / comps["tuning"]["tokens"]) / (w["raw"] / comps["raw"]["tokens"])
    assert ratio == pytest.approx(4.0, rel=1e-3)  # tuning data weighted 4x its size
    assert comps["tuning"]["repeat"] == pytest.approx(4 * comps["raw"]["repeat"], rel=1e-3)


def test_recipe_validation():
    with pytest.raises(ConfigError, match="recipe"):
        CorporaConfig(recipe="other", synthesized=["x"], output_dir="o").validate()
    with pytest.raises(ConfigError, match="needs instructions"):
        CorporaConfig(recipe="domain", synthesized=["x"], output_dir="o").validate()
    with pytest.raises(ConfigError, match="raw is not part of the domain recipe"):
        CorporaConfig(recipe="domain", synthesized=["x"], raw=["r"], instructions=["i"], output_dir="o").validate()


def test_quality_gate_counted_in_the_report_and_switchable(tmp_path):
    shard = synthesized(tmp_path)
    bad = {"id": "d9", "text": "Protein 9 binds nothing.", "round": 0, "slot": 9, "linked": False,
           "pairs": [{"instruction": "Which?\nOptions:\n- Heart\n- Liver", "response": "Kidney"},
                     {"instruction": "Why?\nLet's think step by step.", "response": "Let's think step by step."},
                     {"instruction": "What does protein 1 bind?", "response": "Receptor 9."},
                     {"instruction": "What does protein 0 bind?", "response": "receptor 0"}]}
    with open(shard, "a") as fh:
        fh.write(json.dumps(bad) + "\n")
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"question": "Name a color.", "response": "Blue."}])
    base = dict(recipe="domain", synthesized=[str(shard)], instructions=[str(instr)], tokenizer="mistral",
                workers=0, progress=False)
    report = build_corpora(CorporaConfig(**base, output_dir=str(tmp_path / "on")))
    q = report["components"]["instruct"]["quality"]
    # d9 asks d1's question with its own answer: kept (a question is bound to its text); it repeats
    # d0's very pair (normalized): boilerplate, dropped.
    assert q["pairs_checked"] == 9 and q["pairs_dropped"] == 3 and q["dropped"] == {
        "mc_answer_not_in_options": 1, "cot_without_final_answer": 1, "duplicate_in_corpus": 1}
    assert q["pairs_kept"] == 6 and q["distinct_questions"] == 5
    assert q["top_questions"][0] == {"question": "What does protein 1 bind?", "pairs": 2, "share": round(2 / 6, 4)}
    md = (tmp_path / "on" / "mixture_report.md").read_text()
    assert "3 of 9 pairs dropped" in md and "| What does protein 1 bind? | 2 | 33.3% |" in md
    cfg = load_config(CorporaConfig, None, [f"--{k}={v if isinstance(v, str) else json.dumps(v)}"
                                            for k, v in base.items()]
                      + [f"--output_dir={tmp_path / 'off'}", "--quality.mc_answer=false"])
    q = build_corpora(cfg)["components"]["instruct"]["quality"]
    assert q["pairs_dropped"] == 2 and "mc_answer_not_in_options" not in q["dropped"]


@pytest.mark.slow
def test_build_corpora_killed_at_random_commit_points_then_identical_output(tmp_path, fault_injector):
    """data_tools.build_corpora SIGKILLed at seeded random commit points three times; the rerun writes
    the same documents, datasets, blend and report as an uninterrupted run."""
    import random

    synthesized(tmp_path)
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"instruction": f"Name color {i}.", "input": f"Hint {i}.",
                                                    "output": f"Color {i} is blue."} for i in range(30)])
    faults = fault_injector("build_corpora")
    clean = tmp_path / "clean"
    cfg = CorporaConfig(recipe="domain", synthesized=[str(tmp_path / "synth")], instructions=[str(instr)],
                        output_dir=str(clean), tokenizer="mistral", workers=0, progress=False)
    points = faults.count_points(build_corpora, cfg)
    assert points >= 8
    killed = tmp_path / "killed"
    args = ["--recipe=domain", f"--synthesized={tmp_path / 'synth'}", f"--instructions={instr}", "--tokenizer=mistral",
            f"--output-dir={killed}", "--workers=0", "--progress=false"]
    pick = random.Random(11)
    for _ in range(3):
        assert faults.run("data_tools.build_corpora", args, at=pick.randint(1, points))[0] == -9
        assert not (killed / "mixture_report.md").exists() or (killed / "mixture_report.json").exists()
    faults.run("data_tools.build_corpora", args)
    faults.done()

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes().replace(str(root).encode(), b"OUT")
                for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".summary.json")}

    assert files(killed) == files(clean)
    timing = ("prefix", "inputs", "elapsed_s", "docs_per_s", "tokens_per_s", "resumed_documents", "fingerprint")
    for summary in clean.rglob("*.summary.json"):
        a = json.loads(summary.read_text())
        b = json.loads((killed / summary.relative_to(clean)).read_text())
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def _unit(folder: Path, name: str, records: list[dict], prov: dict | None) -> dict:
    """A finished unit as data_tools.synthesize writes it: the output, and stats with its completion record."""
    import hashlib

    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    (folder / f"{name}.jsonl").write_bytes(data)
    stats = {"texts": len(records), "pairs": sum(len(r["pairs"]) for r in records), "texts_without_pairs": 0,
             "degenerate_outputs": 0, "texts_truncated": 0, "output": {"bytes": len(data),
                                                                        "sha256": hashlib.sha256(data).hexdigest()}}
    (folder / f"{name}.stats.json").write_text(json.dumps(stats | ({"provenance": prov} if prov else {})))
    return {"file": "corpus.jsonl", "start": 0, "stop": len(records), "name": name}


def _records(first: int, n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": f"Protein {i} binds receptor {i}.", "round": 0, "slot": i - first, "linked": False,
             "pairs": [{"instruction": f"What does protein {i} bind?", "response": f"Receptor {i}."}]}
            for i in range(first, first + n)]


def test_unlisted_and_stat_less_shards_are_counted(tmp_path, caplog):
    """A unit file the plan does not list (copied in from another run) is left out, warned about and
    counted; a shard without stats is counted from its records, as an unknown synthesizer."""
    folder = tmp_path / "synth"
    folder.mkdir()
    prov = {"synthesizer": {"path": "runs/synth/hf", "hash": "ab12", "weights": []}, "config": {"rounds": 2}}
    units = [_unit(folder, "c.00000", _records(0, 2), prov),
             {"file": "corpus.jsonl", "start": 2, "stop": 4, "name": "c.00001"}]  # planned, not synthesized yet
    (folder / "units.plan").write_text(json.dumps({"spec": {}, "files": [], "units": units}))
    write_jsonl(folder / "copied.jsonl", _records(50, 3))
    loose = write_jsonl(tmp_path / "loose" / "extra.jsonl", _records(90, 4))
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"question": "Name a color.", "response": "Blue."}])
    cfg = CorporaConfig(recipe="domain", synthesized=[str(folder), str(loose)], instructions=[str(instr)],
                        output_dir=str(tmp_path / "out"), tokenizer="mistral", workers=0, progress=False)
    report = build_corpora(cfg)
    syn = report["synthesis"]
    assert (syn["units_unlisted"], syn["units_unfinished"], syn["shards_without_stats"]) == (1, 1, 1)
    assert syn["shards"] == 2 and syn["texts"] == 2 + 4 and syn["pairs"] == 6
    assert [s["shards"] for s in syn["synthesizers"]] == [1, 1] and syn["synthesizers"][1]["synthesizer"] is None
    counts = report["components"]["instruct"]["counts"]
    assert counts["units_unlisted"] == 1 and counts["units_unfinished"] == 1
    assert report["components"]["instruct"]["documents"] == 2 + 4  # copied.jsonl's texts are not in the corpus
    assert "copied.jsonl" in caplog.text and "extra.jsonl" in caplog.text
    md = (tmp_path / "out" / "mixture_report.md").read_text()
    assert "units unlisted 1" in md and "shards without stats 1" in md


def test_mixed_synthesizers_say_what_differs(tmp_path, caplog):
    """Two settings of one synthesizer: the warning and the report name the differing settings."""
    folder = tmp_path / "synth"
    folder.mkdir()
    model = {"path": "runs/synth/hf", "hash": "ab12", "weights": []}
    units = [_unit(folder, "a", _records(0, 2), {"synthesizer": model, "config": {"rounds": 2, "temperature": 0.0}}),
             _unit(folder, "b", _records(10, 2), {"synthesizer": model, "config": {"rounds": 3, "temperature": 0.0}})]
    (folder / "units.plan").write_text(json.dumps({"spec": {}, "files": [], "units": units}))
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"question": "Name a color.", "response": "Blue."}])
    cfg = CorporaConfig(recipe="domain", synthesized=[str(folder)], instructions=[str(instr)],
                        output_dir=str(tmp_path / "out"), tokenizer="mistral", workers=0, progress=False)
    report = build_corpora(cfg)
    assert "2 different synthesizers or settings, differing in config.rounds (see" in caplog.text
    assert [s["differs"] for s in report["synthesis"]["synthesizers"]] == [{"config.rounds": 2}, {"config.rounds": 3}]
    md = (tmp_path / "out" / "mixture_report.md").read_text()
    assert "(hash ab12), rounds=2: 1 shard(s)" in md and "(hash ab12), rounds=3: 1 shard(s)" in md
