"""Evaluate like the paper (Instruction Pre-Training, arXiv 2406.14491), over lm-evaluation-harness.

Suites:
  biomedicine  PubMedQA, ChemProt, RCT, MQP, USMLE   (AdaptLLM/medicine-tasks files under --data-dir)
  finance      FPB, FiQA_SA, Headline, NER, ConvFinQA (AdaptLLM/finance-tasks files under --data-dir)
  general      ARC-e, ARC-c, BoolQ, SIQA, WinoGrande, PIQA, OBQA, HellaSwag, MMLU (lm-eval's own tasks;
               the datasets must be in the local HF cache)

Domain tasks are scored as the reference harness (microsoft/LMOps adaptllm/) scores them: the prompt is
each row's `input` as it is, the chosen option is the one with the lowest mean negative log-likelihood
per answer token of " " + option (answer tokens: tok(input + " " + option)[len(tok(input)):], BOS per
--add-bos-token, log-softmax in float32, no truncation), NER and ConvFinQA generate greedily up to a
newline or 100 tokens from a prompt cut to its last 1948 tokens (BOS kept). Metrics per task: PubMedQA,
MQP, USMLE accuracy; ChemProt, RCT micro-F1; FPB, FiQA_SA weighted F1; Headline the mean over its 9
class ids of the weighted F1; NER per-document entity F1; ConvFinQA numeric match within 0.01. Scores
are x100. A domain's average is the unweighted mean of its 5 task scores.

General suite (UNVERIFIED against the paper: its evaluation command could not be read): piqa,
hellaswag, winogrande 0-shot; social_iqa, arc_easy, arc_challenge, openbookqa, boolq, mmlu 5-shot;
add_bos_token true; acc_norm where lm-eval reports it, else acc; mmlu is lm-eval's size-weighted group.

    python -m megatron_ipt.eval.paper --suite finance --data-dir DIR --model MODEL_DIR --output scores.json

scores.json: {"tasks": {NAME: {"score", "metric", "n", "predictions", ...}}, "average", "settings"};
predictions are the chosen option index (or generated text) per row, in file order.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from megatron_ipt.config import ConfigError, normalize_dtype, run_cli
from megatron_ipt.eval.paper_tasks import TASKS_DIR
from megatron_ipt.eval.paper_tasks.utils import (
    DOMAINS,
    GENERATION_WINDOW,
    MAX_NEW_TOKENS,
    TASK_PREFIX,
    TASKS,
    PaperDataError,
    load_tokenizer,
    option_prediction,
    read_rows,
)
from megatron_ipt.io import atomic_write_json
from megatron_ipt.log import get_logger, setup_logging

log = get_logger("megatron_ipt.eval.paper")

UNVERIFIED = ("general suite: the tasks, shots, add_bos_token and metric choice follow an unverified "
              "reading of the paper and its model cards (shared/notes/paper-evaluation.md section 2)")


@dataclass(frozen=True)
class GeneralTask:
    name: str  # lm-eval's task (or group) name
    label: str  # the paper's column heading
    shots: int
    metric: str  # lm-eval metric reported


GENERAL: list[GeneralTask] = [
    GeneralTask("arc_easy", "ARC-e", 5, "acc_norm"),
    GeneralTask("arc_challenge", "ARC-c", 5, "acc_norm"),
    GeneralTask("boolq", "BoolQ", 5, "acc"),
    GeneralTask("social_iqa", "SIQA", 5, "acc"),
    GeneralTask("winogrande", "WinoGrande", 0, "acc"),
    GeneralTask("piqa", "PIQA", 0, "acc_norm"),
    GeneralTask("openbookqa", "OBQA", 5, "acc_norm"),
    GeneralTask("hellaswag", "HellaSwag", 0, "acc_norm"),
    GeneralTask("mmlu", "MMLU", 5, "acc"),
]


class PaperError(ValueError):
    """A run that cannot start (missing model, dataset not cached); one line."""


def _reference_lm_class() -> type:
    """lm-eval's HF model with the reference's answer span and prompt cut (built lazily: lm-eval is heavy)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    class ReferenceLM(HFLM):
        """Scores ``tok(ctx + cont)[len(tok(ctx)):]`` within ``tok(ctx + cont)``, without lm-eval's move of
        the context's trailing whitespace, and cuts generation prompts from the left keeping BOS, as the
        reference does."""

        option_window: int = 0  # set per run: no option request is ever cut
        prompts_cut: int = 0

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            # The reference feeds tok(ctx + cont) and masks its first len(tok(ctx)) positions; those
            # tokens need not equal tok(ctx) (a trailing space merges into the answer's first token).
            whole = self.tok_encode(context + continuation)
            n_head = len(self.tok_encode(context))
            return whole[:n_head], whole[n_head:]

        @property
        def max_length(self) -> int:
            return self._max_length or GENERATION_WINDOW

        def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
            self._max_length = self.option_window
            return super().loglikelihood(requests, disable_tqdm)

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
            self._max_length = GENERATION_WINDOW
            return super().generate_until(requests, disable_tqdm)

        def tok_batch_encode(self, strings: list[str], padding_side: str = "left",
                             left_truncate_len: int | None = None, truncation: bool = False) -> tuple:
            tok = self.tokenizer
            rows = [tok(s, add_special_tokens=bool(self.add_bos_token))["input_ids"] for s in strings]
            if left_truncate_len:
                cut = []
                for ids in rows:
                    if len(ids) > left_truncate_len:
                        self.prompts_cut += 1
                        keep_bos = bool(self.add_bos_token) and ids[:1] == [tok.bos_token_id]
                        ids = ids[:1] + ids[len(ids) - left_truncate_len + 1:] if keep_bos else ids[-left_truncate_len:]
                    cut.append(ids)
                rows = cut
            width = max(len(r) for r in rows)
            pad = tok.pad_token_id
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
            return ids, mask

    return ReferenceLM


