"""The one logging setup: rank-aware console format, info on rank 0, warnings everywhere."""

from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted: a tool run in-process after its
    stderr was swapped (and the old stream closed) still logs, instead of printing a logging error."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(rank: int | None = None, level: int | str | None = None) -> None:
    """Configure the root ``megatron_ipt`` logger once per process."""
    global _CONFIGURED
    if rank is None:
        from megatron_ipt.dist_env import process_rank

        rank = process_rank()
    if level is None:
        level = os.environ.get("MEGATRON_IPT_LOG_LEVEL", "INFO" if rank == 0 else "WARNING")
    logger = logging.getLogger("megatron_ipt")
    logger.setLevel(level)
    if not _CONFIGURED:
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        logger.addHandler(handler)
        logger.propagate = False
        _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    """``get_logger(__name__)`` inside the package; children of ``megatron_ipt``."""
    if not name.startswith("megatron_ipt") and not name.startswith("data_tools"):
        name = f"megatron_ipt.{name}"
    if name.startswith("data_tools"):
        name = f"megatron_ipt.{name}"
    return logging.getLogger(name)
