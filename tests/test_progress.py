"""speechmerge.progress: periodic progress lines instead of a bar in logs, with a fake clock;
the closing throughput lines of a loop and of a job (logutil.job_log)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from speechmerge import progress
from speechmerge.logutil import job_log
from speechmerge.progress import Progress, fmt_seconds, track


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="speechmerge.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "speechmerge.progress"]


def test_one_line_per_interval_not_per_step(lines):
    clock = Clock()
    p = Progress(100, "train", unit="step", items="utt", interval=30, tty=False, clock=clock)
    for _ in range(100):
        clock.t += 2.0  # 2 s per step: a line every 15 steps
        p.update(1, items=32, loss=1.5)
    assert len(lines()) == 6  # at 30, 60, ..., 180 s of the 200
    first = lines()[0]
    assert first.startswith("train: step 15/100 (15%) loss 1.5000 | ")
    assert "0.5 steps/s, 16 utterances/s" in first
    assert "30s elapsed, ~2m50s left" in first
    summary = p.close()
    assert summary == {"seconds": 200.0, "steps_per_s": 0.5, "utterances_per_s": 16.0}
    assert lines()[-1] == (
        "train done: 100 steps, 3200 utterances in 200.0s (0.5 steps/s, 16 utterances/s)"
    )
    p.close()  # idempotent: no second closing line
    assert len(lines()) == 7


def test_no_line_before_the_first_interval(lines):
    clock = Clock()
    p = Progress(10, "decode de-asr", unit="utt", interval=30, tty=False, clock=clock)
    for _ in range(10):
        clock.t += 1.0
        p.update(1)
    assert lines() == []
    p.close()
    assert lines() == ["decode de-asr done: 10 utterances in 10.0s (1 utterances/s)"]


def test_terminal_gets_a_bar_and_no_lines(lines, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    clock = Clock()
    p = Progress(5, "train", interval=0.001, tty=True, clock=clock)
    for _ in range(5):
        clock.t += 60
        p.update(1, loss=0.25)
    p.close()
    assert "train" in err.getvalue() and "loss=0.2500" in err.getvalue()  # tqdm drew
    assert lines() == ["train done: 5 steps in 300.0s (0.0167 steps/s)"]


def test_not_a_terminal_means_no_bar(monkeypatch):
    err = io.StringIO()  # isatty() is False: what job_log's log file looks like
    monkeypatch.setattr(sys, "stderr", err)
    p = Progress(3, "train")
    assert p.bar is None
    for _ in range(3):
        p.update(1)
    p.close()
    assert "\r" not in err.getvalue()


def test_disabled_says_nothing(lines):
    clock = Clock()
    p = Progress(3, "load x", unit="utt", interval=0, tty=False, enabled=False, clock=clock)
    p.update(3)
    p.close()
    assert lines() == []
    assert list(track([1, 2, 3], "load y", enabled=False)) == [1, 2, 3]
    assert lines() == []


def test_fmt_seconds():
    assert [fmt_seconds(s) for s in (0, 59.4, 61, 3600, 3 * 3600 + 5 * 60 + 7)] == [
        "0s",
        "59s",
        "1m01s",
        "1h00m",
        "3h05m",
    ]


def test_job_log_ends_with_wall_time_and_throughput(tmp_path):
    log_file = tmp_path / "job.log"
    with job_log(str(log_file)):
        for _ in track(range(4), "decode ca-asr", unit="utt"):
            pass
        for _ in track(range(6), "decode ca-st", unit="utt"):
            pass
        p = Progress(2, "train", unit="step", items="utt")
        p.update(2, items=16)
        p.close()
    last = log_file.read_text().splitlines()[-1]
    assert "job done in" in last and "wall time" in last
    assert "decode: 10 utterances in" in last  # the two decodes added up
    assert "train: 2 steps, 16 utterances in" in last and "steps/s" in last
    assert progress._job_loops is None  # collection stops with the job


def test_job_log_without_loops_keeps_its_short_line(tmp_path):
    log_file = tmp_path / "job.log"
    with job_log(str(log_file)):
        pass
    assert log_file.read_text().splitlines()[-1].endswith("wall time")