def _offline() -> None:
    # Local files only: no hub look-ups (they wait on timeouts where there is no network).
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def load_model(model_dir: str | Path, dtype: str, device: str, add_bos: bool) -> tuple[Any, Any]:
    """The HF causal LM and tokenizer of a local directory (no remote code)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise PaperError(f"{path}: not a model directory (no config.json)")
    tokenizer = load_tokenizer(str(path.resolve()), add_bos)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                                 dtype=getattr(torch, dtype))
    return model.to(device).eval(), tokenizer


def model_context(model: Any) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def length_report(tokenizer: Any, rows: dict[str, list[dict]], add_bos: bool, context: int | None) -> tuple[
        dict[str, dict[str, int]], int]:
    """Per task: rows longer than the model's context (never cut for option tasks: the reference scores
    them whole) and generation prompts cut to the reference's 1948 tokens; the longest option request."""
    out: dict[str, dict[str, int]] = {}
    longest = 0
    for task, task_rows in rows.items():
        if TASKS[task].n_options is not None:
            texts = [r["input"] + " " + o for r in task_rows for o in r["options"]]
            lens = [len(x) for x in tokenizer(texts, add_special_tokens=add_bos)["input_ids"]]
            per_row = [max(lens[i:i + TASKS[task].n_options]) for i in range(0, len(lens), TASKS[task].n_options)]
            longest = max(longest, *per_row)
            out[task] = {"over_context": sum(n > context for n in per_row) if context else 0}
        else:
            lens = [len(x) for x in tokenizer([r["input"] for r in task_rows], add_special_tokens=add_bos)["input_ids"]]
            window = GENERATION_WINDOW - MAX_NEW_TOKENS
            out[task] = {"over_context": sum(n + MAX_NEW_TOKENS > context for n in lens) if context else 0,
                         "prompts_cut": sum(n > window for n in lens)}
    return out, longest


