"""The progress display: plain log lines, the live rich view with a line per device, failures
as they happen, a time-left estimate that moves with the clock, and the console handler."""

from __future__ import annotations

import io
import logging
import time

import pytest
from rich.console import Console

from orchestrator import progress
from orchestrator.progress import ConsoleHandler, Progress, cell_label, fmt_s
from orchestrator.summary import Summary


def row(status: str, median_ms=None, error=None, backend="flash", seq_len=1024) -> dict:
    return {"status": status, "backend": backend, "dtype": "float16", "batch_size": 1, "num_heads": 8,
            "head_dim": 64, "seq_len": seq_len, "median_ms": median_ms, "error": error}


class Clock:
    """A hand-moved clock for Progress."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "orchestrator.progress"]


@pytest.fixture
def console_handler():
    """ConsoleHandler alone on the orchestrator logger (handlers an in-process sweep of another
    test left there are set aside meanwhile), as the driver installs it."""
    logger = logging.getLogger("orchestrator")
    handler, level, others = ConsoleHandler(), logger.level, logger.handlers[:]
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    yield handler
    logger.handlers = others
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def no_view_left():
    """A test that fails mid-view leaves no live view for the next one."""
    yield
    if progress._active is not None:
        progress._active.close()
    progress._active = None


def test_fmt_s():
    assert fmt_s(0) == "0:00:00" and fmt_s(3725.9) == "1:02:05"
    assert fmt_s(float("nan")) == "?" and fmt_s(float("inf")) == "?"


def test_plain_lines(caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.progress")
    p = Progress(total=4, devices=2, label="smoke", live=False)
    p.t0 = time.perf_counter() - 10  # 10 s into the sweep
    p.update(row("ok", 1.23456))
    assert 29 < p.eta() < 31  # no estimates: 3 cells left at 10 s a cell
    p.update(row("oom", error="CUDA out of memory. Tried to allocate 8.00 GiB\nmore text"))
    p.update(row("error", median_ms=float("nan"), error="boom"))
    p.update(row("ok", 2.0))
    p.close()
    out = lines(caplog)
    assert len(out) == 4
    assert out[0].startswith("[1/4] ok") and "flash float16 b1 h8x64 n1024: 1.235 ms" in out[0]
    assert "2 device(s)" in out[0] and "elapsed 0:00:10" in out[0] and "left ~0:00:30" in out[0]
    assert "CUDA out of memory. Tried to allocate 8.00 GiB |" in out[1] and "ok 1 oom 1" in out[1]
    assert ": boom |" in out[2]
    assert out[3].startswith("[4/4] ok") and "error 1 ok 2 oom 1" in out[3] and "left ~0:00:00" in out[3]
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "WARNING", "INFO"]  # failures stand out
    assert p.by_status == {"ok": 2, "oom": 1, "error": 1}


def test_disabled_says_nothing(caplog, capsys):
    caplog.set_level(logging.INFO, logger="orchestrator.progress")
    p = Progress(total=2, devices=["cuda:0"], label="x", enabled=False)
    p.running("cuda:0", "flash float16 b1 h8x64 n1024", 1.0)
    p.update(row("oom", error="x"), "cuda:0")
    p.note("starting Ray")
    p.close()
    assert capsys.readouterr().out == "" and not lines(caplog) and p.done == 1


def test_live_bar_counts():
    p = Progress(total=3, devices=4, label="full", live=True, console=Console(file=io.StringIO()))
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


def screen(p: Progress, width: int = 120) -> str:
    """What the live view shows now, as text."""
    c = Console(record=True, width=width, file=io.StringIO())
    c.print(p._rich.get_renderable())
    return " ".join(c.export_text().split())  # words, one space apart


def test_live_view_shows_each_device_and_failures_as_they_happen(console_handler):
    clock, out = Clock(), io.StringIO()
    term = Console(file=out, width=120, force_terminal=True, color_system=None)
    p = Progress(total=3, devices=["cuda:0 H100", "cuda:1 H100"], label="full", live=True, estimate_s=30.0,
                 console=term, clock=clock)
    p.note("2 device workers ready in 4.1 s")
    p.running("cuda:0 H100", "flash float16 b1 h8x64 n1024", 10.0)
    p.running("cuda:1 H100", "math float16 b1 h8x64 n4096", 10.0)
    clock.t += 7
    view = screen(p)
    assert "cuda:0 H100 flash float16 b1 h8x64 n1024 for 0:00:07 (est 10 s)" in view
    assert "cuda:1 H100 math float16 b1 h8x64 n4096 for 0:00:07 (est 10 s)" in view
    assert "0/3 0:00:07 left ~0:00:08" in view  # 10 s of cells not started + 3 s left on each running one, / 2
    p.update(row("ok", 1.0), "cuda:0 H100")
    assert "cuda:0 H100 idle" in screen(p)
    before = out.getvalue()
    p.update(row("oom", error="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 64 GiB\nstack...",
                 backend="math", seq_len=4096), "cuda:1 H100")
    printed = out.getvalue()[len(before):]  # printed at once, above the view
    assert "oom" in printed and "math float16 b1 h8x64 n4096 on cuda:1 H100: torch.OutOfMemoryError" in printed
    assert "stack..." not in printed and " | " not in printed  # the bar has the tally and times
    p.close()
    text = out.getvalue()
    assert "2 device workers ready in 4.1 s" in text
    assert "[1/3] ok" not in text  # an ok cell is in the bar, not a line of its own


def test_time_left_moves_with_the_clock_between_cells():
    """From the cells' estimates, refreshed by time alone: it falls while cells run as estimated
    and rises while one runs past its estimate (a hang), with no cell finishing meanwhile."""
    clock = Clock()
    p = Progress(total=4, devices=["a", "b"], label="x", live=False, estimate_s=40.0, clock=clock)
    assert p.eta() == pytest.approx(20.0)  # workers starting: 40 device-seconds on 2 devices
    p.running("a", "cell 1", 10.0)
    p.running("b", "cell 2", 10.0)
    clock.t += 5
    at5 = p.eta()
    assert at5 == pytest.approx((20 + 5 + 5) / 2)  # 2 cells not started, 5 s left on each running one
    clock.t += 5
    at10 = p.eta()
    assert at10 < at5
    clock.t += 20  # 30 s into cells estimated at 10 s: they run 3x their estimate
    at30 = p.eta()
    assert at30 > at10 and at30 == pytest.approx(20 * 3 / 2)
    p.update(row("ok", 1.0), "a")  # finished at 3x: the rest is scaled by the same ratio
    p.running("a", "cell 3", 10.0)
    assert p.eta() == pytest.approx(max((10 * 3 + 30) / 2, 30))
    p.close()


def test_a_hang_keeps_raising_time_left_and_shows_overdue():
    """The last cell runs far past its estimate: the figure grows while it lasts (it never reads
    0:00:00 during a hang), and its device line says overdue."""
    clock = Clock()
    p = Progress(total=2, devices=["cuda:0"], label="x", live=False, estimate_s=2.0, clock=clock)
    p.running("cuda:0", "cell 1", 1.0)
    clock.t += 1
    p.update(row("ok", 1.0), "cuda:0")
    p.running("cuda:0", "fault_hang", 1.0)
    seen = []
    for _ in range(4):
        clock.t += 5
        seen.append(p.eta())
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] > seen[0]
    assert p.device_lines()[0][2] == "for 0:00:20 (est 1 s) overdue"
    p.close()


def test_next_cell_may_start_before_the_previous_lands():
    """An executor may start a device's next cell before reporting the one that ended: the device
    shows the new cell, and the ended one's time counts for the estimate."""
    clock = Clock()
    p = Progress(total=3, devices=["cuda:0"], label="x", live=False, estimate_s=30.0, clock=clock)
    p.running("cuda:0", "cell 1", 10.0)
    clock.t += 20
    p.running("cuda:0", "cell 2", 10.0)
    p.update(row("ok", 1.0), "cuda:0")
    assert p.device_lines() == [("cuda:0", "cell 2", "for 0:00:00 (est 10 s)")]
    assert p.ratio(clock()) == pytest.approx(2.0)
    assert p.eta() == pytest.approx(2 * (10 + 10))  # cell 2 and cell 3 at twice their estimate
    p.close()


