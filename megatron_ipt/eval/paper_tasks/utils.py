"""Loaders, per-row results and metrics of the AdaptLLM domain tasks, scored as the paper's reference
harness (microsoft/LMOps ``adaptllm/``) scores them.

- Option tasks: the chosen option is the one with the lowest mean negative log-likelihood per answer
  token of ``" " + option`` after ``input``. lm-eval returns summed log-likelihoods, so the loader adds
  each option's answer-token count (``cont_ntoks``) from the model's own tokenizer.
- Generation tasks (NER, ConvFinQA): greedy, stop at a newline, at most 100 new tokens.
- Metrics: accuracy, micro-F1, weighted F1, Headline's mean of 9 per-``class_id`` weighted F1s, NER's
  per-document entity F1 (``nereval``, the reference's library), ConvFinQA's numeric match.
  lm-eval reports them on a 0-1 scale; the paper's tables are x100.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, NamedTuple


class TaskSpec(NamedTuple):  # not a dataclass: lm-eval executes this file outside sys.modules
    name: str  # the output's name of the task (lm-eval's is "adaptllm_" + name)
    label: str  # the column heading in the paper's tables
    path: str  # the file inside the AdaptLLM dataset repository
    n_options: int | None  # the reference asserts this many options per row; None: a generation task
    metric: str  # the task's primary metric (lm-eval key)


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("pubmedqa", "PubMedQA", "pubmed_qa/test.json", 3, "acc"),
    TaskSpec("chemprot", "ChemProt", "ChemProt/test.json", 13, "micro_f1"),
    TaskSpec("rct", "RCT", "RCT/test.json", 5, "micro_f1"),
    TaskSpec("mqp", "MQP", "MedQs/test.json", 2, "acc"),
    TaskSpec("usmle", "USMLE", "usmle/test.json", 4, "acc"),
    TaskSpec("fpb", "FPB", "FPB/test.json", 3, "weighted_f1"),
    TaskSpec("fiqa_sa", "FiQA_SA", "FiQA_SA/test.json", 3, "weighted_f1"),
    TaskSpec("headline", "Headline", "Headline/test.json", 2, "headline_f1"),
    TaskSpec("ner", "NER", "NER/test.json", None, "entity_f1"),
    TaskSpec("convfinqa", "ConvFinQA", "ConviFinQA/test.json", None, "convfinqa_em"),
]}
DOMAINS: dict[str, list[str]] = {
    "biomedicine": ["pubmedqa", "chemprot", "rct", "mqp", "usmle"],
    "finance": ["fpb", "fiqa_sa", "headline", "ner", "convfinqa"],
}
TASK_PREFIX = "adaptllm_"  # lm-eval names (lm-eval ships its own, differently formatted, pubmedqa)
HEADLINE_CLASSES = 9  # the reference averages over 9 class ids, hard-coded
GENERATION_WINDOW = 2048  # the reference's n_tokens: prompt + generated tokens
MAX_NEW_TOKENS = 100  # the reference's generate_max_len

log = logging.getLogger("megatron_ipt.eval.paper_tasks")


class PaperDataError(ValueError):
    """A task file that cannot be scored; the message names the file, row and field."""


# --- reading and checking the AdaptLLM files ------------------------------------------------------


def _parse(path: Path) -> list[tuple[str, Any]]:
    """(where, row) per row of a JSON array or JSON-lines file."""
    if not path.is_file():
        raise PaperDataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise PaperDataError(f"{path}: not a JSON array ({err})") from None
        return [(f"row {i}", r) for i, r in enumerate(rows)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise PaperDataError(f"{path} line {n}: not JSON ({err.msg})") from None
    return out


def _check_option_row(spec: TaskSpec, where: str, row: dict) -> dict:
    options = row.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) and o for o in options):
        raise ValueError("field 'options': missing or not a list of non-empty strings")
    if len(options) != spec.n_options:
        raise ValueError(f"field 'options': {len(options)} options, {spec.label} has {spec.n_options}")
    gold = row.get("gold_index")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
        raise ValueError(f"field 'gold_index': missing or not an index into the {len(options)} options")
    out = {"input": row["input"], "options": options, "gold_index": gold}
    if spec.name == "headline":
        cid = row.get("class_id")
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < HEADLINE_CLASSES:
            raise ValueError(f"field 'class_id': missing or not in 0..{HEADLINE_CLASSES - 1}")
        out["class_id"] = cid
    return out


def read_rows(data_dir: str | Path, task: str) -> list[dict]:
    """The rows of one task file under ``data_dir`` (the AdaptLLM layout), checked and normalised:
    ``input``, ``options``, ``gold_index`` (+ ``class_id``) or ``input`` and ``label`` (a list of str)."""
    spec = TASKS[task]
    path = Path(data_dir) / spec.path
    rows = []
    for where, row in _parse(path):
        try:
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            if not isinstance(row.get("input"), str) or not row["input"]:
                raise ValueError("field 'input': missing or not a non-empty string")
            if spec.n_options is not None:
                rows.append(_check_option_row(spec, where, row))
                continue
            label = row.get("label")
            labels = [label] if isinstance(label, str) else label
            if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
                raise ValueError("field 'label': missing or not a string (or a list of strings)")
            rows.append({"input": row["input"], "label": labels})
        except ValueError as err:
            raise PaperDataError(f"{path} {where}: {err}") from None
    if not rows:
        raise PaperDataError(f"{path}: no rows")
    if spec.name == "headline":
        missing = sorted(set(range(HEADLINE_CLASSES)) - {r["class_id"] for r in rows})
        if missing:
            # The reference's per-class F1 over an empty class raises (sklearn): say so up front.
            raise PaperDataError(f"{path}: field 'class_id': no rows of class {missing}; the Headline score "
                                 f"averages over all {HEADLINE_CLASSES} classes")
    return rows


# --- answer-token counts (the reference's span, or lm-eval's) -------------------------------------


def answer_token_count(tokenizer: Any, context: str, option: str, add_bos: bool, reference_span: bool) -> int:
    """Tokens of ``" " + option`` that get scored after ``context``.

    The reference scores ``tok(context + cont)[len(tok(context)):]``. lm-eval's own ``_encode_pair``
    first moves the context's trailing whitespace into the continuation, which splits differently when
    ``context`` ends in whitespace; ``reference_span=False`` counts that split instead.
    """
    cont = " " + option
    if not reference_span:
        k = len(context) - len(context.rstrip())
        if k:
            context, cont = context[:-k], context[-k:] + cont
    whole = tokenizer(context + cont, add_special_tokens=add_bos)["input_ids"]
    head = tokenizer(context, add_special_tokens=add_bos)["input_ids"]
    return len(whole) - len(head)


_TOKENIZERS: dict[tuple[str, bool], Any] = {}


def load_tokenizer(pretrained: str, add_bos: bool) -> Any:
    """The model directory's tokenizer, adding BOS under ``add_special_tokens=True`` when ``add_bos``.

    Some saved Llama/Mistral tokenizers (this project's exports among them) add no BOS by default;
    the reference's ``add_special_tokens=add_bos_token`` relies on a tokenizer that does.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained, local_files_only=True, trust_remote_code=False)
    if add_bos and tok.bos_token_id is not None and tok("a")["input_ids"][:1] != [tok.bos_token_id]:
        tok = AutoTokenizer.from_pretrained(pretrained, local_files_only=True, trust_remote_code=False,
                                            add_bos_token=True)
        if tok("a")["input_ids"][:1] != [tok.bos_token_id]:
            raise PaperDataError(f"{pretrained}: the tokenizer does not prepend its BOS token {tok.bos_token!r} "
                                 "even with add_bos_token=True; pass --add-bos-token false")
    return tok


def _tokenizer(pretrained: Any, add_bos: bool) -> Any:
    if not isinstance(pretrained, str) or not pretrained:
        raise PaperDataError("the option tasks count answer tokens with the model's tokenizer: pass "
                             "pretrained=MODEL_DIR (model_args or --metadata)")
    if (pretrained, add_bos) not in _TOKENIZERS:
        _TOKENIZERS[pretrained, add_bos] = load_tokenizer(pretrained, add_bos)
    return _TOKENIZERS[pretrained, add_bos]


def _as_bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def load_task(task: str, data_dir: str | None = None, pretrained: Any = None, add_bos_token: Any = None,
              answer_span: str = "lm_eval", **_metadata: Any) -> Any:
    """lm-eval ``custom_dataset``: the task's rows as a ``DatasetDict`` with a ``test`` split.

    ``data_dir`` (the AdaptLLM layout) comes from lm-eval's metadata; so do ``pretrained`` and
    ``add_bos_token`` (lm-eval merges model_args into it). ``answer_span="reference"`` is set by
    ``megatron_ipt.eval.paper``, whose model scores the reference's span.
    """
    import datasets

    if not data_dir:
        raise PaperDataError(f"{TASK_PREFIX}{task}: pass data_dir=DIR (--metadata) with the AdaptLLM files")
    rows = read_rows(data_dir, task)
    if TASKS[task].n_options is not None:
        # lm-eval leaves BOS to the tokenizer's default when add_bos_token is unset; HF adds specials.
        add_bos = _as_bool(add_bos_token, True)
        tok = _tokenizer(pretrained, add_bos)
        reference = answer_span == "reference"
        trailing = sum(r["input"] != r["input"].rstrip() for r in rows)
        if trailing and not reference:
            log.warning("%s: %d inputs end in whitespace; lm-eval's hf model scores a different answer span "
                        "for them than the reference (megatron_ipt.eval.paper scores the reference's)",
                        task, trailing)
        for r in rows:
            r["cont_ntoks"] = [answer_token_count(tok, r["input"], o, add_bos, reference) for o in r["options"]]
            if min(r["cont_ntoks"]) < 1:
                raise PaperDataError(f"{task}: an option of input {r['input'][:40]!r} has no answer tokens")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_pubmedqa(**kw: Any) -> Any:
    return load_task("pubmedqa", **kw)


def load_chemprot(**kw: Any) -> Any:
    return load_task("chemprot", **kw)


def load_rct(**kw: Any) -> Any:
    return load_task("rct", **kw)


def load_mqp(**kw: Any) -> Any:
    return load_task("mqp", **kw)


def load_usmle(**kw: Any) -> Any:
    return load_task("usmle", **kw)


def load_fpb(**kw: Any) -> Any:
    return load_task("fpb", **kw)


def load_fiqa_sa(**kw: Any) -> Any:
    return load_task("fiqa_sa", **kw)


def load_headline(**kw: Any) -> Any:
    return load_task("headline", **kw)


def load_ner(**kw: Any) -> Any:
    return load_task("ner", **kw)


def load_convfinqa(**kw: Any) -> Any:
    return load_task("convfinqa", **kw)


# --- option choice and per-row results ------------------------------------------------------------


def option_prediction(doc: dict, loglikelihoods: list[float]) -> int:
    """Index of the option with the lowest mean NLL per answer token (the first one on ties)."""
    means = [ll / n for ll, n in zip(loglikelihoods, doc["cont_ntoks"], strict=True)]
    return max(range(len(means)), key=lambda i: (means[i], -i))


def _pred(doc: dict, results: list) -> int:
    return option_prediction(doc, [float(r[0]) for r in results])


def acc_results(doc: dict, results: list) -> dict:
    hit = float(_pred(doc, results) == doc["gold_index"])
    return {"acc": hit, "score": hit}


def micro_f1_results(doc: dict, results: list) -> dict:
    pair = (doc["gold_index"], _pred(doc, results))
    return {"micro_f1": pair, "score": pair}


def weighted_f1_results(doc: dict, results: list) -> dict:
    pair = (doc["gold_index"], _pred(doc, results))
    return {"weighted_f1": pair, "score": pair}


def headline_results(doc: dict, results: list) -> dict:
    triple = (doc["class_id"], doc["gold_index"], _pred(doc, results))
    return {"headline_f1": triple, "score": triple}


def ner_results(doc: dict, results: list) -> dict:
    f1 = ner_f1(" " + doc["label"][0], results[0])
    return {"entity_f1": f1, "score": f1}


def convfinqa_results(doc: dict, results: list) -> dict:
    hit = float(convfinqa_match(" " + doc["label"][0], results[0]))
    return {"convfinqa_em": hit, "score": hit}


# --- metrics --------------------------------------------------------------------------------------


def agg_micro_f1(items: list) -> float:
    from sklearn.metrics import f1_score

    golds, preds = zip(*items, strict=True)
    return float(f1_score(list(golds), list(preds), average="micro"))


def agg_weighted_f1(items: list) -> float:
    from sklearn.metrics import f1_score

    golds, preds = zip(*items, strict=True)
    return float(f1_score(list(golds), list(preds), average="weighted"))


def agg_headline(items: list) -> float:
    """Weighted F1 within each of the 9 ``class_id`` groups, averaged over the 9."""
    from sklearn.metrics import f1_score

    total = 0.0
    for cid in range(HEADLINE_CLASSES):
        golds = [g for c, g, _ in items if c == cid]
        preds = [p for c, _, p in items if c == cid]
        total += f1_score(golds, preds, average="weighted")
    return float(total / HEADLINE_CLASSES)


_NER_ENTITY = re.compile(r"([^\s]+[\s]+)(\([^\s]+\))", re.IGNORECASE)


def parse_ner(text: str) -> list:
    """Entities ``WORD (TYPE)`` as the reference reads them: only the last word before ``(TYPE)``, one
    trailing whitespace character dropped, duplicates dropped in first-seen order, start 0."""
    from nereval import Entity

    out: list = []
    for word, kind in _NER_ENTITY.findall(text):
        entity = Entity(word[:-1] if len(word) > 1 else "", kind[1:-1] if len(kind) > 2 else "", 0)
        if entity not in out:
            out.append(entity)
    return out


def ner_f1(gold: str, pred: str) -> float:
    """One document's entity F1 (nereval: text and type each count once per gold entity)."""
    import nereval

    return float(nereval.evaluate([parse_ner(gold)], [parse_ner(pred)]))


_NUMBER = re.compile(r"[-+]?[.]?[\d]+(?:,\d\d\d)*[\.]?\d*(?:[eE][-+]?\d+)?[%]*")


def _number_value(text: str) -> float:
    """A matched number as the reference evaluates it: each ``%`` divides by 100, ``,`` is dropped, and
    what Python's grammar rejects (``007``) is infinity."""
    body = text.replace(",", "")
    percents = len(body) - len(body.rstrip("%"))
    try:
        value = ast.literal_eval(body.rstrip("%"))
    except (ValueError, SyntaxError):
        return math.inf
    for _ in range(percents):
        value = value / 100
    return value


def numbers(text: str) -> list[float]:
    """The numbers of the first line of ``text`` (stripped)."""
    return [_number_value(m) for m in _NUMBER.findall(text.split("\n")[0].strip())]


def convfinqa_match(gold: str, pred: str) -> bool:
    """Any number of the prediction within 0.01 of the gold's first number (both must have one)."""
    golds, preds = numbers(gold), numbers(pred)
    return bool(golds and preds) and any(math.isclose(p, golds[0], abs_tol=1e-2) for p in preds)
