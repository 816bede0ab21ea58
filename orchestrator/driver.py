"""One sweep, start to end: ``run(cfg)`` checks everything it can before any work, starts or
joins the cluster (``session.py``), then runs rounds: a planner hands it cells (the grid: one
round; the capacity search: bisection rounds), the driver skips what the dataset already has,
writes the rows a device cannot run, claims and dispatches the rest, records each row as it
lands, and asks the planner again. Then it compacts the dataset and writes the report.

Run id, claims, durable rows, the roofline columns, the summary and the exit code are done
here, once, for every planner.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

from omegaconf import OmegaConf

from orchestrator import capability, provenance
from orchestrator.claims import HOST
from orchestrator.config import ConfigError, cells_per_process, check_host, host_gpus, validate
from orchestrator.errors import SIGNALS, Interrupted, StopOnce, StoreWriteError, ignore_signals, signal_of
from orchestrator.grid import Cell, digest, expand
from orchestrator.rows import shares
from orchestrator.store import Store, StoreError
from orchestrator.summary import Summary

log = logging.getLogger(__name__)


class GridPlanner:
    """The grid: a planner of one round."""

    def __init__(self, cfg, default_target: str):
        self.cells, self._given = expand(cfg, default_target), False

    def targets(self) -> dict[str, int]:
        """The targets of the cells, and how many cells each could run at once."""
        return dict(collections.Counter(c.target for c in self.cells))

    def next_round(self) -> list[Cell]:
        cells, self._given = ([] if self._given else self.cells), True
        return cells

    def usable(self, row: dict) -> bool:
        return True

    def record(self, cell: Cell, row: dict) -> None:
        pass


def planner_for(cfg, default_target: str):
    if cfg.capacity.enabled:
        from orchestrator.capacity import CapacityPlanner

        return CapacityPlanner.for_config(cfg, default_target)
    return GridPlanner(cfg, default_target)


# settings that, at these values, measure as before they existed: left out of the key, so that the
# rows measured before them still count as measured with this run's settings
AS_BEFORE = {"input_sets": 1}


def measure_key(cfg) -> tuple[str, str]:
    """(hash, JSON) of the measurement settings: rows of other settings are not the same numbers."""
    m = OmegaConf.to_container(cfg.measure, resolve=True)
    kept = {k: v for k, v in m.items() if AS_BEFORE.get(k, object()) != v}
    return digest(kept, 12), json.dumps(kept, sort_keys=True)


def make_row(cell: Cell, result: dict, ctx: dict, platform: dict | None = None) -> dict:
    """A cell's result completed to a row: its device's columns, the cell's parameters and ids,
    the run's columns."""
    return {**(platform or {}), **result, **cell.params(), "cell_id": cell.cell_id, "row_id": uuid.uuid4().hex, **ctx}


def processes(r) -> str:
    """How cells get their processes, in the sweep's first line."""
    n = cells_per_process(r)
    how = {0: "one process per device, replaced after a failure", 1: "a fresh process per cell"}.get(
        n, f"a fresh process every {n} cells and after a failure")
    return f"{r.isolation} isolation: {how}"


class RunLog:
    """One run's rows: each completed with the run's columns, made durable, then tallied."""

    def __init__(self, cfg, store: Store, summary: Summary, session):
        key, settings = measure_key(cfg)
        self.store, self.summary, self.session = store, summary, session
        self.ctx = {"run_id": summary.run_id, "sweep_name": cfg.sweep_name, "isolation": cfg.run.isolation,
                    "measure_key": key, "measure_settings": settings, **provenance.record()}

    def record(self, cell: Cell, result: dict, slot=None) -> dict:
        row = make_row(cell, result, self.ctx, self.session.platform(cell.target))
        row |= shares(row, self.session.ceiling(row, slot))
        try:
            self.store.append([row])  # durable before the cell counts as done
        except OSError as exc:
            raise StoreWriteError(f"{self.store.path}: {exc.strerror or exc}") from None
        self.store.claims.release(cell.cell_id, self.summary.run_id)
        self.summary.count(row)
        return row


