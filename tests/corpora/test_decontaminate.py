"""The contamination gate: lm-eval's normalization, exact n-gram hashing, evaluation-set reading,
and a planted benchmark item removed from the corpora and counted per evaluation set."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest

from megatron_ipt.corpora.decontaminate import (
    ContaminationConfig,
    ContaminationGate,
    NgramHasher,
    _normalized_bytes,
    eval_sources,
)
from megatron_ipt.corpora.recipes import CorporaConfig, build_corpora
from megatron_ipt.data.inputs import DataError
from megatron_ipt.pairs import Pair

# 20 words; any 13 consecutive ones are a contaminating span.
BENCH = ("Which enzyme, found in the human pancreas, breaks down starch into simple sugars during "
         "digestion of a typical meal?")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lm_eval_words(text: str) -> list[str]:
    """lm-evaluation-harness's decontamination normalization, written on str as the reference."""
    return text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)).split()


def test_normalization_follows_lm_eval():
    text = "It's  a Well-Known\tFACT, isn't it?"
    assert lm_eval_words(text) == ["its", "a", "wellknown", "fact", "isnt", "it"]
    assert _normalized_bytes(text).split() == [w.encode() for w in lm_eval_words(text)]
    assert _normalized_bytes("ÉCOLE café").split() == ["École".encode(), "café".encode()]  # only ASCII letters are lower-cased


def test_ngram_hashes_match_exact_ngrams():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 9))) for _ in range(300)]
    n = 3
    hasher = NgramHasher(n)
    hashes, owner, lengths = hasher.hashes(texts)
    assert lengths.tolist() == [len(t.split()) for t in texts]
    by_gram: dict[tuple, set[int]] = {}
    for i, t in enumerate(texts):
        for k, h in enumerate(hashes[owner == i].tolist()):
            gram = tuple(t.split()[k : k + n])  # windows come in order and never cross into another text
            by_gram.setdefault(gram, set()).add(h)
        assert (owner == i).sum() == max(len(t.split()) - n + 1, 0)
    assert all(len(hs) == 1 for hs in by_gram.values())  # the same n-gram always hashes the same
    assert len({next(iter(hs)) for hs in by_gram.values()}) == len(by_gram)  # different n-grams differently
    assert NgramHasher(n).hashes(texts)[0].tolist() == hashes.tolist()  # stable across instances


def test_gate_on_pairs_counts_per_set(tmp_path):
    words = BENCH.split()
    bench = write_jsonl(tmp_path / "evals" / "enzymes.jsonl",
                        [{"question": BENCH, "choices": ["Amylase", "Lipase"], "label": 0},
                         {"question": "Too short to match anything."}])
    other = write_jsonl(tmp_path / "evals" / "other.jsonl", [{"text": " ".join(f"x{i}" for i in range(30))}])
    gate = ContaminationGate(ContaminationConfig(eval_sets=[str(bench), str(other)]))
    planted = Pair("Answer this: " + " ".join(words[3:16]).upper().replace(",", ";"), "Amylase.")
    near = Pair(" ".join(words[3:15]), "twelve words only")  # 12 words: no 13-gram in common
    across = Pair(" ".join(words[:7]), " ".join(words[7:16]))  # the span runs from instruction into response
    assert gate.filter_texts([[near, planted, across]]) == [[near]]
    rep = gate.report()
    assert rep["removed"] == {"synthesized_pairs": 2} and rep["checked"] == {"synthesized_pairs": 3}
    assert rep["sets"]["enzymes"]["removed"] == {"synthesized_pairs": 2}
    assert rep["sets"]["enzymes"]["items"] == 2 and rep["sets"]["enzymes"]["items_shorter_than_ngram"] == 1
    assert rep["sets"]["other"]["removed"] == {}
    docs = [{"id": "a", "text": "x3 x4 x5 x6 x7 x8 x9 x10 x11 x12 x13 x14 x15 extra"}, {"id": "b", "text": "clean"}]
    assert [d["id"] for d in gate.filter_documents(docs, "instruction_records")] == ["b"]
    assert gate.report()["sets"]["other"]["removed"] == {"instruction_records": 1}


