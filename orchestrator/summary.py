"""A run's tally and its one-line summary; a cell's estimated cost (dispatch order, time left)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from orchestrator.grid import Cell
from orchestrator.progress import fmt_s

# Rough rates (TFLOP/s) by backend, to order cells longest first and to estimate time left: only
# their ratios matter much, and the live view corrects them by the cells that have finished.
RATES = {"cuda": {"cudnn": 400.0, "flash": 250.0, "flex": 250.0, "efficient": 150.0, "eager": 25.0, "math": 10.0},
         "cpu": {}}
DEFAULT_RATE = {"cuda": 50.0, "cpu": 0.05}
CELL_OVERHEAD_S = 0.1  # a cell's fixed cost: warm-up, memory pass, checks


def cost_estimate(cell: Cell, measure, flops: float) -> float:
    """Seconds a cell is expected to hold its device: fixed costs, about a dozen calls beyond the
    timed ones, and the timed calls (capped by the budget, at least min_iters; on a GPU, with the
    rests between them: measure.duty)."""
    kind = "cpu" if cell.target == "cpu" else "cuda"
    call_s = flops / (RATES[kind].get(cell.backend, DEFAULT_RATE[kind]) * 1e12)
    timed = max(measure.min_iters * call_s, min(measure.budget_ms / 1e3, 1000 * call_s))
    if kind == "cuda":
        timed /= measure.duty  # the rests between stretches of timed calls
    return CELL_OVERHEAD_S + measure.warmup_ms / 1e3 + 6 * call_s + timed


EXEC_GAP_S = 2.0  # Python's own start (interpreter, site) takes well under this: a larger gap is not Python's


def command_start(process_at: float | None, python_at: float) -> tuple[float, float | None]:
    """When this command started (epoch seconds), and the seconds before it left out (or None).

    ``process_at``: the process's start, from /proc, which counts the interpreter's start. But a
    shell that runs other commands first and then execs python (``bash -c 'pip install -e . &&
    python -m orchestrator'``, ``ssh host '...'``) hands its own start to python's process: where
    the process started more than EXEC_GAP_S before ``python_at`` (when Python reached this
    package), the command counts from ``python_at``. Without /proc: ``python_at``."""
    if process_at is None:
        return python_at, None
    if python_at - process_at > EXEC_GAP_S:
        return python_at, python_at - process_at
    return min(process_at, python_at), None


def process_started_at() -> float | None:
    """When this process started (epoch seconds), from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, in ticks since boot
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])  # to 10 ms (/proc/stat's btime is whole seconds)
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (up - ticks / os.sysconf("SC_CLK_TCK"))


@dataclass
class Summary:
    run_id: str
    total: int = 0  # cells the run looked at
    skipped: int = 0  # already in the dataset
    statuses: dict = field(default_factory=dict)
    devices: int = 0
    wall_s: float = 0.0  # first dispatch to last row
    measure_s: float = 0.0
    start_s: float = 0.0  # the fixed start: cluster, device workers
    elsewhere: int = 0  # measured by another sweep sharing the store meanwhile
    other_settings: int = 0  # kept from rows measured with other measure settings
    device_name: str | None = None  # the (first) device's model
    began_at: float | None = None  # epoch seconds: the command's start (summary.command_start; its first run),
    #                                else the run's call
    before_s: float | None = None  # from began_at to the cluster's start: interpreter, imports, config
    compact_s: float = 0.0  # after the last row: the dataset's compaction
    report_s: float = 0.0  # ... the tables, plots and page
    close_s: float = 0.0  # ... the device workers, the cluster and the fork server going (beside the two above)
    command_s: float | None = None  # from began_at to the end of all of it

    @property
    def efficiency(self) -> float:
        """Share of wall time x devices spent measuring."""
        return self.measure_s / (self.wall_s * self.devices) if self.wall_s and self.devices else 0.0

    def count(self, row: dict) -> None:
        self.statuses[row["status"]] = self.statuses.get(row["status"], 0) + 1
        self.measure_s += row.get("measure_s") or 0.0

    def command_line(self) -> str:
        """Where the whole command's time went, for the fixed parts around the cells (once
        ``before_s`` and ``command_s`` are known)."""
        after = max(0.0, self.command_s - self.before_s - self.start_s - self.wall_s)
        return (f"the whole command: {self.command_s:.1f} s: {self.before_s:.1f} s before the cluster (interpreter, "
                "imports, config), "
                f"{self.start_s:.1f} s start (cluster, device workers), {self.wall_s:.1f} s of cells, {after:.1f} s "
                f"after the last row (compaction {self.compact_s:.1f} s, report {self.report_s:.1f} s; closing the "
                f"devices and the cluster {self.close_s:.1f} s, beside them)")

    def line(self) -> str:
        ran = sum(self.statuses.values())
        tally = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items())) or "nothing to do"
        extra = f", {self.elsewhere} measured by another sweep meanwhile" if self.elsewhere else ""
        head = f"sweep {self.run_id}: {ran} cells run ({tally}), {self.skipped} already done{extra}"
        if not ran:  # no time, no efficiency: nothing was measured
            return head
        took = f"{self.wall_s:.1f} s" if self.wall_s < 60 else fmt_s(self.wall_s)
        return (
            f"{head}; {took} on {self.devices} device(s) after a {self.start_s:.1f} s start; efficiency "
            f"{self.efficiency:.2f} ({self.measure_s:.1f} s measuring of {self.wall_s * self.devices:.1f} "
            "device-seconds)"
        )
