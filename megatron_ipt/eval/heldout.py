"""Evaluate a Hugging Face causal LM on held-out domain text and held-out context-based tasks.

Two measurements, the demo's stage 6 (and usable on any exported model):

- held-out perplexity: token-weighted next-token loss over raw texts (e.g. PubMed abstracts), each
  text scored alone (BOS + text when the tokenizer has a BOS), ``exp`` of the mean;
- tasks: for each (context, instruction, gold response), the prompt
  ``{context}\\n\\nQuestion: {instruction}\\nAnswer:`` is scored two ways — the mean per-token loss
  of the gold response given the prompt (teacher forcing), and a greedy answer generated through
  the synthesis engine (``megatron_ipt.synth.engines``), compared with the gold answer by exact
  match and token F1 (SQuAD normalisation), or, for multiple-choice tasks, by which option the
  answer names (option accuracy).

The same plain prompt is used for every model so that the start model, the vanilla and the
instruction-pre-trained model are compared on equal terms.

CLI::

    python -m megatron_ipt.eval --model DIR --texts heldout.jsonl --tasks tasks.jsonl --output eval.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from megatron_ipt.config import ConfigError, DType, resolve_dtype, run_cli
from megatron_ipt.data.readers import DataError, iter_records
from megatron_ipt.io import OutputRefused, check_output_file
from megatron_ipt.log import get_logger, setup_logging
from megatron_ipt.pairs import (
    COT_ANSWER,
    COT_TRIGGER,
    OPTIONS_HEADER,
    exact_match,
    normalize_answer,
    token_f1,
)
from megatron_ipt.progress import progress

log = get_logger("megatron_ipt.eval.heldout")
MIN_MAX_LENGTH = 16  # tokens: BOS, a scored token, and a task prompt's "Question: ... Answer:" tail


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


def task_prompt(task: EvalTask) -> str:
    """The plain prompt every model is scored with (no chat template)."""
    return f"{task.context}\n\nQuestion: {task.instruction}\nAnswer:"


# --------------------------------------------------------------------------- input files


def read_texts(path: str | Path, key: str = "text", limit: int | None = None) -> list[str]:
    """Texts from a JSON-lines file of ``{key: str}`` records."""
    texts = []
    for obj, where in iter_records(path):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataError("missing, empty or not a string", where=where, field=key)
        texts.append(value)
        if limit is not None and len(texts) >= limit:
            break
    return texts


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


# --------------------------------------------------------------------------- answer scoring


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


# --------------------------------------------------------------------------- model scoring


def load_model(model_dir: str | Path):
    """An HF causal LM in fp32 for scoring (bf16 autocast is applied per batch)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


def _autocast(bf16: bool):
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16)