class Rounds:
    """The round loop: what to skip, what no device can run, what to claim and dispatch."""

    def __init__(self, cfg, store: Store, session, runlog: RunLog, planner):
        self.cfg, self.store, self.session, self.runlog, self.planner = cfg, store, session, runlog, planner
        self.summary, self.key = runlog.summary, runlog.ctx["measure_key"]
        self.seen: set[str] = set()
        self.known: set[str] = set()  # row ids the dataset held when we looked: rows of other runs beyond them
        #                               were measured meanwhile

    def run(self) -> None:
        while cells := self.planner.next_round():
            self.round(cells)

    def round(self, cells: list[Cell]) -> None:
        todo = self.skip_done(cells)
        # a capacity search runs several rounds (its planner counts them): the line says which
        name = f"{self.cfg.sweep_name!r}" + (f", round {self.planner.rounds}" if self.cfg.capacity.enabled else "")
        log.info("sweep %s: %d cells, %d to run, %d already in %s; %d device(s) (%s)",
                 name, len(cells), len(todo), len(cells) - len(todo), self.store.path,
                 self.summary.devices, processes(self.cfg.run))
        mine, theirs = self._claim(todo)
        self._execute(mine)
        self._wait_for_others(theirs)

    def _execute(self, cells: list[Cell]) -> None:
        """Rows at once for cells no device of their target can run; the rest to the devices."""
        runnable = []
        for cell in cells:
            pre = capability.unsupported(cell)
            if pre is not None:  # the target cannot run it: a row now, never scheduled
                self.planner.record(cell, self.runlog.record(cell, pre))
            else:
                runnable.append(cell)
        if len(runnable) < len(cells):
            log.info("%d of them cannot run on these devices (a row each now, never scheduled); %d to measure",
                     len(cells) - len(runnable), len(runnable))
        self.session.execute(runnable, self._on_row, len(cells) - len(runnable))

    def skip_done(self, cells: list[Cell], looked: tuple | None = None) -> list[Cell]:
        """The cells not yet in the dataset (by run.rerun), counted in the summary. ``looked``:
        ``Store.look``'s answer, if the caller has just read it."""
        new = [c for c in cells if c.cell_id not in self.seen]
        self.seen |= {c.cell_id for c in new}
        self.summary.total += len(new)
        done, ids = looked or self.store.look(self.cfg.run.rerun, self.key)
        self.known |= ids
        done &= {c.cell_id for c in cells}
        if done:
            rows = self.store.latest().set_index("cell_id") if self.cfg.capacity.enabled else None
            for c in cells:
                if c.cell_id in done and rows is not None and not self.planner.usable(rows.loc[c.cell_id].to_dict()):
                    done.discard(c.cell_id)
                elif c.cell_id in done and rows is not None:
                    self.planner.record(c, rows.loc[c.cell_id].to_dict())
            other = self.store.measured_otherwise(done, self.key)
            if other and self.cfg.run.rerun != "changed":
                self.summary.other_settings += len(other)
                log.warning("%d of these cells were measured with other measure.* settings than this run's; "
                            "their rows are kept. To measure them with these settings: run.rerun=changed", len(other))
        self.summary.skipped += len([c for c in new if c.cell_id in done])
        return [c for c in cells if c.cell_id not in done]

    def _claim(self, cells: list[Cell], quiet: bool = False) -> tuple[list[Cell], list[Cell]]:
        """(cells this run now holds, cells another live sweep holds). A cell another sweep
        finished between our look at the dataset and our claim is released and taken as done
        there: claim first, then look again."""
        mine, theirs = [], []
        for c in cells:
            (mine if self.store.claims.claim(c.cell_id, self.summary.run_id) is None else theirs).append(c)
        if mine:
            done = self.store.written_since(self.known, self.summary.run_id)
            for c in [c for c in mine if c.cell_id in done]:
                self.store.claims.release(c.cell_id, self.summary.run_id)
            self._done_elsewhere([c for c in mine if c.cell_id in done])
            mine = [c for c in mine if c.cell_id not in done]
        if theirs and not quiet:
            log.info("%d cells are being measured by another sweep on this store: waiting for their rows "
                     "instead of measuring them twice", len(theirs))
        return mine, theirs

    def _done_elsewhere(self, cells: list[Cell]) -> None:
        """Cells another sweep measured: counted, and their rows given to a planner that reads them."""
        self.summary.elsewhere += len(cells)
        if cells and self.cfg.capacity.enabled:
            rows = self.store.latest().set_index("cell_id")  # read once for all of them
            for c in cells:
                self.planner.record(c, rows.loc[c.cell_id].to_dict())

    def _wait_for_others(self, cells: list[Cell]) -> None:
        """Cells another live sweep holds: take their rows when they land, or measure them if that
        sweep goes away without them."""
        while cells:
            self.session.idle(1.0)
            done = self.store.written_since(self.known, self.summary.run_id)
            self._done_elsewhere([c for c in cells if c.cell_id in done])
            mine, cells = self._claim([c for c in cells if c.cell_id not in done], quiet=True)
            self._execute(mine)

    def _on_row(self, cell: Cell, result: dict, slot=None) -> dict:
        row = self.runlog.record(cell, result, slot)
        self.planner.record(cell, row)
        return row


