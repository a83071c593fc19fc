"""Scoring an HF causal LM on CPU or GPU: a checked model directory, the model in fp32 (bf16 autocast
per batch on request), and the summed next-token loss of token sequences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron_ipt.data.inputs import DataError
from megatron_ipt.log import get_logger
from megatron_ipt.progress import progress

log = get_logger(__name__)


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


def load_tokenizer_and_model(model_dir: str | Path, load_tokenizer: Any) -> tuple[Any, Any]:
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