def evaluate_domain(args: PaperArgs, device: str, dtype: str) -> dict[str, Any]:
    """Score one domain suite through lm-eval; the output document."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = DOMAINS[args.suite]
    rows = {t: read_rows(args.data_dir, t) for t in tasks}  # every file checked before the model loads
    model, tokenizer = load_model(args.model, dtype, device, args.add_bos_token)
    context = model_context(model)
    lengths, longest = length_report(tokenizer, rows, args.add_bos_token, context)
    for task, counts in lengths.items():
        if counts["over_context"]:
            log.warning("%s: %d of %d rows are longer than the model's context (%s tokens); scored whole, as "
                        "the reference does", task, counts["over_context"], len(rows[task]), context)
        if counts.get("prompts_cut"):
            log.warning("%s: %d of %d prompts longer than %d tokens: their start is cut, as the reference does",
                        task, counts["prompts_cut"], len(rows[task]), GENERATION_WINDOW - MAX_NEW_TOKENS)
    lm = _reference_lm_class()(pretrained=model, tokenizer=tokenizer, add_bos_token=args.add_bos_token,
                               softmax_dtype="float32", batch_size=args.batch_size, trust_remote_code=False)
    lm.option_window = max(context or 0, longest)
    # The packaged task folder only (its utils.py is this package's own code), not lm-eval's catalogue.
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={
        "data_dir": str(Path(args.data_dir).resolve()), "pretrained": str(Path(args.model).resolve()),
        "add_bos_token": args.add_bos_token, "answer_span": "reference"})
    group = f"{TASK_PREFIX}{args.suite}"
    res = lm_eval.simple_evaluate(model=lm, tasks=[group], task_manager=manager, log_samples=True,
                                  bootstrap_iters=0)
    out_tasks: dict[str, Any] = {}
    for task in tasks:
        name = TASK_PREFIX + task
        spec = TASKS[task]
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        extra: dict[str, Any] = {}
        if spec.n_options is not None:
            lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
            preds: list = [option_prediction(s["doc"], ll) for s, ll in zip(samples, lls, strict=True)]
            # Per row and option: the mean NLL per answer token that chose the prediction.
            extra["mean_nll"] = [[-x / n for x, n in zip(ll, s["doc"]["cont_ntoks"], strict=True)]
                                 for s, ll in zip(samples, lls, strict=True)]
        else:
            preds = [s["filtered_resps"][0] for s in samples]
        out_tasks[task] = {"score": 100 * float(res["results"][name][f"{spec.metric},none"]), "metric": spec.metric,
                           "n": len(samples), "predictions": preds, **lengths[task], **extra}
    average = 100 * float(res["results"][group]["score,none"])
    return {"tasks": out_tasks, "average": average,
            "settings": {"average": f"unweighted mean of the {len(tasks)} task scores",
                         "prompts_cut": lm.prompts_cut}}


def _missing_dataset(task: str, err: BaseException) -> PaperError:
    quoted = re.search(r"'([^']+/[^']+)'", str(err))
    what = f"dataset {quoted.group(1)}" if quoted else f"its dataset ({' '.join(str(err).split())[:200]})"
    return PaperError(f"general suite: task {task}: {what} is not in the local HF cache "
                      f"(HF_DATASETS_OFFLINE=1); download it on a machine with hub access (README, "
                      f"'Evaluate like the paper')")


def general_prediction(sample: dict, metric: str, delimiter: str) -> int:
    """lm-eval's own choice for ``acc`` (summed log-likelihood) or ``acc_norm`` (per character)."""
    lls = [float(r[0]) for r in sample["filtered_resps"]]
    if metric == "acc_norm":
        lls = [ll / max(1, len(arg[1]) - len(delimiter)) for ll, arg in zip(lls, sample["arguments"], strict=True)]
    return max(range(len(lls)), key=lambda i: (lls[i], -i))


def general_task_manager() -> Any:
    """lm-eval's own task catalogue."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def evaluate_general(args: PaperArgs, device: str, dtype: str) -> dict[str, Any]:
    """The nine general benchmarks with lm-eval's own task definitions (unverified preset)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import get_task_dict

    manager = general_task_manager()
    for t in GENERAL:  # every dataset found before the model loads: one line naming a missing one
        try:
            get_task_dict([t.name], manager)
        except (ConnectionError, FileNotFoundError) as err:  # datasets: not cached, hub unreachable
            raise _missing_dataset(t.name, err) from None
    model, tokenizer = load_model(args.model, dtype, device, args.add_bos_token)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, add_bos_token=args.add_bos_token, softmax_dtype="float32",
              batch_size=args.batch_size, trust_remote_code=False)
    out_tasks: dict[str, Any] = {}
    for shots in sorted({t.shots for t in GENERAL}):
        batch = [t for t in GENERAL if t.shots == shots]
        res = lm_eval.simple_evaluate(model=lm, tasks=[t.name for t in batch], num_fewshot=shots,
                                      task_manager=manager, log_samples=True, bootstrap_iters=0)
        for t in batch:
            groups = res.get("group_subtasks", {})
            leaves = sorted(_leaves(groups, t.name)) if groups.get(t.name) else [t.name]
            preds: list = []
            for leaf in leaves:
                delim = res["configs"][leaf].get("target_delimiter", " ")
                metric = t.metric if f"{t.metric},none" in res["results"][leaf] else "acc"
                preds += [general_prediction(s, metric, delim)
                          for s in sorted(res["samples"][leaf], key=lambda s: s["doc_id"])]
            out_tasks[t.name] = {"score": 100 * float(res["results"][t.name][f"{t.metric},none"]), "metric": t.metric,
                                 "n": len(preds), "predictions": preds, "shots": shots}
    scores = [v["score"] for v in out_tasks.values()]
    return {"tasks": out_tasks, "average": sum(scores) / len(scores),
            "settings": {"average": f"unweighted mean of the {len(scores)} task scores", "unverified": UNVERIFIED}}


