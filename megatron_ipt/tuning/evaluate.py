"""Evaluate an instruction synthesizer on its held-out split.

- :func:`heldout_pair_loss`: mean next-token loss over the pair tokens only (the ``_lossmask``
  twin of the held-out indexed dataset), per document, with an HF model.
- :func:`generation_scores`: with a synthesis engine, (a) the share of held-out contexts whose
  free generation parses into at least one pair, and (b) for each gold instruction, the response
  the model writes (prompted with the context, the earlier gold pairs and ``<QUE> q <ANS>``, up to
  ``</END>``), scored by exact match and token F1 against the gold response.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_ipt.log import get_logger
from megatron_ipt.pairs import ANS, END, PAIR_SEPARATOR, QUE, exact_match, pairs_text, parse_pairs, token_f1
from megatron_ipt.tuning.example import Example

log = get_logger(__name__)


# ------------------------------------------------------------------------------ pair-token loss


def _load_model(model: str | Path | torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model.eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()


@torch.inference_mode()
def heldout_pair_loss(
    model: str | Path | torch.nn.Module, prefix: str | Path, max_documents: int | None = None
) -> dict[str, float]:
    """Mean loss over the tokens the loss mask marks (pairs + closing EOS) of the held-out documents.

    A label at position t+1 counts when ``mask[t+1]`` is 1, exactly as in training. Also returns
    the loss over all tokens up to the last pair token (trailing padding excluded), for comparison.
    """
    from megatron_ipt.data.indexed import IndexedDataset, lossmask_prefix

    lm = _load_model(model)
    docs = IndexedDataset(prefix)
    masks = IndexedDataset(lossmask_prefix(prefix))
    limit = getattr(lm.config, "max_position_embeddings", None) or 1 << 30  # longer documents are cut
    n = len(docs) if max_documents is None else min(len(docs), max_documents)
    pair_sum = all_sum = 0.0
    pair_n = all_n = 0
    for i in range(n):
        mask_np = np.asarray(masks.get(i), dtype=np.float64)
        end = int(np.flatnonzero(mask_np)[-1]) + 1 if mask_np.any() else len(mask_np)  # drop trailing padding
        ids = torch.from_numpy(np.asarray(docs.get(i), dtype=np.int64)[:end])[:limit]
        mask = torch.from_numpy(mask_np[: len(ids)])
        if len(ids) < 2:
            continue
        logits = lm(input_ids=ids[None], use_cache=False).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none").double()
        m = mask[1:]
        pair_sum += float((nll * m).sum())
        pair_n += int(m.sum())
        all_sum += float(nll.sum())
        all_n += len(nll)
    if pair_n == 0:
        raise ValueError(f"{prefix}: no pair tokens in the first {n} documents (empty loss mask?)")
    pair_loss = pair_sum / pair_n
    return {
        "pair_loss": pair_loss,
        "pair_perplexity": math.exp(min(pair_loss, 50.0)),
        "all_token_loss": all_sum / max(all_n, 1),
        "pair_tokens": float(pair_n),
        "documents": float(n),
    }


# -------------------------------------------------------------------------- response scoring

def response_prompt_ids(tokenizer: Any, example: Example, k: int) -> list[int]:
    """BOS + context, then gold pairs before ``k`` and ``<QUE> {instruction k} <ANS>`` (one pairs segment)."""
    from megatron_ipt.synth.rounds import build_prompt_ids

    done = pairs_text(example.pairs[:k]) + (PAIR_SEPARATOR if k else "")
    head = f"{done}{QUE} {example.pairs[k].instruction} {ANS}"
    return build_prompt_ids(tokenizer, [], example.context) + tokenizer.encode(head)


def _fits(ids: list[int], engine: Any, max_new_tokens: int) -> bool:
    return len(ids) + max_new_tokens <= engine.max_model_len


def _free_generation_counts(engine: Any, examples: Sequence[Example], max_new_tokens: int) -> tuple[dict[str, int], int]:
    """Generate from each context that fits and parse the output: (counts, contexts skipped as too long)."""
    from megatron_ipt.pairs import is_degenerate
    from megatron_ipt.synth.engine_types import SamplingParams
    from megatron_ipt.synth.rounds import build_prompt_ids

    prompts, skipped_long = [], 0
    for ex in examples:
        ids = build_prompt_ids(engine.tokenizer, [], ex.context)
        if _fits(ids, engine, max_new_tokens):
            prompts.append(ids)
        else:
            skipped_long += 1
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens)) if prompts else []
    counts = dict.fromkeys(("contexts", "parsed", "pairs", "truncated", "malformed", "degenerate"), 0)
    counts["contexts"] = len(gens)
    for (g,) in gens:
        res = parse_pairs(g.text)
        counts["parsed"] += bool(res.pairs)
        counts["pairs"] += len(res.pairs)
        counts["truncated"] += res.truncated
        counts["malformed"] += res.malformed
        counts["degenerate"] += is_degenerate(g.text)
    return counts, skipped_long


def _gold_response_scores(
    engine: Any, examples: Sequence[Example], response_tokens: int, max_pairs_per_example: int | None
) -> tuple[dict[str, Any], int]:
    """Answer each gold instruction after its context and earlier gold pairs; score against the gold
    response: (scores, prompts skipped as too long)."""
    from megatron_ipt.synth.engine_types import SamplingParams

    prompts, golds, skipped_long = [], [], 0
    for ex in examples:
        n = len(ex.pairs) if max_pairs_per_example is None else min(len(ex.pairs), max_pairs_per_example)
        for k in range(n):
            ids = response_prompt_ids(engine.tokenizer, ex, k)
            if _fits(ids, engine, response_tokens):
                prompts.append(ids)
                golds.append(ex.pairs[k].response)
            else:
                skipped_long += 1
    params = SamplingParams(max_new_tokens=response_tokens, stop=(END,))
    outs = engine.generate(prompts, params) if prompts else []
    em = [exact_match(o[0].text.strip(), gold) for o, gold in zip(outs, golds, strict=True)]
    f1 = [token_f1(o[0].text.strip(), gold) for o, gold in zip(outs, golds, strict=True)]
    return {
        "responses": len(outs),
        "response_exact_match": float(np.mean(em)) if em else float("nan"),
        "response_f1": float(np.mean(f1)) if f1 else float("nan"),
        "responses_closed_with_end": sum(o[0].finish_reason == "stop" for o in outs),
    }, skipped_long


def generation_scores(
    engine: Any,
    examples: Sequence[Example],
    max_new_tokens: int = 400,
    response_tokens: int = 128,
    max_pairs_per_example: int | None = None,
) -> dict[str, Any]:
    """Parse rate of free generations and response EM / token F1 for the gold instructions."""
    free, skipped_contexts = _free_generation_counts(engine, examples, max_new_tokens)
    responses, skipped_prompts = _gold_response_scores(engine, examples, response_tokens, max_pairs_per_example)
    n_gen = free["contexts"]
    return {
        "contexts": n_gen,
        "parse_rate": free["parsed"] / n_gen if n_gen else float("nan"),
        "pairs_per_output": free["pairs"] / n_gen if n_gen else float("nan"),
        "truncated_outputs": free["truncated"],
        "malformed_pieces": free["malformed"],
        "degenerate_outputs": free["degenerate"],
        **responses,
        "skipped_too_long": skipped_contexts + skipped_prompts,
    }