def test_eval_sources_read_task_yamls_and_folders(tmp_path):
    evals = tmp_path / "evals"
    data = write_jsonl(evals / "data" / "bench_test.jsonl", [{"question": BENCH}])
    write_jsonl(evals / "loose.jsonl", [{"question": "x"}])
    (evals / "bench.yaml").write_text(
        "task: my_bench\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/bench_test.jsonl\n"
        "output_type: multiple_choice\ndoc_to_text: !function utils.doc_to_text\n")
    sets = eval_sources([evals])
    assert [(name, files) for name, _, files in sets] == [("my_bench", [data]), ("loose", [evals / "loose.jsonl"])]
    (tmp_path / "hub.yaml").write_text("task: hub\ndataset_path: super_glue\n")
    with pytest.raises(DataError, match=r"hub.yaml: field 'dataset_path' is 'super_glue'"):
        eval_sources([tmp_path / "hub.yaml"])
    (tmp_path / "bad.jsonl").write_text('{"question": "fine"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        ContaminationGate(ContaminationConfig(eval_sets=[str(tmp_path / "bad.jsonl")]))
    with pytest.raises(DataError, match="no such evaluation set"):
        eval_sources([tmp_path / "missing"])


def test_build_corpora_removes_a_planted_benchmark_item(tmp_path):
    words = BENCH.split()
    recs = [{"id": "t0", "text": "Starch digestion starts in the mouth.", "round": 0, "slot": 0, "linked": False,
             "pairs": [{"instruction": " ".join(words[:14]), "response": "Amylase."},
                       {"instruction": "Where does digestion start?", "response": "In the mouth."}]}]
    shard = write_jsonl(tmp_path / "synth" / "s0.jsonl", recs)
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"question": BENCH, "response": "Amylase."},
                                                   {"question": "Name a color.", "response": "Blue."}])
    evals = tmp_path / "evals"
    write_jsonl(evals / "items.jsonl", [{"question": BENCH, "answer": "Amylase"}])
    (evals / "task.yaml").write_text(f"task: enzymes\ndataset_path: json\ndata_files: {evals / 'items.jsonl'}\n")
    cfg = CorporaConfig(recipe="domain", synthesized=[str(shard)], instructions=[str(instr)], tokenizer="mistral",
                        workers=0, progress=False, output_dir=str(tmp_path / "out"),
                        contamination=ContaminationConfig(eval_sets=str(evals)))
    report = build_corpora(cfg)
    con = report["contamination"]
    assert con["removed"] == {"synthesized_pairs": 1, "instruction_records": 1}
    assert con["sets"]["enzymes"]["removed"] == {"synthesized_pairs": 1, "instruction_records": 1}
    assert report["components"]["instructions"]["documents"] == 1
    corpus = "".join((tmp_path / "out" / "documents" / f).read_text() for f in ("instruct.jsonl", "instructions.jsonl"))
    assert "pancreas" not in corpus and "Where does digestion start?" in corpus and "Name a color." in corpus
    assert "| enzymes | 1 |" in (tmp_path / "out" / "mixture_report.md").read_text()


def test_benchmark_tiny_form():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "decontaminate.py"), "--tiny"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "removed 20 (set lookup: 20)" in out and out.count("pairs/s") == 2


def test_parquet_eval_set_and_selected_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": [BENCH], "note": ["unrelated words " * 10]}), tmp_path / "bench.parquet")
    planted = [Pair(BENCH, "Amylase.")]
    assert ContaminationGate(ContaminationConfig(eval_sets=[str(tmp_path / "bench.parquet")])).filter_texts([planted]) == [[]]
    only_note = ContaminationGate(ContaminationConfig(eval_sets=[str(tmp_path / "bench.parquet")], fields=["note"]))
    assert only_note.filter_texts([planted]) == [planted] and only_note.sets[0].name == "bench"