def _leaves(groups: dict[str, list[str]], name: str) -> set[str]:
    out: set[str] = set()
    for sub in groups.get(name, []):
        out |= _leaves(groups, sub) if sub in groups else {sub}
    return out


def table(doc: dict[str, Any], suite: str, model: str) -> str:
    """The paper's layout: one row per model, one column per task, then the average."""
    labels = ([TASKS[t].label for t in DOMAINS[suite]] if suite in DOMAINS else [t.label for t in GENERAL])
    names = DOMAINS[suite] if suite in DOMAINS else [t.name for t in GENERAL]
    heads = ["Model", *labels, "Average"]
    cells = [Path(model).name or model, *(f"{doc['tasks'][n]['score']:.1f}" for n in names), f"{doc['average']:.1f}"]
    widths = [max(len(h), len(c)) for h, c in zip(heads, cells, strict=True)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True))),
             "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))]
    return "\n".join(lines)


@dataclass
class PaperArgs:
    suite: Literal["biomedicine", "finance", "general"] = "biomedicine"  # which of the paper's tables
    data_dir: str = ""  # AdaptLLM task files (pubmed_qa/test.json, ..., ConviFinQA/test.json); domain suites
    model: str = ""  # HF causal LM directory (an export of this project or any HF model dir)
    output: str = ""  # the scores as JSON (tasks, average, settings)
    add_bos_token: bool = True  # prepend BOS (true for instruction-pretrain models, false for AdaptLLM)
    dtype: str = "auto"  # auto: float16 on a GPU (as the reference), float32 on CPU
    device: str | None = None  # cpu or cuda (null: cuda when available)
    batch_size: int = 8  # requests per forward pass

    ALIASES: ClassVar[dict[str, str]] = {"out": "output"}

    def validate(self) -> None:
        if not self.model or not self.output:
            raise ConfigError("--model and --output are required")
        if self.suite in DOMAINS and not self.data_dir:
            raise ConfigError(f"--data-dir is required for the {self.suite} suite")
        self.dtype = normalize_dtype(self.dtype)
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")


def run(args: PaperArgs) -> int:
    setup_logging()
    _offline()
    # lm-eval warns per task about things this module sets on purpose (a model object, custom datasets);
    # the counts that matter (rows over the context, prompts cut) are this module's own warnings.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("float16" if device.startswith("cuda") else "float32")
    t0 = time.perf_counter()
    if args.suite in DOMAINS:
        doc = evaluate_domain(args, device, dtype)
    else:
        log.warning("%s", UNVERIFIED)
        doc = evaluate_general(args, device, dtype)
    doc["settings"].update({"suite": args.suite, "model": str(args.model), "data_dir": args.data_dir or None,
                            "add_bos_token": args.add_bos_token, "dtype": dtype, "device": device,
                            "batch_size": args.batch_size, "scale": "x100", "seconds": time.perf_counter() - t0})
    atomic_write_json(args.output, doc)
    print(table(doc, args.suite, args.model))
    if args.suite == "general":
        print(f"UNVERIFIED: {UNVERIFIED}")
    log.info("scores -> %s", args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PaperArgs, argv, run, __doc__, errors=(PaperError, PaperDataError))


if __name__ == "__main__":
    sys.exit(main())
