"""Evaluate a Hugging Face causal LM on held-out domain text and held-out context-based tasks.

Two measurements, the demo's stage 6 (and usable on any exported model):

- held-out perplexity: token-weighted next-token loss over raw texts (e.g. PubMed abstracts), each
  text scored alone (BOS + text when the tokenizer has a BOS), ``exp`` of the mean;
- tasks: held-out context-based tasks, scored by gold-response loss and by generated answers
  (:mod:`megatron_ipt.eval.tasks`).

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from megatron_ipt.config import ConfigError, DType, resolve_dtype, run_cli
from megatron_ipt.data.inputs import DataError
from megatron_ipt.data.readers import iter_records
from megatron_ipt.eval.scoring import load_tokenizer_and_model, sequence_losses
from megatron_ipt.eval.tasks import (
    EvalTask,
    answer_losses,
    generate_answers,
    read_tasks,
    score_tasks,
)
from megatron_ipt.io import OutputRefused, check_output_file
from megatron_ipt.log import get_logger, setup_logging

log = get_logger("megatron_ipt.eval.heldout")
MIN_MAX_LENGTH = 16  # tokens: BOS, a scored token, and a task prompt's "Question: ... Answer:" tail


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
    tokenizer, model = load_tokenizer_and_model(model_dir, load_tokenizer)
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
        # fp32 for the one-shot generation: on CPU, bf16 weights pay a long first-call warm-up.
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
    # CPU without native bf16 matmuls autocast scores 5.5x slower than fp32 (SmolLM2-135M, 2 cores).
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