def plan(cfg, default_target: str = "any") -> list[Cell]:
    """Check the config and expand its grid, without Ray or torch (what a sweep would run)."""
    validate(cfg)
    return expand(cfg, default_target)


TARGET_RULE = 1  # the version of how a target is named (cluster.Resources.default_target, Session): a change
#                 to that rule must raise it, so that no target named by the old rule is reused
TARGET_ENV = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "RAY_OVERRIDE_RESOURCES")


def target_conditions(cfg) -> dict:
    """What decides the target (the GPU model, ``any`` or ``cpu``) that a private Ray cluster on
    this machine gives a sweep's cells: the host, its NVIDIA GPUs (NVML: no torch, no Ray), the
    GPUs this process may see, Ray's version (its names for GPU models have changed), this
    tool's rule, and the settings that shape the cluster."""
    import importlib.metadata

    try:
        ray_version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        ray_version = None
    c = cfg.cluster
    return {"host": HOST, "gpus": host_gpus(), "env": {k: os.environ.get(k) for k in TARGET_ENV}, "ray": ray_version,
            "rule": TARGET_RULE, "num_gpus": c.num_gpus, "device": cfg.run.device,
            "init": OmegaConf.to_container(c.init, resolve=True)}


def already_done(cfg, store: Store, summary: Summary, conditions: dict) -> GridPlanner | None:
    """A sweep whose every cell is already in the dataset needs no cluster. Its cells' target
    comes from the cluster (the GPU model Ray names), so this is known only where a private
    cluster gave it under the same conditions before (``Store.remember_target``); then the grid
    is checked against the dataset before Ray starts. The planner, counted in the summary, when
    nothing is left to run; else None."""
    ray = sys.modules.get("ray")
    if cfg.capacity.enabled or cfg.run.rerun == "all" or cfg.grid.accelerators or (ray and ray.is_initialized()):
        return None  # bisection rounds, everything again, GPU models the cluster must have, a caller's cluster
    target = store.known_target(conditions)
    if target is None:
        return None
    planner = GridPlanner(cfg, target)
    looked = store.look(cfg.run.rerun, measure_key(cfg)[0])
    if any(c.cell_id not in looked[0] for c in planner.cells):
        return None
    Rounds(cfg, store, None, RunLog(cfg, store, summary, None), planner).skip_done(planner.cells, looked)
    return planner