def sequence_losses(
    model, sequences: Sequence[tuple[list[int], int]], batch_size: int = 4, bf16: bool = True, desc: str = ""
) -> list[tuple[float, int]]:
    """For each ``(ids, start)``: the summed next-token loss over ``ids[start:]`` and its token count.

    Sequences are batched by length with right padding; loss is computed in fp32.
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    bar = progress(total=sum(len(s[0]) for s in sequences), desc=desc or "scoring", unit="tok", leave=False)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(sequences[i][0]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            seq = sequences[i][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.no_grad(), _autocast(bf16):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(idx):
            seq, start = sequences[i]
            start = max(start, 1)
            pred = logits[row, start - 1 : len(seq) - 1].float()
            target = torch.tensor(seq[start:], device=pred.device)
            loss = torch.nn.functional.cross_entropy(pred, target, reduction="sum")
            results[i] = (float(loss), len(seq) - start)
        bar.update(sum(len(sequences[i][0]) for i in idx))
    bar.close()
    return results


def heldout_perplexity(
    model, tokenizer, texts: Sequence[str], max_length: int = 1024, batch_size: int = 4, bf16: bool = True
) -> dict[str, Any]:
    """Token-weighted held-out loss and perplexity over ``texts`` (each truncated to ``max_length``)."""
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    seqs = [(prefix + ids)[:max_length] for ids in tokenizer.encode_batch(list(texts))]
    scored = sequence_losses(model, [(s, len(prefix)) for s in seqs], batch_size, bf16, desc="perplexity")
    total = sum(loss for loss, _ in scored)
    tokens = sum(n for _, n in scored)
    mean = total / max(tokens, 1)
    # Per-text sums and counts: enough to bootstrap the token-weighted perplexity over texts.
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": tokens, "texts": len(seqs),
            "text_losses": [loss for loss, _ in scored], "text_tokens": [n for _, n in scored]}


def _prompt_ids(tokenizer, task: EvalTask, room: int) -> list[int]:
    """BOS + prompt tokens, the context cut from its end when the prompt exceeds ``room`` tokens."""
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    tail = tokenizer.encode(f"\n\nQuestion: {task.instruction}\nAnswer:")
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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` as a path, or a :class:`DataError` naming what an HF model directory lacks: the
    folder itself, ``config.json``, safetensors weights or tokenizer files."""
    path = Path(model_dir)
    if not path.is_dir():
        raise DataError(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise DataError(f"{path}: not a Hugging Face model directory (no config.json)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise DataError(f"{path}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(f"{path}: no tokenizer files ({' or '.join(TOKENIZER_FILES)})")
    return path


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _load(model_dir: str | Path, load_tokenizer: Any) -> tuple[Any, Any]:
    """Tokenizer and model of ``model_dir``, or a :class:`DataError` naming what is missing."""
    from megatron_ipt.tokenizer import TokenizerError

    path = check_model_dir(model_dir)
    try:
        tokenizer = load_tokenizer(path)
    except (TokenizerError, OSError, ValueError) as err:
        raise DataError(f"{path}: no usable tokenizer files ({_first_line(err)})") from err
    try:
        model = load_model(path)
    except Exception as err:  # a torn safetensors file raises safetensors' own error type: one line all the same
        raise DataError(f"{path}: cannot load the model ({_first_line(err)})") from err
    return tokenizer, model


def evaluate_model(
    model_dir: str | Path,
    texts: Sequence[str] = (),
    tasks: Sequence[EvalTask] = (),
    *,
    max_length: int = 1024,
    max_new_tokens: int = 32,
    batch_size: int = 4,
    bf16: bool = True,
) -> dict[str, Any]:
    """Held-out perplexity on ``texts`` and task scores on ``tasks`` for the HF model at ``model_dir``."""
    import gc

    from megatron_ipt.synth.engines import EngineConfig
    from megatron_ipt.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    tokenizer, model = _load(model_dir, load_tokenizer)
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    result: dict[str, Any] = {"model": str(model_dir)}
    if texts:
        result["heldout"] = heldout_perplexity(model, tokenizer, texts, max_length, batch_size, bf16)
        log.info("%s: held-out perplexity %.3f over %d tokens", model_dir, result["heldout"]["perplexity"],
                 result["heldout"]["tokens"])
    if tasks:
        loss, loss_tokens = answer_losses(model, tokenizer, tasks, max_length, batch_size, bf16)
        del model
        gc.collect()
        # fp32 for the one-shot generation: on CPU, bf16 weights paid a long first-call warm-up.
        engine = EngineConfig(kind="hf", model=str(model_dir), dtype="float32").build(tokenizer=tokenizer)
        generations = generate_answers(engine, tasks, max_new_tokens, max_length)
        result["tasks"] = asdict(score_tasks(tasks, generations, loss, loss_tokens))
        log.info("%s: answer loss %.3f, EM %.3f, F1 %.3f, option accuracy %.3f", model_dir, loss,
                 result["tasks"]["exact_match"], result["tasks"]["f1"], result["tasks"]["option_accuracy"])
    result["seconds"] = time.perf_counter() - t0
    return result


@dataclass
class EvaluateArgs:
    model: str = ""  # HF model directory (config, safetensors, tokenizer)
    texts: str | None = None  # JSONL of held-out texts ({'text': ...}) for perplexity
    text_key: str = "text"  # field holding the text in --texts
    tasks: str | None = None  # JSONL of tasks: {context, instruction, response} or {context, pairs}
    limit_texts: int | None = None  # score only the first N texts
    limit_tasks: int | None = None  # score only the first N tasks
    max_length: int = 1024  # tokens per scored sequence
    max_new_tokens: int = 32  # greedy answer length
    batch_size: int = 4  # sequences scored together
    # scoring: auto (bf16 autocast on a GPU, fp32 on CPU), bfloat16 (autocast) or float32 (--fp32). On a
    # CPU without native bf16 matmuls autocast scored 5.5x slower than fp32 (SmolLM2-135M, 2 cores).
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    output: str | None = None  # write the results as JSON here (else print them)

    ALIASES: ClassVar[dict[str, str]] = {"out": "output", "fp32": "dtype=float32"}

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required")
        if not Path(self.model).is_dir():
            raise ConfigError(f"--model {self.model}: not a model directory")
        if not self.texts and not self.tasks:
            raise ConfigError("give --texts and/or --tasks")
        for name in ("limit_texts", "limit_tasks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1 (or left out for all), got {getattr(self, name)}")
        # BOS and one scored token at least; the tasks' prompts need room for their question too.
        if self.max_length < MIN_MAX_LENGTH:
            raise ConfigError(f"--max_length must be at least {MIN_MAX_LENGTH} tokens, got {self.max_length}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")


def scoring_bf16(dtype: str) -> bool:
    """Whether ``--dtype`` means bf16 autocast (``auto``: only when a GPU is there)."""
    return resolve_dtype(dtype) == DType.BF16


def run(args: EvaluateArgs) -> int:
    setup_logging()
    if args.output:
        check_output_file(args.output)  # before any scoring
    texts = read_texts(args.texts, args.text_key, args.limit_texts) if args.texts else []
    tasks = read_tasks(args.tasks, args.limit_tasks) if args.tasks else []
    for given, got, what in ((args.texts, texts, "texts"), (args.tasks, tasks, "tasks")):
        if given and not got:
            raise DataError(f"{given}: no {what} in it (empty or blank lines only)")
    result = evaluate_model(args.model, texts, tasks, max_length=args.max_length,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            bf16=scoring_bf16(args.dtype))
    if args.output:
        from megatron_ipt.io import atomic_write_json

        atomic_write_json(args.output, result)
    else:
        print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(EvaluateArgs, argv, run, __doc__, errors=(DataError, OutputRefused))


if __name__ == "__main__":
    sys.exit(main())
