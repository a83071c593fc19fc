"""Held-out context-based tasks: for each (context, instruction, gold response), the prompt
``{context}\n\nQuestion: {instruction}\nAnswer:`` is scored two ways: the mean per-token loss of
the gold response given the prompt (teacher forcing), and a greedy answer generated through the
synthesis engine, compared with the gold answer by exact match and token F1 (SQuAD normalisation),
or, for multiple-choice tasks, by which option the answer names (option accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_ipt.data.inputs import DataError
from megatron_ipt.data.readers import iter_records
from megatron_ipt.eval.scoring import sequence_losses
from megatron_ipt.pairs import (
    COT_ANSWER,
    COT_TRIGGER,
    OPTIONS_HEADER,
    exact_match,
    normalize_answer,
    token_f1,
)


@dataclass(frozen=True)
class EvalTask:
    """One held-out question about a context. ``answer`` is the short gold answer compared with
    generations (the response itself, or the part after "Therefore, the answer is")."""

    context: str
    instruction: str
    response: str
    answer: str
    options: tuple[str, ...] = ()
    dataset: str = ""

    @classmethod
    def from_pair(cls, context: str, instruction: str, response: str, dataset: str = "") -> EvalTask:
        answer = response.rsplit(COT_ANSWER, 1)[1] if COT_ANSWER in response else response
        options: tuple[str, ...] = ()
        if OPTIONS_HEADER in instruction:
            block = instruction.split(OPTIONS_HEADER, 1)[1]
            options = tuple(line[2:].strip() for line in block.split("\n") if line.startswith("- "))
        return cls(context, instruction, response, answer.strip().rstrip("."), options, dataset)

    @property
    def chain_of_thought(self) -> bool:
        return self.instruction.endswith(COT_TRIGGER.strip())


def question_prompt(instruction: str) -> str:
    """The part of the plain prompt (no chat template) that follows the context."""
    return f"\n\nQuestion: {instruction}\nAnswer:"


def read_tasks(path: str | Path, limit: int | None = None) -> list[EvalTask]:
    """Tasks from JSON lines: ``{context, instruction, response[, dataset]}`` or
    ``{context, pairs: [{instruction, response}, ...][, dataset]}`` (one task per pair)."""
    tasks: list[EvalTask] = []
    for obj, where in iter_records(path):
        context = obj.get("context")
        if not isinstance(context, str) or not context.strip():
            raise DataError("missing, empty or not a string", where=where, field="context")
        pairs = obj["pairs"] if "pairs" in obj else [obj]
        if not isinstance(pairs, list):
            raise DataError("must be a list", where=where, field="pairs")
        for j, pair in enumerate(pairs):
            for key in ("instruction", "response"):
                if not isinstance(pair, dict) or not isinstance(pair.get(key), str) or not pair[key].strip():
                    if "pairs" in obj:
                        raise DataError(f"pairs[{j}].{key!r} missing, empty or not a string", where=where)
                    raise DataError("missing, empty or not a string", where=where, field=key)
            tasks.append(EvalTask.from_pair(context, pair["instruction"], pair["response"], obj.get("dataset", "")))
            if limit is not None and len(tasks) >= limit:
                return tasks
    return tasks


def extract_answer(generation: str) -> str:
    """The answer part of a generation: first line, or what follows "Therefore, the answer is"."""
    if COT_ANSWER.strip() in generation:
        generation = generation.rsplit(COT_ANSWER.strip(), 1)[1]
    lines = [ln for ln in generation.strip().split("\n") if ln.strip()]
    return lines[0].strip().rstrip(".") if lines else ""


def choose_option(answer: str, options: Sequence[str]) -> int | None:
    """Index of the option an answer names: an exact (normalised) match, else the unique option
    with the best token F1 (> 0); None when the answer names none."""
    norm = normalize_answer(answer)
    for i, opt in enumerate(options):
        if normalize_answer(opt) == norm:
            return i
    scores = [token_f1(answer, opt) for opt in options]
    best = max(scores, default=0.0)
    if best <= 0 or scores.count(best) > 1:
        return None
    return scores.index(best)


@dataclass
class TaskScores:
    n: int = 0
    answer_loss: float = float("nan")  # mean nats per gold-response token (teacher forcing)
    answer_tokens: int = 0
    exact_match: float = float("nan")  # over free-form tasks
    f1: float = float("nan")
    n_free_form: int = 0
    option_accuracy: float = float("nan")  # over multiple-choice tasks
    n_multiple_choice: int = 0
    examples: list[dict] = field(default_factory=list)


def _prompt_ids(tokenizer, task: EvalTask, room: int) -> list[int]:
    """BOS + prompt tokens, the context cut from its end when the prompt exceeds ``room`` tokens."""
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    tail = tokenizer.encode(question_prompt(task.instruction))
    context = tokenizer.encode(task.context)
    keep = max(room - len(prefix) - len(tail), 0)
    return prefix + context[:keep] + tail


def answer_losses(model, tokenizer, tasks: Sequence[EvalTask], max_length: int = 1024, batch_size: int = 4,
                  bf16: bool = True) -> tuple[float, int]:
    """Mean per-token loss of the gold responses given their prompts, and the token count."""
    seqs = []
    for task in tasks:
        response = tokenizer.encode(" " + task.response)[: max_length // 2]
        prompt = _prompt_ids(tokenizer, task, max_length - len(response))
        seqs.append((prompt + response, len(prompt)))
    scored = sequence_losses(model, seqs, batch_size, bf16, desc="answer loss")
    tokens = sum(n for _, n in scored)
    return sum(loss for loss, _ in scored) / max(tokens, 1), tokens


def generate_answers(engine, tasks: Sequence[EvalTask], max_new_tokens: int = 32, max_length: int = 1024) -> list[str]:
    """Greedy answers through the synthesis engine (the answer is the first non-empty line)."""
    from megatron_ipt.synth.engine_types import SamplingParams

    budget = max_new_tokens * 8 if any(t.chain_of_thought for t in tasks) else max_new_tokens
    prompts = [_prompt_ids(engine.tokenizer, t, max_length - budget) for t in tasks]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1, stop=["\nQuestion:"])
    outputs = engine.generate(prompts, params)
    return [gens[0].text for gens in outputs]


def score_tasks(tasks: Sequence[EvalTask], generations: Sequence[str], loss: float, loss_tokens: int,
                keep_examples: int = 5) -> TaskScores:
    """Exact match / F1 over free-form tasks, option accuracy over multiple-choice ones."""
    scores = TaskScores(n=len(tasks), answer_loss=loss, answer_tokens=loss_tokens)
    em, f1, acc = [], [], []
    for task, gen in zip(tasks, generations, strict=True):
        answer = extract_answer(gen)
        if task.options:
            gold = choose_option(task.answer, task.options)
            acc.append(float(gold is not None and choose_option(answer, task.options) == gold))
        else:
            em.append(exact_match(answer, task.answer))
            f1.append(token_f1(answer, task.answer))
        if len(scores.examples) < keep_examples:
            scores.examples.append({"question": task.instruction, "gold": task.answer, "generated": answer})
    if em:
        scores.exact_match, scores.f1, scores.n_free_form = sum(em) / len(em), sum(f1) / len(f1), len(em)
    if acc:
        scores.option_accuracy, scores.n_multiple_choice = sum(acc) / len(acc), len(acc)
    return scores
