"""The demo's evaluation families: built from real held-out records, disjoint from the training
families by design, and checked for 13-gram overlap."""

from __future__ import annotations

from collections import Counter

import pytest

from megatron_ipt.demo.corpus import instruction_families
from megatron_ipt.demo.evalsets import (
    CONTEXT_SENTENCES,
    ROLES,
    drop_contaminated,
    family_manifest,
    next_sentence_items,
    ngram_hashes,
    ngram_set,
    rct_items,
    split_sentences,
)
from megatron_ipt.demo.general_instructions import general_family_manifest, general_instructions
from megatron_ipt.tuning.pubmed import iter_pubmed_records, shipped_pubmed_files
from megatron_ipt.tuning.pubmed_mining import tuning_families


@pytest.fixture(scope="module")
def records():
    return list(iter_pubmed_records([shipped_pubmed_files()[1]], limit=800))


def test_split_sentences_keeps_abbreviated_numbers_together():
    text = "We enrolled 120 patients (mean age 54.2 years). Outcomes improved in 3.5% of them! Was it worth it? Yes."
    assert split_sentences(text) == ["We enrolled 120 patients (mean age 54.2 years).",
                                     "Outcomes improved in 3.5% of them!", "Was it worth it?"]


def test_rct_items_label_sentences_by_their_section(records):
    items = rct_items(records, 50)
    assert len(items) == 50
    by_pmid = {f"pmid:{r.pmid}": r for r in records}
    for it in items:
        rec = by_pmid[it["id"]]
        role = ROLES[it["gold"]]
        # The sentence comes from a section of that very category (PubMed 200k RCT's labelling).
        assert any(s.category == role and it["text"] in s.text for s in rec.sections), it
        assert it["choices"] == [f" {r.lower()}" for r in ROLES]
        assert it["query"].startswith("Abstract sentence: ") and it["query"].endswith("\nRole:")
    counts = Counter(it["gold"] for it in items)
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced round-robin: chance is 1/5
    assert len({it["id"] for it in items}) == 50  # one sentence per abstract


def test_next_sentence_items_hold_the_true_continuation(records):
    items = next_sentence_items(records, 40)
    assert len(items) == 40
    by_pmid = {f"pmid:{r.pmid}": r for r in records}
    for it in items:
        rec = by_pmid[it["id"]]
        assert not rec.structured and len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        gold = it["choices"][it["gold"]].strip()
        assert (it["query"] + " " + gold) in rec.abstract  # the sentences just before the true one
        assert 1 <= len(split_sentences(it["query"])) <= CONTEXT_SENTENCES
        for k, c in enumerate(it["choices"]):
            if k != it["gold"]:
                assert c.strip() not in rec.abstract  # distractors come from other abstracts
    assert len({it["gold"] for it in items}) > 1  # the answer's position varies


def test_items_do_not_depend_on_record_order(records):
    """Every choice is seeded by PMID: with no limit, the same records give the same items."""
    a = {it["id"]: it for it in rct_items(records, 10**6)}
    b = {it["id"]: it for it in rct_items(list(reversed(records)), 10**6)}
    assert a == b and len(a) > 50
    first = next_sentence_items(records, 10**6)
    assert [it["gold"] for it in first] == [it["gold"] for it in next_sentence_items(records, 10**6)]


def test_drop_contaminated_finds_a_shared_13_gram():
    clean = {"id": "a", "text": "one two three four five six seven eight nine ten eleven twelve thirteen"}
    dirty = {"id": "b", "text": "Zero One two three four five six seven eight nine ten eleven twelve thirteen!"}
    twelve = {"id": "c", "text": "two three four five six seven eight nine ten eleven twelve thirteen"}
    training = ngram_set(["prefix words " + dirty["text"].lower() + " suffix"])
    kept, dropped = drop_contaminated([clean, dirty, twelve], training)
    assert [k["id"] for k in kept] == ["c"] and dropped == 2  # 'clean' shares the 13-gram one..thirteen
    assert ngram_hashes("a b c") == set() and len(ngram_hashes(" ".join(map(str, range(20))))) == 8


def test_family_sets_are_disjoint_by_design():
    manifest = family_manifest(tuning_families(), general_family_manifest(), instruction_families())
    a, b, c = manifest["a_tuning"], manifest["b_general"], manifest["c_evaluation"]
    d = manifest["d_instruction_tuning"]
    assert len(a) >= 10 and len(b) >= 5 and len(c) == 2 and len(d) >= 10
    assert not set(c) & (set(a) | set(b) | set(d)) and not set(a) & set(b) and not set(d) & set(b)
    train_wordings = [w for fams in (a, b, d) for f in fams.values() for w in f["wordings"]]
    for fam in c.values():
        for w in fam["wordings"]:
            assert not any(w.strip().lower() in t.lower() for t in train_wordings), w
    # The general mix is not biomedical and never asks for a sentence role or a continuation.
    rows = list(general_instructions(2000))
    assert len({r["family"] for r in rows}) == len(b)
    text = " ".join(r["question"] + " " + r["response"] for r in rows).lower()
    for word in ("abstract sentence", "role:", "patients", "clinical", "randomized"):
        assert word not in text, word


def test_general_instructions_are_the_same_in_another_process():
    """No record depends on the process: a default's repr with a memory address, or a standard-library
    function patched by a library loaded here (torch replaces ``inspect.getfile``). A rerun of the
    corpus stage must rewrite the same file."""
    import json
    import subprocess
    import sys

    import torch  # noqa: F401  (loaded here, not in the other process)

    code = ("import json, logging; logging.getLogger().addHandler(logging.NullHandler()); "
            "from megatron_ipt.demo.general_instructions import general_instructions; "
            "print(json.dumps(list(general_instructions())))")
    other = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    here = list(general_instructions())
    assert other == here and len(here) > 1000
    assert not any(" at 0x" in r["response"] for r in here)
