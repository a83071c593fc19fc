"""The one progress helper: who shows progress, how, with totals and ETA."""

from __future__ import annotations

import io
import logging

import pytest

from megatron_ipt.progress import format_eta, progress, progress_mode


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "enabled", "stream", "mode"),
    [
        ({}, None, Tty(), "bar"),  # an interactive terminal on rank 0
        ({}, True, io.StringIO(), "log"),  # a batch log (Slurm's file, a pipe): periodic lines
        ({}, False, Tty(), "off"),  # the tool's --progress=false
        ({"RANK": "1", "WORLD_SIZE": "2"}, None, Tty(), "off"),  # only rank 0 reports
        ({"SLURM_PROCID": "3", "SLURM_STEP_ID": "0"}, None, Tty(), "off"),
        ({"MEGATRON_IPT_PROGRESS": "0"}, True, Tty(), "off"),  # the one switch wins
        ({"MEGATRON_IPT_PROGRESS": "off"}, None, Tty(), "off"),
        ({"MEGATRON_IPT_PROGRESS": "log"}, None, Tty(), "log"),
        ({"MEGATRON_IPT_PROGRESS": "bar"}, False, io.StringIO(), "bar"),
        ({"MEGATRON_IPT_PROGRESS": "1"}, None, io.StringIO(), "log"),  # 1: the automatic choice
    ],
)
def test_one_on_off_convention(env: dict, enabled: bool | None, stream: io.StringIO, mode: str) -> None:
    assert progress_mode(enabled, env, stream) == mode


def test_format_eta() -> None:
    assert [format_eta(s) for s in (0, 59.6, 65, 3723, -4)] == ["0:00", "1:00", "1:05", "1:02:03", "0:00"]


@pytest.fixture()
def lines(monkeypatch):
    """What the log mode prints, one entry per log record."""
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    logger = logging.getLogger("megatron_ipt.progress")
    handler = Keep()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_log_mode_reports_count_total_rate_and_eta(monkeypatch, lines) -> None:
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS", "log")
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS_EVERY", "0")  # a line per update
    assert list(progress(range(4), desc="reading", unit="rec")) == [0, 1, 2, 3]  # total from len()
    assert len(lines) == 4
    assert lines[1].startswith("reading: 2/4 rec (50%), ") and " rec/s, ETA " in lines[1]
    lines.clear()
    with progress(desc="tokenizing", unit="doc", initial=10) as bar:  # no total: count and rate only
        bar.set_postfix(tok_s="1,234")
        bar.update(5)
    assert len(lines) == 1 and lines[0].startswith("tokenizing: 15 doc, ") and "ETA" not in lines[0]
    assert lines[0].endswith(", tok_s=1,234")


def test_log_mode_is_quiet_between_intervals(monkeypatch, lines) -> None:
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS", "log")
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS_EVERY", "3600")
    assert sum(progress(range(1000), desc="x")) == sum(range(1000))
    assert lines == []


def test_off_and_bar_modes(monkeypatch, capsys, lines) -> None:
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS", "off")
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS_EVERY", "0")
    bar = progress(total=3, desc="quiet")
    bar.update(3)
    bar.close()
    assert bar.n == 3 and lines == [] and capsys.readouterr().err == ""
    monkeypatch.setenv("MEGATRON_IPT_PROGRESS", "bar")
    assert list(progress(["a", "b", "c"], desc="shown", unit="text")) == ["a", "b", "c"]
    err = capsys.readouterr().err
    assert "shown" in err and "3/3" in err and "text" in err and lines == []


def test_training_log_line_shows_step_total_and_eta(tmp_path) -> None:
    from megatron_ipt.train.metrics import MetricsWriter

    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    logger, handler = logging.getLogger("megatron_ipt.train.metrics"), Keep()
    logger.addHandler(handler)
    old, _ = logger.level, logger.setLevel(logging.INFO)
    try:
        writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
        writer.write(5, "train", {"loss": 1.5}, total=10, eta_s=65)
        writer.write(6, "eval", {"loss": 1.25})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert got[-2:] == ["train step 5/10 (ETA 1:05): loss=1.5", "eval step 6: loss=1.25"]
