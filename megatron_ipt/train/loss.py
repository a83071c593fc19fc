"""Token-weighted masked next-token loss, exact under gradient accumulation and data parallelism.

The step loss is sum(loss * mask) over every micro-batch of every rank divided by the step's total
mask count. Each micro-batch's backward gets its own sum divided by that global count, scaled back
up by the averaging DeepSpeed applies (1/grad_accum locally, 1/world across ranks).

Training computes that sum through the hidden states (``linear_cross_entropy_sum``): logits exist one
chunk of tokens at a time, so the fp32 (batch, seq, vocab) tensor of ``masked_loss_sum`` (about 4 GB
per 8K-token sample at a 128K vocabulary) is never materialized.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, S, V) logits and (B, S) next-token labels -> (B, S) cross-entropy in fp32."""
    b, s, v = logits.shape
    return F.cross_entropy(logits.float().reshape(b * s, v), labels.reshape(b * s), reduction="none").reshape(b, s)


def masked_loss_sum(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return (token_losses(logits, labels) * loss_mask).sum()


def global_token_count(micro_batches: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Loss tokens of this optimizer step over all micro-batches and all ranks (all-reduced)."""
    import torch.distributed as dist

    host = sum(mb["loss_mask"].to(torch.float64).sum() for mb in micro_batches)  # the masks are host tensors
    n = torch.as_tensor(host, dtype=torch.float64).to(device, non_blocking=True)
    if dist.is_initialized():
        dist.all_reduce(n)
    return n


def backward_scale(grad_accum: int, world_size: int) -> float:
    """Factor undoing DeepSpeed's gradient averaging over accumulation steps and ranks."""
    return float(grad_accum * world_size)


# -- the memory-lean loss: a chunked linear + cross-entropy through the hidden states -----------------
# Chunks may hold this many bytes of fp32 logits even when that exceeds the hidden states' size: each
# chunk also adds its (vocab, hidden) weight gradient into the fp32 accumulator, so tiny chunks of a small
# model's large vocabulary cost more in memory traffic than they save (SmolLM2-135M at 4 x 512 tokens
# gets 8 chunks of 256 tokens rather than 64 of 32). An 8B head's chunks are above this already.
CHUNK_LOGITS_BYTES = 64 << 20


def chunk_tokens_for(n_tokens: int, hidden: int, vocab: int) -> int:
    """Tokens per chunk: a chunk's (tokens, vocab) logits about the size of all (tokens, hidden) states,
    or up to ``CHUNK_LOGITS_BYTES`` of fp32 logits when that is more (a power of two, <= n_tokens)."""
    per = math.ceil(n_tokens / max(1, math.ceil(vocab / hidden)))
    by_size = 1 << max(0, per - 1).bit_length()
    by_bytes = 1 << max(0, (CHUNK_LOGITS_BYTES // (4 * vocab)).bit_length() - 1)
    return max(1, min(n_tokens, max(by_size, by_bytes)))


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked CE sum of one chunk and, if wanted, d(sum)/d(logits) in the weight's dtype."""
    logits = (h @ weight.t()).float()  # the same rounding as lm_head(...).float()
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, labels[:, None]).squeeze(1)
    loss = ((lse - target) * mask).sum()
    if not want_grad:
        return loss, None
    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    probs[torch.arange(labels.numel(), device=labels.device), labels] -= 1.0
    return loss, probs.mul_(mask[:, None]).to(weight.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(CE(hidden @ W^T) * mask) with both gradients computed chunk by chunk in the forward.

    Only one chunk's logits exist at a time; the backward scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, mask, chunk):  # noqa: ANN001, ANN205
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            sl = slice(start, start + chunk)
            loss, g = _chunk_loss(hidden[sl], weight, labels[sl], mask[sl], True)
            total += loss
            grad_h[sl] = g @ weight
            grad_w += (g.t() @ hidden[sl]).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             loss_mask: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """``masked_loss_sum(hidden @ weight.T, labels, loss_mask)`` without the full (B, S, V) logits.

    ``hidden``: (B, S, H) final hidden states; ``weight``: (V, H) output embedding. Labels of -100
    count as masked, as in ``F.cross_entropy``. Exact: the same value and gradients in fp32.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1).to(h.device)
    mask = loss_mask.reshape(-1).to(device=h.device, dtype=torch.float32)
    ignored = labels == -100  # masked unconditionally: testing for any would be a host sync
    mask, labels = mask.masked_fill(ignored, 0.0), labels.masked_fill(ignored, 0)
    chunk = chunk_tokens or chunk_tokens_for(h.shape[0], h.shape[1], weight.shape[0])
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, labels, mask, chunk)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk):
        sl = slice(start, start + chunk)
        total += _chunk_loss(h[sl], weight, labels[sl], mask[sl], False)[0]
    return total


def attach_chunked_loss(model: torch.nn.Module) -> torch.nn.Module:
    """Let ``model(..., labels=, loss_mask=)`` return the masked loss sum through the chunked head.

    The base model gives the hidden states; ``lm_head`` is then *called* with them (so ZeRO-3's
    module hooks gather and release its weight as usual) and computes the loss chunk by chunk. A call
    without ``loss_mask`` is the unchanged transformers forward (logits), so the model stays usable.
    """
    head, hf_forward = model.lm_head, model.forward

    def head_forward(hidden: torch.Tensor, labels: torch.Tensor | None = None,
                     loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        if loss_mask is None:
            return F.linear(hidden, head.weight, head.bias)
        if head.bias is not None:
            raise ValueError("the chunked loss supports an lm_head without bias (Llama/Mistral)")
        return linear_cross_entropy_sum(hidden, head.weight, labels, loss_mask)

    def forward(*args: Any, loss_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        if loss_mask is None:
            return hf_forward(*args, labels=labels, **kwargs)
        hidden = model.get_decoder()(*args, **kwargs).last_hidden_state
        return head(hidden, labels, loss_mask)

    head.forward = head_forward
    model.forward = forward
    return model
