"""``python -m megatron_ipt.demo --size small --out demo_out`` (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from megatron_ipt.demo.sizes import SIZES, get_size, with_settings
from megatron_ipt.demo.stages import DemoError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_ipt.demo",
        description="Instruction Pre-Training in miniature: PubMed corpus -> tuned SmolLM2 synthesizer -> "
        "M-round synthesis -> domain corpus -> continual pre-training (instruct vs vanilla, ZeRO-3) -> "
        "evaluation -> OUT/REPORT.md. Rerunning resumes after the last finished stage.",
    )
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="tiny: smoke test with a tiny random model (~2 min); small: ~20 min on 2 CPU "
                        "cores (default); medium: ~3x small")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one budget of the size, e.g. --set pretrain_seconds=600 or "
                        "--set train_tokens_per_s=150 (repeatable; see megatron_ipt/demo/sizes.py)")
    parser.add_argument("--min-free-gb", type=float, default=None,
                        help="disk space to require under --out (default: by size)")
    args = parser.parse_args(argv)
    from megatron_ipt.log import setup_logging

    setup_logging()
    from megatron_ipt.demo.run import run_demo

    try:
        size = with_settings(get_size(args.size), args.set)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    try:
        report = run_demo(size, args.out, args.min_free_gb)
    except DemoError as err:
        for line in str(err).splitlines():
            print(f"demo: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; rerun the same command to resume after the last finished stage", file=sys.stderr)
        return 130
    print(f"\ndemo finished in {(time.perf_counter() - start) / 60:.1f} min: see {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