def test_plain_heartbeat_names_what_runs(caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.progress")
    clock = Clock()
    p = Progress(total=2, devices=["cuda:0", "cuda:1"], label="x", live=False, estimate_s=20.0, clock=clock)
    p.running("cuda:0", "flash float16 b1 h8x64 n1024", 10.0)
    clock.t += 29
    p.tick()
    assert not lines(caplog)
    clock.t += 2
    p.tick()
    beat = lines(caplog)
    assert len(beat) == 1 and beat[0].startswith("[0/2] still running:")
    assert "cuda:0: flash float16 b1 h8x64 n1024 for 0:00:31 (est 10 s)" in beat[0] and "cuda:1: idle" in beat[0]
    p.tick()  # not again until another 30 s pass
    assert len(lines(caplog)) == 1
    p.close()


def test_console_handler_prints_to_stdout_without_a_live_view(console_handler, capsys):
    logging.getLogger("orchestrator.driver").info("starting Ray")
    logging.getLogger("orchestrator.driver").info("hidden?", extra={"live_hidden": True})  # no view: shown
    assert capsys.readouterr().out == "starting Ray\nhidden?\n"
    assert progress._active is None


def test_a_cell_label_tells_modes_and_causality_apart():
    base = row("ok", 1.0)
    assert cell_label(base) == cell_label(base | {"mode": "fwd", "causal": True}) == "flash float16 b1 h8x64 n1024"
    assert cell_label(base | {"mode": "fwd_bwd"}) == "flash float16 b1 h8x64 n1024 fwd_bwd"
    assert cell_label(base | {"causal": False}) == "flash float16 b1 h8x64 n1024 non-causal"


def test_the_closing_line_gives_a_short_sweep_in_seconds():
    s = Summary("r", statuses={"ok": 2}, devices=1, wall_s=7.84, start_s=4.4)
    assert "7.8 s on 1 device(s) after a 4.4 s start" in s.line()
    s.wall_s = 3725.9
    assert "1:02:05 on 1 device(s)" in s.line()
