"""Peak memory of the next-token loss: full fp32 logits vs the chunked linear + cross-entropy.

Each arm runs forward + backward of an output head (hidden states -> vocabulary -> masked loss sum)
in a fresh process, and reports the memory it added on top of its inputs: peak RSS on CPU, peak
allocated memory on CUDA. Default shape: an 8B Llama-3 head (hidden 4096, vocab 128,256) over
4 x 2,048 tokens, in fp32 on CPU (needs ~20 GB free for the full-logits arm).

    python benchmarks/loss_memory.py                 # the 8B-shaped head, CPU, fp32
    python benchmarks/loss_memory.py --tiny          # seconds: hidden 64, vocab 4,000, 2 x 256 tokens
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_arm(arm: str, hidden: int, vocab: int, batch: int, seq: int, dtype_name: str, device: str) -> dict:
    """One arm in this process: memory added by forward + backward, and the loss value."""
    import torch

    from megatron_ipt.train.loss import linear_cross_entropy_sum, masked_loss_sum

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(batch, seq, hidden, generator=gen) * 0.5).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * 0.02).to(device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    mask = torch.ones(batch, seq, device=device)
    # Gradients of both inputs exist in either arm; allocate them up front so only the loss differs.
    h.grad, w.grad = torch.zeros_like(h), torch.zeros_like(w)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_peak_bytes()
    if arm == "full":
        loss = masked_loss_sum(h @ w.t(), labels, mask)
    else:
        loss = linear_cross_entropy_sum(h, w, labels, mask)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_peak_bytes() - base
    return {"arm": arm, "peak_bytes": int(peak), "loss": loss.item(), "grad_w_norm": float(w.grad.float().norm())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tiny", action="store_true", help="hidden 64, vocab 4,000, 2 x 256 tokens")
    parser.add_argument("--arm", choices=("full", "chunked"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.tiny:
        args.hidden, args.vocab, args.batch, args.seq = 64, 4000, 2, 256
    shape = (args.hidden, args.vocab, args.batch, args.seq, args.dtype, args.device)
    if args.arm:
        print(json.dumps(run_arm(args.arm, *shape)))
        return 0
    results = {}
    for arm in ("full", "chunked"):  # a fresh process each: a peak RSS never goes back down
        cmd = [sys.executable, __file__, "--arm", arm, "--hidden", str(args.hidden), "--vocab", str(args.vocab),
               "--batch", str(args.batch), "--seq", str(args.seq), "--dtype", args.dtype, "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[arm] = json.loads(out.strip().splitlines()[-1])
    full, lean = results["full"], results["chunked"]
    print(f"head: hidden {args.hidden}, vocab {args.vocab:,}, {args.batch} x {args.seq:,} tokens, "
          f"{args.dtype} on {args.device}")
    for r in (full, lean):
        print(f"{r['arm']:8} peak +{r['peak_bytes'] / 2**20:10.1f} MiB   loss {r['loss']:.6f}")
    rel = abs(full["loss"] - lean["loss"]) / abs(full["loss"])
    print(f"full / chunked peak memory: {full['peak_bytes'] / max(lean['peak_bytes'], 1):.1f}x "
          f"(loss relative difference {rel:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
