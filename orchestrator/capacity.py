"""The longest sequence that fits: ``python -m orchestrator +sweep=capacity``.

For each backend x batch x dtype x head size of the grid (``grid.seq_lens`` is not used),
a bisection over seq_len among the multiples of ``capacity.granularity`` in
``[min_seq, max_seq]``: the first trial is ``max_seq`` (flash-like backends often fit there
and are done), then the midpoint of what is known. Each trial is an ordinary cell run by the
executor in a process of its own (an OOM never poisons the next trial) and stored like any
row; all searches advance together, one executor run per round. Trials already in the
dataset are reused (``run.rerun`` decides, as for any sweep).

A trial fits when its status is ``ok`` and, with ``capacity.memory_limit_bytes``, its measured
peak is within the limit: the same search then answers "within this much memory", and on
the CPU, where nothing runs out of memory at these sizes, it is what makes the search mean
something. ``unsupported`` ends a search; other failures (oom, error, crashed, timeout)
count as too long, their status is reported.

The memory model fitted to the fitting trials is bytes = a + b*N (flash-like backends) or
a + b*N + c*N^2 (math, eager: they hold the N x N scores); solving it for the device's
memory (or the limit) is the extrapolation the notebook did by hand.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchestrator.grid import Cell, expand

log = logging.getLogger(__name__)

QUADRATIC = ("math", "eager")  # backends that materialise the N x N scores


@dataclass
class Search:
    """Bisection over candidate lengths; lo/hi index the longest fitting / shortest failing.

    Once bisected, a search whose trials measured too few lengths to fit its memory model
    asks for a few shorter ones (half, a quarter... of the longest that fits)."""

    key: Cell  # the searched cell, seq_len 0
    lengths: list[int]
    lo: int = -1
    hi: int = -1  # set to len(lengths) in __post_init__
    stopped: str | None = None  # status that ended the search early (unsupported)
    trials: list[dict] = field(default_factory=list)  # {seq_len, fits, status, bytes, device_bytes}

    def __post_init__(self):
        if self.hi < 0:
            self.hi = len(self.lengths)

    @property
    def quadratic(self) -> bool:
        return self.key.backend in QUADRATIC

    @property
    def done(self) -> bool:
        return self.probe() is None

    def probe(self) -> int | None:
        """The next length to try, or None when the search is done."""
        if self.stopped is not None:
            return None
        if self.hi - self.lo > 1:
            if self.lo == -1 and self.hi == len(self.lengths):
                return self.lengths[-1]
            return self.lengths[(self.lo + self.hi) // 2]
        return self._fit_probe()

    def _fit_probe(self) -> int | None:
        measured = {t["seq_len"] for t in self.trials if t["bytes"] is not None}
        if not measured or len(measured) >= (3 if self.quadratic else 2) or self.lo < 0:
            return None
        tried = {t["seq_len"] for t in self.trials}
        for div in (2, 4, 8, 16):
            shorter = [n for n in self.lengths if n <= self.lengths[self.lo] / div]
            if shorter and shorter[-1] not in tried:
                return shorter[-1]
        return None

    def record(self, seq_len: int, fits: bool, status: str = "ok", nbytes=None, device_bytes=None) -> None:
        i = self.lengths.index(seq_len)
        self.trials.append(dict(seq_len=seq_len, fits=fits, status=status, bytes=nbytes, device_bytes=device_bytes))
        if status == "unsupported":
            self.stopped = status
        elif fits:
            self.lo = max(self.lo, i)
        else:
            self.hi = min(self.hi, i)

    @property
    def longest(self) -> int | None:
        return self.lengths[self.lo] if self.lo >= 0 else None


def lengths(min_seq: int, max_seq: int, granularity: int) -> list[int]:
    return list(range(min_seq, max_seq + 1, granularity))


def fit(points: list[tuple[int, float]], quadratic: bool) -> np.ndarray | None:
    """Least-squares polynomial (highest power first) of bytes against N; None if too few points."""
    deg = 2 if quadratic else 1
    xs = sorted({n for n, _ in points})
    if len(xs) < deg + 1:
        return None
    n = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    return np.polyfit(n, y, deg)


def solve(coef: np.ndarray | None, limit: float | None) -> int | None:
    """The length at which the model reaches limit bytes (the first crossing where it grows)."""
    if coef is None or not limit:
        return None
    c = np.array(coef, dtype=float)
    c[-1] -= limit
    slope = np.polyder(np.poly1d(coef))
    roots = [r.real for r in np.roots(c) if abs(r.imag) < 1e-9 * max(1.0, abs(r)) and r.real > 0]
    roots = [r for r in roots if slope(r) > 0]
    return int(min(roots)) if roots else None


def _num(v) -> int | None:
    """A number from a row (None for null, NaN and pandas' NA)."""
    return None if v is None or pd.isna(v) else int(v)


def trial_bytes(row: dict) -> int | None:
    """Memory of a trial: peak allocated with the inputs (GPU), else above them (CPU)."""
    for col in ("peak_allocated_total_bytes", "peak_allocated_bytes"):
        if (v := _num(row.get(col))) is not None:
            return v
    return None


def fits(row: dict, limit: int | None) -> bool:
    if row.get("status") != "ok":
        return False
    nbytes = trial_bytes(row)
    return limit is None or nbytes is None or nbytes <= limit


def result(s: Search, limit: int | None) -> dict:
    """One line of the capacity table."""
    k = s.key
    fail = min((t for t in s.trials if not t["fits"]), key=lambda t: t["seq_len"], default=None)
    points = [(t["seq_len"], t["bytes"]) for t in s.trials if t["bytes"] is not None]  # over a limit too
    coef = fit(points, s.quadratic)
    device = max((t["device_bytes"] or 0 for t in s.trials), default=0) or None
    return {
        "workload": k.workload, "mode": k.mode, "dtype": k.dtype, "batch_size": k.batch_size,
        "num_heads": k.num_heads, "head_dim": k.head_dim, "causal": k.causal, "backend": k.backend,
        "longest_fit": s.longest, "at_max": s.lo == len(s.lengths) - 1,
        "first_fail": fail["seq_len"] if fail else None, "fail_status": _why(fail) if fail else s.stopped,
        "trials": len(s.trials), "model": "quadratic" if s.quadratic else "linear",
        "coef": None if coef is None else [float(c) for c in coef],
        "limit_bytes": limit or device, "extrapolated": solve(coef, limit or device),
        "limit_source": "memory_limit_bytes" if limit else ("device" if device else None),
    }


def _why(trial: dict) -> str:
    return "over the memory limit" if trial["status"] == "ok" else trial["status"]


def searches_for(cfg, default_target: str) -> list[Search]:
    c = cfg.capacity
    keys = dict.fromkeys(dataclasses.replace(cell, seq_len=0) for cell in expand(cfg, default_target))
    return [Search(k, lengths(c.min_seq, c.max_seq, c.granularity)) for k in keys]


class CapacityPlanner:
    """Rounds of trial cells: every open search's next length, until all searches are done."""

    def __init__(self, searches: list[Search], limit: int | None = None):
        self.searches, self.limit = searches, limit
        self.pending: dict[Cell, Search] = {}
        self.rounds = 0

    @classmethod
    def for_config(cls, cfg, default_target: str) -> CapacityPlanner:
        return cls(searches_for(cfg, default_target), cfg.capacity.memory_limit_bytes)

    def targets(self) -> dict[str, int]:
        """The targets of the searches, and how many trials each could run at once."""
        return dict(collections.Counter(s.key.target for s in self.searches))

    def next_round(self) -> list[Cell]:
        open_ = [s for s in self.searches if not s.done]
        if open_ and self.pending:
            log.info("capacity round %d: %d of %d searches still open", self.rounds, len(open_), len(self.searches))
        self.pending = {dataclasses.replace(s.key, seq_len=s.probe()): s for s in open_}
        self.rounds += bool(self.pending)
        return list(self.pending)

    def usable(self, row: dict) -> bool:
        """Whether a stored row answers a trial (with a memory limit, an ok row needs its peak)."""
        return self.limit is None or row.get("status") != "ok" or trial_bytes(row) is not None

    def record(self, cell: Cell, row: dict) -> None:
        s = self.pending.get(cell)
        if s is not None:
            s.record(cell.seq_len, fits(row, self.limit), row.get("status"), trial_bytes(row),
                     _num(row.get("device_total_bytes")))

    def results(self) -> list[dict]:
        return [result(s, self.limit) for s in self.searches]

    def trial_points(self) -> list[list[tuple[int, int]]]:
        """Per search, the (seq_len, bytes) of its measured trials (for the plot)."""
        return [sorted((t["seq_len"], t["bytes"]) for t in s.trials if t["bytes"] is not None) for s in self.searches]


def run_rounds(planner: CapacityPlanner, run_round, known: dict) -> int:
    """Drive a planner to the end without Ray (tests, and the logic the driver follows):
    ``run_round(cells, on_row)`` measures; rows in ``known`` (by cell id) are reused."""
    while cells := planner.next_round():
        todo = []
        for cell in cells:
            row = known.get(cell.cell_id)
            if row is not None and planner.usable(row):
                planner.record(cell, row)
            else:
                todo.append(cell)
        if todo:
            run_round(todo, planner.record)
    return planner.rounds
