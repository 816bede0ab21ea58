"""The progress display: plain lines for logs, a rich bar on a terminal, and the time-left estimate."""

from __future__ import annotations

import time

from orchestrator.progress import Progress, fmt_s


def row(status: str, median_ms=None, error=None) -> dict:
    return {"status": status, "backend": "flash", "dtype": "float16", "batch_size": 1, "num_heads": 8,
            "head_dim": 64, "seq_len": 1024, "median_ms": median_ms, "error": error}


def test_fmt_s():
    assert fmt_s(0) == "0:00:00" and fmt_s(3725.9) == "1:02:05"
    assert fmt_s(float("nan")) == "?" and fmt_s(float("inf")) == "?"


def test_plain_lines(capsys):
    p = Progress(total=4, devices=2, label="smoke", live=False)
    p.t0 = time.perf_counter() - 10  # 10 s into the sweep
    p.update(row("ok", 1.23456))
    assert 29 < p.eta() < 31  # 3 cells left at 10 s a cell
    p.update(row("oom", error="CUDA out of memory"))
    p.update(row("error", median_ms=float("nan"), error="boom"))
    p.update(row("ok", 2.0))
    p.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("[1/4] ok") and "flash float16 b1 h8x64 n1024: 1.235 ms" in lines[0]
    assert "2 device(s)" in lines[0] and "elapsed 0:00:10" in lines[0] and "left ~0:00:30" in lines[0]
    assert "CUDA out of memory" in lines[1] and "ok 1 oom 1" in lines[1]
    assert ": boom |" in lines[2]
    assert lines[3].startswith("[4/4] ok") and "error 1 ok 2 oom 1" in lines[3] and "left ~0:00:00" in lines[3]
    assert p.by_status == {"ok": 2, "oom": 1, "error": 1}


def test_disabled_prints_nothing(capsys):
    p = Progress(total=2, devices=1, label="x", enabled=False)
    p.update(row("ok", 1.0))
    p.close()
    assert capsys.readouterr().out == "" and p.done == 1


def test_live_bar_counts(capsys):
    p = Progress(total=3, devices=4, label="full", live=True)
    p.t0 = time.perf_counter() - 10
    p.update(row("ok", 1.0))
    task = p._rich.tasks[0]
    assert task.fields["left"] == "0:00:20"
    for status in ("ok", "timeout"):
        p.update(row(status, 1.0))
    p.close()
    assert task.completed == 3 and task.total == 3 and task.fields["tally"] == "ok 2 timeout 1"
    assert task.fields["left"] == "0:00:00"
    assert "full on 4 device(s)" in task.description
