"""Park points: a test stops a real process at an exact place, whatever the machine's speed.

Fault-injection tests kill or signal a running job at a chosen moment. Waiting a wall-clock time
for that moment races the job: on an idle machine it has moved on or finished. Instead the test
starts the process with

- ``MEGATRON_IPT_PARK_AT=POINT``: the point to stop at, e.g. ``train_step:3``;
- ``MEGATRON_IPT_PARK_DIR=DIR``: where the process says it has stopped.

The first time the process reaches ``POINT`` it writes ``DIR/<pid>`` (holding the point's name)
and sleeps until that file is removed (the test releases it) or the process is killed. It parks
once: later passes through the same point go on. Every rank of a job reaches collective points
(all of them park); a rank-0 point parks rank 0 while the other ranks wait in their next collective.

Unset (every normal run), nothing happens: the variables are read once at import and each point
costs one ``is None`` check. The points, in the order a run passes them:

- ``preprocess_checkpoint:F`` -- preprocessing wrote a resume checkpoint (``PREFIX.progress.json``)
  while at input file index ``F`` (first such checkpoint);
- ``train_step:N`` -- training step ``N`` is done, its metrics line (if logged) written, not yet saved;
- ``save_shards:N`` -- checkpoint ``N``: this rank's DeepSpeed shards written, its RNG file not;
- ``save_commit:N`` -- checkpoint ``N``: every rank's files written, ``meta.json`` (the commit) not;
- ``save_committed:N`` -- checkpoint ``N`` committed, older ones not yet pruned (rank 0 only).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from megatron_ipt.io import atomic_write_text
from megatron_ipt.log import get_logger

log = get_logger(__name__)

AT_ENV = "MEGATRON_IPT_PARK_AT"
DIR_ENV = "MEGATRON_IPT_PARK_DIR"

_at: str | None = os.environ.get(AT_ENV) or None


def park_point(where: str, n: int | None = None) -> None:
    """Park here if this is the point named by ``MEGATRON_IPT_PARK_AT`` (``where`` or ``where:n``)."""
    if _at is None:
        return
    _park(where if n is None else f"{where}:{n}")


def _park(point: str) -> None:
    global _at
    if point != _at:
        return
    _at = None  # park once
    folder = os.environ.get(DIR_ENV)
    if not folder:
        raise RuntimeError(f"{AT_ENV}={point} is set but {DIR_ENV} (where to say so) is not")
    marker = Path(folder) / str(os.getpid())
    log.warning("parked at %s (%s) until %s is removed", point, AT_ENV, marker)  # logged before the marker
    atomic_write_text(marker, point + "\n")
    while marker.exists():
        time.sleep(0.05)
