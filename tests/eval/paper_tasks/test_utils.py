"""The AdaptLLM task files, answer-token counts and metrics of the packaged paper tasks, against values
computed by hand (no model)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from megatron_ipt.eval.paper_tasks import utils
from megatron_ipt.eval.paper_tasks.utils import (
    TASKS,
    PaperDataError,
    agg_headline,
    agg_micro_f1,
    agg_weighted_f1,
    answer_token_count,
    convfinqa_match,
    load_tokenizer,
    ner_f1,
    numbers,
    option_prediction,
    parse_ner,
    read_rows,
)

FIXTURES = Path(__file__).resolve().parents[1] / "paper_fixtures"


def test_every_task_reads_from_the_adaptllm_layout_as_jsonl_or_array():
    counts = {t: len(read_rows(FIXTURES, t)) for t in TASKS}
    assert counts == {"pubmedqa": 3, "chemprot": 2, "rct": 3, "mqp": 3, "usmle": 2, "fpb": 4, "fiqa_sa": 3,
                      "headline": 10, "ner": 3, "convfinqa": 3}
    # ChemProt is a JSON array, PubMedQA JSON lines: both read.
    assert (FIXTURES / "ChemProt/test.json").read_text().lstrip().startswith("[")
    assert not (FIXTURES / "pubmed_qa/test.json").read_text().lstrip().startswith("[")
    assert read_rows(FIXTURES, "ner")[0]["label"] == ["Cook (PER), Apple (ORG), Cupertino (LOC)"]


def _copy_with(tmp_path: Path, rel: str, rows: list[dict]) -> Path:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


@pytest.mark.parametrize("task, row, where, field", [
    ("fpb", {"options": ["negative", "neutral", "positive"], "gold_index": 0}, "line 2", "'input'"),
    ("fpb", {"input": "x", "options": ["negative", "positive"], "gold_index": 0}, "line 2", "2 options, FPB has 3"),
    ("fpb", {"input": "x", "options": ["negative", "neutral", "positive"]}, "line 2", "'gold_index'"),
    ("fpb", {"input": "x", "options": ["negative", "neutral", "positive"], "gold_index": 3}, "line 2", "'gold_index'"),
    ("mqp", {"input": "x", "gold_index": 0}, "line 2", "'options'"),
    ("headline", {"input": "x", "options": ["Yes", "No"], "gold_index": 0}, "line 2", "'class_id'"),
    ("ner", {"input": "x"}, "line 2", "'label'"),
    ("convfinqa", {"input": "x", "label": 3}, "line 2", "'label'"),
])
def test_bad_rows_are_one_line_naming_file_row_and_field(tmp_path, task, row, where, field):
    good = read_rows(FIXTURES, task)[0]
    first = {k: v for k, v in good.items() if k != "label"} | ({"label": good["label"][0]} if "label" in good else {})
    _copy_with(tmp_path, TASKS[task].path, [first, row])
    with pytest.raises(PaperDataError) as err:
        read_rows(tmp_path, task)
    msg = str(err.value)
    assert TASKS[task].path in msg and where in msg and field in msg and "\n" not in msg


def test_missing_file_and_missing_headline_class_name_the_file(tmp_path):
    with pytest.raises(PaperDataError, match=r"usmle/test.json: file not found"):
        read_rows(tmp_path, "usmle")
    rows = [json.loads(x) for x in (FIXTURES / "Headline/test.json").read_text().splitlines()]
    _copy_with(tmp_path, "Headline/test.json", [r for r in rows if r["class_id"] != 4])
    with pytest.raises(PaperDataError, match=r"Headline/test.json: field 'class_id': no rows of class \[4\]"):
        read_rows(tmp_path, "headline")
    shutil.rmtree(tmp_path / "Headline")
    (tmp_path / "Headline").mkdir()
    (tmp_path / "Headline/test.json").write_text('{"input": "x"\n')
    with pytest.raises(PaperDataError, match=r"Headline/test.json line 1: not JSON"):
        read_rows(tmp_path, "headline")


def test_answer_span_follows_the_reference_not_lm_evals_whitespace_move(tmp_path):
    from transformers import AutoTokenizer

    from megatron_ipt.train.export import save_tokenizer

    save_tokenizer("mistral", tmp_path)
    plain = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    ctx, option = "Question: does it help?\nAnswer: ", "maybe"

    def ids(s: str, bos: bool) -> list[int]:
        return [plain.bos_token_id] * bos + plain(s, add_special_tokens=False)["input_ids"]

    for bos in (True, False):
        tok = load_tokenizer(str(tmp_path), bos)
        assert tok("x", add_special_tokens=bos)["input_ids"] == ids("x", bos)  # BOS exactly when asked
        # The reference: tok(ctx + " " + option)[len(tok(ctx)):], with the context as it is.
        ref = len(ids(ctx + " " + option, bos)) - len(ids(ctx, bos))
        assert answer_token_count(tok, ctx, option, bos, reference_span=True) == ref
        # lm-eval's _encode_pair moves the trailing space first: a different split of the same text.
        moved = len(ids(ctx + " " + option, bos)) - len(ids(ctx.rstrip(), bos))
        assert answer_token_count(tok, ctx, option, bos, reference_span=False) == moved
        assert moved != ref
    # Without trailing whitespace both rules agree.
    assert (answer_token_count(tok, "Answer:", option, False, True)
            == answer_token_count(tok, "Answer:", option, False, False))


def test_option_prediction_is_lowest_mean_nll_per_token_first_on_ties():
    doc = {"cont_ntoks": [1, 4, 2]}
    # Summed log-likelihoods -3, -8, -4: per token -3, -2, -2 -> option 1 (first of the tie), although
    # option 0 has the highest sum.
    assert option_prediction(doc, [-3.0, -8.0, -4.0]) == 1


def test_micro_and_weighted_f1_by_hand():
    assert agg_micro_f1([(0, 0), (1, 2), (2, 2), (2, 1)]) == pytest.approx(0.5)  # = accuracy
    # gold 0,0,1,2 / pred 0,1,1,2: F1 class 0 = 2/3 (support 2), class 1 = 2/3 (1), class 2 = 1 (1).
    assert agg_weighted_f1([(0, 0), (0, 1), (1, 1), (2, 2)]) == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)


def test_headline_averages_weighted_f1_over_the_nine_classes():
    # Class 0: gold 0,1 / pred 0,0 -> F1(0) = 2/3, F1(1) = 0, weighted 1/3; classes 1..8 one right each.
    items = [(0, 0, 0), (0, 1, 0)] + [(c, 1, 1) for c in range(1, 9)]
    assert agg_headline(items) == pytest.approx((1 / 3 + 8) / 9)
    # Not the pooled weighted F1 of all rows: F1(0) = 2/3 (support 1), F1(1) = 16/17 (support 9).
    assert agg_weighted_f1([(g, p) for _, g, p in items]) == pytest.approx((2 / 3 + 9 * 16 / 17) / 10)


def test_parse_ner_reads_only_the_last_word_before_the_type():
    from nereval import Entity

    assert parse_ner(" John Smith (PER)") == [Entity("Smith", "PER", 0)]
    assert parse_ner("Apple (ORG), Apple (ORG), Cupertino (LOC)") == [Entity("Apple", "ORG", 0),
                                                                      Entity("Cupertino", "LOC", 0)]
    # One trailing whitespace character is dropped, not all of them.
    assert parse_ner("Apple  (ORG)") == [Entity("Apple ", "ORG", 0)]
    assert parse_ner("no entities here") == []


def test_ner_f1_counts_text_and_type_per_gold_entity():
    # Gold Cook/PER, Apple/ORG, Cupertino/LOC; pred Cook/PER, Apple/LOC.
    # Cook: text + type (2). Apple: text (1). Cupertino: type via the LOC prediction (1, every span overlaps
    # at start 0). correct 4 of possible 6, actual 4: P 1, R 2/3, F1 0.8.
    assert ner_f1(" Cook (PER), Apple (ORG), Cupertino (LOC)", "Cook (PER), Apple (LOC)") == pytest.approx(0.8)
    assert ner_f1(" Cook (PER)", "nothing") == 0.0
    assert ner_f1(" Cook (PER)", "Cook (PER)\nTim (PER)") == pytest.approx(2 / 3)


def test_convfinqa_numeric_match_and_its_quirks():
    assert numbers("12.5%") == [0.125] and numbers("1,200 and -3.5e2") == [1200, -350.0]
    assert numbers("007") == [math.inf]
    assert numbers("30\n40") == [30]
    assert convfinqa_match(" 30", "The change is 30.0 million")
    assert convfinqa_match(" 30", "about 29.995")
    assert not convfinqa_match(" 30", "about 29.98")
    assert convfinqa_match(" 1200", "1,200")
    assert not convfinqa_match(" 25%", "25")  # the gold is 0.25
    assert convfinqa_match(" 25%", "it is 0.25")
    assert convfinqa_match(" 007", "007")  # inf == inf
    assert not convfinqa_match(" 30", "no answer\n30")  # only the first line counts
    assert not convfinqa_match(" none", "30")  # a gold without a number never matches
    assert convfinqa_match(" 30", "5 or 30")  # any number of the prediction


def test_loader_needs_data_dir_and_tokenizer():
    with pytest.raises(PaperDataError, match="data_dir"):
        utils.load_task("fpb")
    with pytest.raises(PaperDataError, match="pretrained"):
        utils.load_task("fpb", data_dir=str(FIXTURES))
    assert len(utils.load_task("ner", data_dir=str(FIXTURES))["test"]) == 3
