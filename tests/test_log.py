"""megatron_ipt.log: the one logger writes to the stderr of the moment (tools run in-process in tests)."""

from __future__ import annotations

import io
import sys

from megatron_ipt.log import get_logger, setup_logging


def test_the_handler_follows_a_swapped_and_closed_stderr(monkeypatch) -> None:
    setup_logging(rank=0)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    get_logger("x").warning("to the first")
    first.close()  # what pytest's capture does to a stream between tests
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("x").warning("to the second")
    assert "to the second" in second.getvalue() and "Logging error" not in second.getvalue()