def test_general_recipe_drops_contaminated_tuning_examples(tmp_path):
    shard = write_jsonl(tmp_path / "synth" / "s0.jsonl", [
        {"id": "t0", "text": "Some text.", "round": 0, "slot": 0, "linked": False,
         "pairs": [{"instruction": "What is it?", "response": "A text."}]}])
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": "r1", "text": "Raw text."}])
    tuning = write_jsonl(tmp_path / "tuning.jsonl", [
        {"context": BENCH, "pairs": [{"instruction": "Which enzyme?", "response": "Amylase"}]},
        {"context": "A clean context.", "pairs": [{"instruction": "Clean?", "response": "Yes."}]}])
    evals = write_jsonl(tmp_path / "evals.jsonl", [{"question": BENCH}])
    cfg = CorporaConfig(recipe="general", synthesized=[str(shard)], raw=[str(raw)], tuning=[str(tuning)],
                        tokenizer="mistral", workers=0, progress=False, output_dir=str(tmp_path / "out"),
                        contamination=ContaminationConfig(eval_sets=[str(evals)]))
    report = build_corpora(cfg)
    assert report["contamination"]["removed"] == {"synthesized_pairs": 0, "tuning_examples": 1}
    assert report["contamination"]["checked"] == {"synthesized_pairs": 1, "tuning_examples": 2}
    assert report["components"]["tuning"]["documents"] == 1


def test_reads_the_projects_own_evaluation_suite_folder(tmp_path):
    from megatron_ipt.eval.suite import write_suite

    write_suite({"enzymes": [{"id": "e0", "query": BENCH, "choices": ["Amylase", "Lipase"], "gold": 0}],
                 "colors": [{"id": "c0", "query": "Sky?", "choices": ["blue", "red"], "gold": 0}]}, tmp_path / "suite")
    gate = ContaminationGate(ContaminationConfig(eval_sets=[str(tmp_path / "suite")]))
    assert [s.name for s in gate.sets] == ["ipt_colors", "ipt_enzymes"]  # one set per task, data files not twice
    assert gate.filter_texts([[Pair(BENCH, "Amylase")]]) == [[]]
    assert gate.report()["sets"]["ipt_enzymes"]["removed"] == {"synthesized_pairs": 1}


def test_fast_path_splits_words_like_lm_eval():
    texts = ["Tab\tand\x1cfile-sep, ok", "Ünïcode\u00a0space\u2003here!", "", "  ", "just.one", "x\ud800y z"]
    hasher = NgramHasher(1)
    words, lengths = hasher.word_hashes(texts)
    assert lengths.tolist() == [len(lm_eval_words(t)) for t in texts]
    by_word = dict(zip([w for t in texts for w in lm_eval_words(t)], words.tolist(), strict=True))
    assert len(set(by_word.values())) == len(by_word)
    assert hasher.word_hashes(["tab"])[0].tolist() == [by_word["tab"]]  # same word, same hash, any position


def test_the_gate_never_switches_itself_off(tmp_path, caplog):
    """Named evaluation sets that hold nothing readable, or fields no item has, are errors (the gate would
    check nothing); an empty evaluation file is a warning, and the report's section is still there."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"contamination\.eval_sets: .*empty holds no evaluation set"):
        ContaminationGate(ContaminationConfig(eval_sets=[str(tmp_path / "empty")]))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "items.csv").write_text("question\nWhich enzyme?\n")
    (tmp_path / "other" / "README.md").write_text("# evals\n")
    with pytest.raises(DataError, match=r"other holds no evaluation set"):
        ContaminationGate(ContaminationConfig(eval_sets=[str(tmp_path / "other")]))
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"question": BENCH}])
    with pytest.raises(DataError, match=r"bench\.jsonl: no item has any of the fields \['query'\]"):
        ContaminationGate(ContaminationConfig(eval_sets=[str(bench)], fields=["query"]))

    (tmp_path / "blank.jsonl").write_text("")
    shard = write_jsonl(tmp_path / "synth" / "s0.jsonl", [
        {"id": "t0", "text": "Some text.", "round": 0, "slot": 0, "linked": False,
         "pairs": [{"instruction": "What is it?", "response": "A text."}]}])
    instr = write_jsonl(tmp_path / "instr.jsonl", [{"question": "Name a color.", "response": "Blue."}])
    cfg = CorporaConfig(recipe="domain", synthesized=[str(shard)], instructions=[str(instr)], tokenizer="mistral",
                        workers=0, progress=False, output_dir=str(tmp_path / "out"),
                        contamination=ContaminationConfig(eval_sets=[str(tmp_path / "blank.jsonl")]))
    report = build_corpora(cfg)
    assert "evaluation set blank" in caplog.text and "has no items" in caplog.text
    assert report["contamination"]["sets"]["blank"]["items"] == 0
    assert report["contamination"]["checked"] == {"synthesized_pairs": 1, "instruction_records": 1}
    assert "| blank | 0 |" in (tmp_path / "out" / "mixture_report.md").read_text()
