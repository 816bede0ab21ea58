"""Progress of a running sweep: cells done of total, by status, what each device runs, time left.

On a terminal, a live rich view: a line per device (its cell, for how long, against the cell's
estimate) above a bar with the tally and the time left, refreshed twice a second. Elsewhere
(logs, CI), one line per finished cell, and a heartbeat line every HEARTBEAT_S seconds in
which nothing finished, naming what each device runs. Every message is a ``logging`` record
of the ``orchestrator.progress`` logger (Hydra's log file keeps them); install ConsoleHandler
on the ``orchestrator`` logger so that records print above the live view instead of through it.

Time left: the estimated device-seconds of the cells not finished (the run's ``estimate_s``
less the estimates of the cells started, plus what running cells have left), scaled by the
ratio of actual to estimated time of the cells so far (a cell running past its estimate counts
at once: a hang raises the figure while it lasts), shared among the devices. Without estimates:
elapsed time per finished cell.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time

from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0
FAILURES = frozenset({"oom", "error", "crashed", "timeout"})  # printed as they happen (unsupported is expected)
_active: Progress | None = None  # the live view on screen, for ConsoleHandler


def fmt_s(s: float) -> str:
    """h:mm:ss; '?' while there is nothing to estimate from."""
    if s != s or s in (float("inf"), float("-inf")):
        return "?"
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _left(expected: float, elapsed: float) -> float:
    """Seconds a running cell has left: what its (scaled) estimate leaves, or once past it, as long
    again as it has overrun (a hang keeps raising the figure instead of reading 0 while it lasts)."""
    return expected - elapsed if elapsed <= expected else elapsed - expected


def _secs(s: float) -> str:
    """An estimate: 0.4 s, 12 s, 0:03:10."""
    return f"{s:.1g} s" if s < 1 else f"{s:.0f} s" if s < 60 else fmt_s(s)


def cell_label(row: dict) -> str:
    """A cell in a few words: 'flash float16 b8 h16x128 n4096', then 'fwd_bwd' and 'non-causal'
    where it is not the usual forward, causal call (use it for running()'s what too)."""
    label = (f"{row['backend']} {row['dtype']} b{row['batch_size']} h{row['num_heads']}x{row['head_dim']} "
             f"n{row['seq_len']}")
    if row.get("mode", "fwd") != "fwd":
        label += f" {row['mode']}"
    return label if row.get("causal", True) else label + " non-causal"


def first_line(text, n: int = 160) -> str:
    line = next((ln.strip() for ln in str(text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= n else line[: n - 1] + "…"


class ConsoleHandler(logging.Handler):
    """Writes each record through the live view's console while one is on screen (the record
    appears above it), to stdout (or stream="stderr": for warnings) otherwise. While the view is
    live, records marked ``extra={"live_hidden": True}`` (per-cell lines: the view shows them) are
    left out, and a record's ``live_text`` (a shorter text) replaces its message."""

    def __init__(self, level: int = logging.INFO, stream: str = "stdout"):
        super().__init__(level)
        self.stream_name = stream  # looked up at each record: whatever sys.stdout/stderr is then
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            view = _active
            live = view is not None and view._rich is not None
            if live and getattr(record, "live_text", None):  # the shorter text for the screen
                record = logging.makeLogRecord({**record.__dict__, "msg": record.live_text, "args": None})
            msg = self.format(record)
            if live:
                if getattr(record, "live_hidden", False):
                    return
                style = "bold red" if record.levelno >= logging.ERROR else "yellow" if record.levelno >= \
                    logging.WARNING else ""
                view._rich.console.print(Text(msg, style=style))
            else:
                stream = getattr(sys, self.stream_name)
                stream.write(msg + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class Progress:
    def __init__(self, total: int, devices, label: str, enabled: bool = True, live: bool | None = None,
                 estimate_s: float | None = None, console=None, clock=time.perf_counter):
        self.devices = [f"device {i}" for i in range(devices)] if isinstance(devices, int) else list(devices)
        self.total, self.label, self.enabled = total, label, enabled
        self.estimate_s = estimate_s if estimate_s and estimate_s > 0 else None
        self.clock = clock
        self.done = 0
        self.by_status: collections.Counter = collections.Counter()
        self.t0 = self._last_out = clock()
        self.running_on: dict[str, tuple[str, float | None, float]] = {}  # device: (what, est_s, since)
        self._ending: dict[str, tuple[str, float | None, float]] = {}  # a device's previous cell, not yet updated
        self._est_started, self._n_est = 0.0, 0  # estimates of the cells started, and how many had one
        self._actual = self._est_done = 0.0  # of the finished cells that had an estimate
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.live = sys.stdout.isatty() if live is None else live
        self._rich = None
        if enabled and self.live and total:
            self._start_live(console)
        elif enabled and total:
            threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True).start()

    # what the executor calls

    def running(self, device: str, what: str, est_s: float | None = None) -> None:
        """device started a cell now. Either order of a device's running(next) and update(previous)
        works: a cell still on the device when the next starts is kept aside for its update()."""
        est_s = est_s if est_s and est_s > 0 else None
        with self._lock:
            if device in self.running_on:
                self._ending[device] = self.running_on[device]
            self.running_on[device] = (what, est_s, self.clock())
            self._est_started += est_s or 0.0
            self._n_est += bool(est_s)
            if device not in self.devices:
                self.devices.append(device)

    def update(self, row: dict, device: str | None = None) -> None:
        """A cell finished (row: its status, parameters, median_ms, error)."""
        with self._lock:
            self.done += 1
            self.by_status[row["status"]] += 1
            device = device if device in self.running_on or device in self._ending else self._device_of(row)
            if device is not None:
                _, est, since = self._ending.pop(device) if device in self._ending else self.running_on.pop(device)
                if est:
                    self._actual += self.clock() - since
                    self._est_done += est
            if not self.enabled:
                return
            self._last_out = self.clock()
            line, tally, left = self._line(row, device), self.tally(), self.left()
        if self._rich is not None:
            self._rich.update(self._task, advance=1, tally=tally, left=left)
        failed = row["status"] in FAILURES
        short = line.split(" | ", 1)[0]  # the live view shows the tally and times in its bar
        extra = {"live_hidden": not failed, "live_text": short}
        log.log(logging.WARNING if failed else logging.INFO, line, extra=extra)

    def note(self, text: str) -> None:
        """A message above the view (start-up phases)."""
        if self.enabled:
            log.info(text)

    def close(self) -> None:
        global _active
        self._stop.set()
        if self._rich is not None:
            self._rich.stop()
            if _active is self:
                _active = None

    # the figures

    def tally(self) -> str:
        return " ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))

    def ratio(self, now: float) -> float:
        """Actual over estimated time so far: finished cells, and running cells past their estimate."""
        actual, est = self._actual, self._est_done
        for _, e, since in self.running_on.values():
            if e and now - since > e:
                actual, est = actual + now - since, est + e
        return min(max(actual / est, 0.01), 1000.0) if est > 0 else 1.0

    def eta(self) -> float:
        """Seconds left (see the module's docstring); nan while there is nothing to go on."""
        with self._lock:
            now = self.clock()
            if self.done >= self.total:
                return 0.0
            ests = [e for _, e, _ in self.running_on.values() if e]
            if self.estimate_s is None and not ests and not self._est_done:
                el = now - self.t0
                return el / self.done * (self.total - self.done) if self.done else float("nan")
            r = self.ratio(now)
            mean = self._est_started / self._n_est if self._n_est else (self.estimate_s or 0) / self.total or 1.0
            left_running = [_left((e or mean) * r, now - since) for _, e, since in self.running_on.values()]
            pending = self.total - self.done - len(self.running_on)
            pending_est = (max(self.estimate_s - self._est_started, 0.0) if self.estimate_s is not None
                           else pending * mean) if pending > 0 else 0.0
            work = pending_est * r + sum(left_running)
            return max(work / max(len(self.devices), 1), max(left_running, default=0.0))

    def left(self) -> str:
        return fmt_s(self.eta())

    def device_lines(self) -> list[tuple[str, str, str]]:
        """(device, what it runs or 'idle', 'for h:mm:ss (est 3 s)', with 'overdue' past twice its
        estimate scaled as the finished cells ran, and 5 s)."""
        now = self.clock()
        with self._lock:
            r = self._actual / self._est_done if self._est_done else 1.0  # finished cells only
            out = []
            for d in self.devices:
                if d not in self.running_on:
                    out.append((d, "idle", ""))
                    continue
                what, est, since = self.running_on[d]
                el = now - since
                late = est is not None and el > max(2 * est * r, est * r + 5)
                out.append((d, what, f"for {fmt_s(el)}" + (f" (est {_secs(est)})" if est else "")
                            + (" overdue" if late else "")))
            return out

    def tick(self) -> None:
        """The heartbeat (plain mode): a line when nothing was said for HEARTBEAT_S seconds."""
        with self._lock:
            if self.clock() - self._last_out < HEARTBEAT_S or self.done >= self.total:
                return
            self._last_out = self.clock()
            busy = "; ".join(f"{d}: {w} {t}" if t else f"{d}: idle" for d, w, t in self.device_lines())
            line = (f"[{self.done}/{self.total}] still running: {busy} | {self.tally() or 'nothing finished'} | "
                    f"elapsed {fmt_s(self.clock() - self.t0)} left ~{self.left()}")
        log.info(line)

    # inside

    def _device_of(self, row: dict) -> str | None:
        """The device whose running cell has this row's label (when update() is not told)."""
        label = cell_label(row) if all(k in row for k in ("backend", "dtype", "seq_len")) else None
        return next((d for held in (self._ending, self.running_on) for d, (w, _, _) in held.items() if w == label),
                    None)

    def _line(self, row: dict, device: str | None) -> str:
        el = self.clock() - self.t0
        ms = row.get("median_ms")
        if row["status"] == "ok" and ms is not None and ms == ms:
            t = f"{ms:.3f} ms"
        else:
            t = first_line(row.get("error"))
        where = f" on {device}" if device else ""
        return (f"[{self.done}/{self.total}] {row['status']:<11} {cell_label(row)}{where}: {t} | {self.tally()} | "
                f"{len(self.devices)} device(s) | elapsed {fmt_s(el)} left ~{self.left()}")

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def _start_live(self, console) -> None:
        global _active
        self._rich = _Live(self, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), _Left(self), TextColumn("{task.fields[tally]}"),
                           console=console, refresh_per_second=2, get_time=self.clock)
        self._task = self._rich.add_task(f"{self.label} on {len(self.devices)} device(s)", total=self.total,
                                         tally="", left="?")
        self._rich.start()
        _active = self


class _Live(RichProgress):
    """rich's Progress with the device lines above the bar."""

    def __init__(self, owner: Progress, *columns, **kw):
        self.owner = owner
        super().__init__(*columns, **kw)

    def get_renderables(self):
        grid = Table.grid(padding=(0, 2))
        for d, what, t in self.owner.device_lines():
            grid.add_row(Text(d, style="cyan"), Text(what, style="dim" if what == "idle" else ""),
                         Text(t, style="bold red" if t.endswith("overdue") else ""))
        yield grid
        yield self.make_tasks_table(self.tasks)


class _Left(ProgressColumn):
    """Time left, computed at each refresh (it moves while cells run)."""

    def __init__(self, owner: Progress):
        self.owner = owner
        super().__init__()

    def render(self, task) -> Text:
        return Text(f"left ~{self.owner.left()}")