def run(cfg, output_dir: str | None = None, began_at: float | None = None) -> Summary:
    """The sweep as a plain function. Raises ConfigError (bad input or a cluster that cannot run
    it: before any cell runs), Interrupted (SIGINT, SIGTERM), StoreWriteError. ``began_at``
    (epoch seconds; now if not given): where the account of the run's time starts (the command's
    process start, for its first run)."""
    began_at = began_at or time.time()
    from orchestrator import cli

    cli.console()
    validate(cfg)
    store = Store(cfg.store.path)
    try:
        store.prepare()
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    from orchestrator import auth, forkserver

    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    auth.prepare(address, ConfigError, "cluster.address" if cfg.cluster.address else "RAY_ADDRESS")  # before Ray
    summary = Summary(f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", began_at=began_at)
    conditions = None if address else target_conditions(cfg)
    if conditions:  # a private cluster on this machine: what it could never do, refused before it starts
        check_host(cfg, len(conditions["gpus"]))
    planner = None if address else already_done(cfg, store, summary, conditions)
    if planner is not None:
        forkserver.discard_early()
        log.info("sweep %r: %d cells, 0 to run, %d already in %s: no cluster to start", cfg.sweep_name,
                 len(planner.cells), len(planner.cells), store.path)
        save_run(cfg, store, summary, output_dir)
        finish(cfg, store, summary, planner, output_dir)
        summary.command_s = time.time() - began_at
        log.info("the whole command: %.1f s, with no cluster (the report: %.1f s)", summary.command_s, summary.report_s)
        return summary
    fork = None
    if cfg.run.isolation == "pool" and not address:  # its imports (seconds) overlap Ray's start
        log_file = os.path.join(output_dir, "cells.log") if output_dir else None
        fork = forkserver.take_early(log_file) or forkserver.start(log=log_file)
    else:
        forkserver.discard_early()
    from orchestrator.session import Session  # Ray is imported only once the config is known good

    plotters = None
    try:
        with Session(cfg, store, summary, fork) as session:  # a signal in there: Interrupted
            if session.owns_ray and conditions:  # a private cluster's target, for a later run with nothing to do
                store.remember_target(conditions, session.default_target)
            planner = planner_for(cfg, session.default_target)
            plotters = report_ahead(cfg, output_dir, session.default_target, planner)
            sweep(cfg, store, summary, session, planner, output_dir)
        try:  # after the cells a signal is the caller's: a KeyboardInterrupt (the CLI's StopOnce)
            finish(cfg, store, summary, planner, output_dir, plotters)
        finally:
            session.wait_closed()
    finally:
        if plotters is not None:
            plotters.close()
    if summary.before_s is not None:
        summary.command_s = time.time() - summary.began_at
        log.info(summary.command_line())
    return summary


def report_ahead(cfg, output_dir: str | None, default_target: str, planner):
    """What the report will need, readied while the device workers start (nothing is measured
    yet): its modules (matplotlib: 0.3-0.6 s), imported in a thread; and, where its figures are
    wanted and the cells run on GPUs, its plotting processes (their imports take a second or
    two), returned. On this machine's CPUs their start would share the cores with cells being
    timed."""
    if not (cfg.report.enabled and output_dir):
        return None
    threading.Thread(target=importlib.import_module, args=("orchestrator.report",), daemon=True).start()
    on_gpus = default_target != "cpu" and cfg.run.device != "cpu"
    if not (cfg.report.plots and on_gpus) or cfg.capacity.enabled:
        return None
    from orchestrator.plotters import Plotters, figures

    return Plotters(figures(planner.cells, seed=cfg.sweep_name == "seed"))


def save_run(cfg, store: Store, summary: Summary, output_dir: str | None) -> None:
    """The run's record in the dataset's metadata (its config); ``finish`` adds how it went."""
    store.save_run(summary.run_id, {"sweep_name": cfg.sweep_name, "output_dir": output_dir,
                                    "config": OmegaConf.to_container(cfg, resolve=True)})


def sweep(cfg, store: Store, summary: Summary, session, planner, output_dir: str | None) -> None:
    """The rounds of the planner's cells, once the cluster is up."""
    save_run(cfg, store, summary, output_dir)
    session.start_devices(planner.targets())
    rounds = Rounds(cfg, store, session, RunLog(cfg, store, summary, session), planner)
    t0 = time.perf_counter()
    try:
        rounds.run()
    finally:
        summary.wall_s = time.perf_counter() - t0
        store.claims.end_run(summary.run_id)


def finish(cfg, store: Store, summary: Summary, planner, output_dir: str | None, plotters=None) -> None:
    """Compaction, the summary line, the capacity table and the report: none of them can lose a row."""
    t0 = time.perf_counter()
    if cfg.store.compact:
        try:
            store.compact()
        except OSError as exc:
            log.warning("store: compaction skipped (%s); the part files hold every row", exc.strerror or exc)
    summary.compact_s = time.perf_counter() - t0
    log.info(summary.line())
    try:  # the run's record gets how it went (benchmarks read it)
        info = store.runs().get(summary.run_id, {})
        store.save_run(summary.run_id, info | {"summary": dataclasses.asdict(summary)})
    except OSError:
        pass
    cells = getattr(planner, "cells", None)
    if cfg.capacity.enabled:
        from orchestrator import report_capacity

        results = planner.results()
        if output_dir:
            report_capacity.write(results, planner.trial_points(), output_dir, summary.device_name)
        else:
            log.info("capacity:\n%s", report_capacity.table(results))
        cells = [c for s in planner.searches for c in planner_trials(s)]
    if cfg.report.enabled and output_dir and cells:
        from orchestrator import report

        t0 = time.perf_counter()
        report.for_sweep(cfg, store, cells, output_dir, plotters)
        summary.report_s = time.perf_counter() - t0


def planner_trials(search) -> list[Cell]:
    return [dataclasses.replace(search.key, seq_len=t["seq_len"]) for t in search.trials]


def exit_code(cfg, summary: Summary) -> int:
    """1 when a cell of this run ended in a status of run.fail_on, else 0."""
    bad = {s: n for s, n in summary.statuses.items() if s in set(cfg.run.fail_on)}
    if bad:
        log.error("run.fail_on: %s in this run", ", ".join(f"{n} {s}" for s, n in sorted(bad.items())))
        return 1
    return 0


def main(cfg, output_dir: str | None, began_at: float | None = None) -> int:
    """``python -m orchestrator``: the sweep, with every way it can end turned into an exit code
    and one line (never a traceback for input, a cluster, signals or a full disk). SIGTERM
    stops it as Ctrl-C does, also outside the cells (compaction, the report), and ends it
    with 143; only the first signal counts (``StopOnce``)."""
    stop = StopOnce()
    for sig in SIGNALS:
        signal.signal(sig, stop)
    try:
        summary = run(cfg, output_dir, began_at)
    except ConfigError as exc:
        log.error("error: %s", exc)
        return 2
    except Interrupted as exc:
        ignore_signals()  # for the exit: it gives Python's handlers (StopOnce) back to the default, which kills
        return 128 + exc.signum
    except KeyboardInterrupt as exc:  # outside the cells (compaction, the report): every row is saved
        ignore_signals()
        from orchestrator import cli

        log.warning("interrupted: every row this run wrote is saved in %s; its report may be missing: %s makes it",
                    cfg.store.path, cli.report_command(cfg, output_dir))
        return 128 + signal_of(exc)
    except StoreWriteError as exc:
        log.error("error: cannot write to the dataset %s. Every row written before is kept; run the same "
                  "command again, once it can be written, to measure the rest", exc)
        return 1
    return exit_code(cfg, summary)
