"""``python -m megatron_ipt.train`` with rank 0's lone phases (the universal-checkpoint conversion and
the export) held until ``SLOW_RANK0_S`` seconds have passed, to test that the other ranks outwait
the collective timeout. The hold is relative to the configured timeout, not a guess at machine speed."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any


def _held(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        time.sleep(float(os.environ["SLOW_RANK0_S"]))
        print(f"slow_rank0_train: {what} held {os.environ['SLOW_RANK0_S']} s on rank {os.environ['RANK']}",
              flush=True)
        return fn(*args, **kwargs)

    return run


if __name__ == "__main__":
    import deepspeed.checkpoint.ds_to_universal as ds_to_universal

    import megatron_ipt.train.export as export
    from megatron_ipt.train.__main__ import console

    export.export_checkpoint = _held(export.export_checkpoint, "export")
    ds_to_universal.main = _held(ds_to_universal.main, "universal conversion")
    sys.argv[0] = "megatron_ipt.train"
    console()
