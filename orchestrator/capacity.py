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

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from orchestrator import capability
from orchestrator.grid import Cell, expand
from orchestrator.store import Store

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
    }


def _why(trial: dict) -> str:
    return "over the memory limit" if trial["status"] == "ok" else trial["status"]


def searches_for(cfg, default_target: str) -> list[Search]:
    c = cfg.capacity
    keys = dict.fromkeys(dataclasses.replace(cell, seq_len=0) for cell in expand(cfg, default_target))
    return [Search(k, lengths(c.min_seq, c.max_seq, c.granularity)) for k in keys]


def _fmt_n(n) -> str:
    return "-" if n is None else f"{n:,}"


def table(results: list[dict]) -> str:
    """The results as a markdown table."""
    head = ("| workload | mode | dtype | batch | heads x dim | backend | longest that fits | first that fails "
            "| trials | memory model | extrapolated longest |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        fit_n = _fmt_n(r["longest_fit"]) + (" (max tried)" if r["at_max"] else "")
        fail = f"{_fmt_n(r['first_fail'])} ({r['fail_status']})" if r["fail_status"] else "-"
        lines.append(
            f"| {r['workload']} | {r['mode']} | {r['dtype']} | {r['batch_size']} | {r['num_heads']} x "
            f"{r['head_dim']} | {r['backend']} | {fit_n} | {fail} | {r['trials']} | {r['model']} | "
            f"{_fmt_n(r['extrapolated'])} |"
        )
    return "\n".join(lines)


def plot(searches: list[Search], results: list[dict], path: Path) -> Path | None:
    """Trial memory against seq_len, with the fitted model, one panel per searched shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for s, r in zip(searches, results, strict=True):
        groups.setdefault(dataclasses.replace(s.key, backend=""), []).append((s, r))
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (g, items) in zip(axes[0], groups.items(), strict=True):
        for s, r in items:
            pts = sorted((t["seq_len"], t["bytes"]) for t in s.trials if t["bytes"] is not None)
            if not pts:
                continue
            line = ax.plot([p[0] for p in pts], [p[1] / 2**30 for p in pts], "o", label=s.key.backend)[0]
            if r["coef"] is not None:
                top = max(r["extrapolated"] or 0, pts[-1][0])
                xs = np.geomspace(pts[0][0] / 2, top, 200)
                ax.plot(xs, np.polyval(r["coef"], xs) / 2**30, "--", color=line.get_color())
        if items[0][1]["limit_bytes"]:
            ax.axhline(items[0][1]["limit_bytes"] / 2**30, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="seq_len", ylabel="GiB",
               title=f"{g.workload} {g.mode} {g.dtype} b{g.batch_size} {g.num_heads}x{g.head_dim}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def known_rows(store: Store, rerun: str) -> dict[str, dict]:
    """Rows of the dataset a trial may reuse, by cell id (the newest of each cell)."""
    done = store.done(rerun)
    if not done:
        return {}
    df = store.latest()
    df = df[df["cell_id"].isin(done)]
    return {r["cell_id"]: r for r in df.to_dict("records")}


def run_rounds(searches: list[Search], run_round, known: dict, limit: int | None, log=print) -> int:
    """Advance every search one trial per round until all are done; returns the rounds run.

    ``run_round(cells, on_row)`` measures the cells (the executor, or a stand-in in tests)."""
    rounds = 0
    while open_ := [s for s in searches if not s.done]:
        rounds += 1
        trials = {dataclasses.replace(s.key, seq_len=s.probe()): s for s in open_}
        todo = []
        for cell, s in trials.items():
            row = known.get(cell.cell_id)
            if row is not None and (limit is None or row.get("status") != "ok" or trial_bytes(row) is not None):
                _record(s, cell, row, limit)
            else:
                todo.append(cell)
        if todo:
            run_round(todo, lambda cell, row, trials=trials: _record(trials[cell], cell, row, limit))
        log(f"capacity round {rounds}: {len(trials)} trials ({len(trials) - len(todo)} from the dataset); "
            f"{sum(not s.done for s in searches)} of {len(searches)} searches still open")
    return rounds


def _record(s: Search, cell: Cell, row: dict, limit: int | None) -> None:
    s.record(cell.seq_len, fits(row, limit), row.get("status"), trial_bytes(row), _num(row.get("device_total_bytes")))


def report(searches: list[Search], limit: int | None, output_dir: str | None) -> list[dict]:
    results = [result(s, limit) for s in searches]
    md = table(results)
    print(md, flush=True)
    if output_dir:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "capacity.md").write_text(md + "\n")
        plot(searches, results, out / "capacity.png")
        print(f"capacity: table and plot in {out}", flush=True)
    return results


def run(cfg, output_dir: str | None = None):
    """The capacity sweep: like ``sweep.run``, with rounds of trial cells instead of a grid."""
    from orchestrator import executor
    from orchestrator.sweep import RunLog

    executor.connect(cfg.cluster)
    sh = executor.shape()
    searches = searches_for(cfg, sh.default_target)
    store, limit = Store(cfg.store.path), cfg.capacity.memory_limit_bytes
    known = known_rows(store, cfg.run.rerun)
    pre = {id(s): r for s in searches if (r := capability.unsupported(s.key))}
    slots = executor.make_slots([s.key for s in searches if id(s) not in pre], sh, cfg)
    log = RunLog(cfg, store, len(slots))
    summary = log.summary
    print(f"capacity {cfg.sweep_name!r}: {len(searches)} searches over {searches[0].lengths[0]}.."
          f"{searches[0].lengths[-1]} on {len(slots)} device(s)", flush=True)
    for s in searches:  # the target cannot run it: one unsupported row, never scheduled
        cell = dataclasses.replace(s.key, seq_len=s.probe())
        if id(s) in pre and cell.cell_id not in known:
            _record(s, cell, log.record(cell, pre[id(s)]), limit)

    t0 = time.perf_counter()
    with executor.Executor(cfg, slots) as ex:  # one set of device workers for every round

        def run_round(cells, on_trial):
            def on_row(cell, res):
                row = log.record(cell, res)
                if cfg.run.progress:
                    print(f"  {row['status']:<11} {cell.backend} b{cell.batch_size} n{cell.seq_len}: "
                          f"{trial_bytes(row) or '-'} bytes", flush=True)
                on_trial(cell, row)

            ex.run(cells, on_row)

        run_rounds(searches, run_round, known, limit)
    summary.wall_s = time.perf_counter() - t0
    summary.total = sum(len(s.trials) for s in searches)
    summary.skipped = summary.total - sum(summary.statuses.values())
    if cfg.store.compact:
        store.compact()
    results = report(searches, limit, output_dir)
    store.save_run(summary.run_id, {"sweep": cfg.sweep_name, "config": OmegaConf.to_container(cfg, resolve=True),
                            "capacity": results, "output_dir": output_dir})
    print(summary.line(), flush=True)
    return summary
