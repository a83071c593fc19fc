"""The one progress helper: a bar on an interactive terminal, a periodic log line in batch logs.

One convention decides how progress shows, everywhere:

- ``MEGATRON_IPT_PROGRESS`` (``bar``, ``log``, ``off``; ``1``/``0`` mean auto/off) wins when set;
- else a caller's ``enabled=False`` (a tool's ``--progress=false``) turns it off;
- else only rank 0 shows progress: a tqdm bar when stderr is a terminal, otherwise (Slurm logs,
  pipes) one log line every ``MEGATRON_IPT_PROGRESS_EVERY`` seconds (default 60) with the count,
  the rate and, where the total is known, the share done and the ETA.

``progress(...)`` returns an object with ``update(n)``, ``set_postfix(**values)``, ``close()`` and
iteration over the wrapped iterable, whatever the mode; it is also a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from megatron_ipt.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")
MODES = ("bar", "log", "off")


def progress_mode(enabled: bool | None = None, environ: dict[str, str] | None = None, stream: Any = None) -> str:
    """``"bar"``, ``"log"`` or ``"off"`` by the convention above."""
    env = os.environ if environ is None else environ
    forced = env.get("MEGATRON_IPT_PROGRESS", "").strip().lower()
    if forced in ("0", "off", "false", "no"):
        return "off"
    if forced in MODES:
        return forced
    if enabled is False:
        return "off"
    from megatron_ipt.dist_env import process_rank

    if process_rank(env) != 0:
        return "off"
    stream = sys.stderr if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "log"


def format_eta(seconds: float) -> str:
    """``"1:02:03"`` / ``"4:05"``."""
    s = int(round(max(seconds, 0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts work done; shows it as the mode says (see the module docstring)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        mode: str,
        every_s: float,
        **bar_args: Any,
    ) -> None:
        self.iterable, self.total, self.desc, self.unit, self.mode = iterable, total, desc, unit, mode
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)  # type: ignore[arg-type]
        self.n = self.initial = initial
        self.every_s = every_s
        self.start = self._last = time.monotonic()
        self.postfix: dict[str, Any] = {}
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, **bar_args)

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "progress() without an iterable: call update()"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            log.info("%s", self.line())

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def line(self) -> str:
        """``desc: n/total unit (p%), r unit/s, ETA m:ss, k=v`` (what the log mode prints)."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:,.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {format_eta((self.total - self.n) / rate)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    initial: int = 0,
    enabled: bool | None = None,
    **bar_args: Any,
) -> Progress:
    """Progress over ``iterable`` (or counted with ``update``); ``total`` defaults to ``len(iterable)``.

    ``enabled=False`` is a caller's off switch; ``bar_args`` go to tqdm in bar mode (``leave=False``).
    """
    every = float(os.environ.get("MEGATRON_IPT_PROGRESS_EVERY", "60"))
    return Progress(iterable, total, desc, unit, initial, progress_mode(enabled), every, **bar_args)
