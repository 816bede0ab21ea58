"""One sweep, start to end: ``run(cfg)`` validates, expands, skips what is done, runs the
rest on the cluster, writes each row as it lands, compacts, and reports."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from orchestrator import capability
from orchestrator.config import ConfigError, validate
from orchestrator.grid import Cell, expand
from orchestrator.progress import Progress, fmt_s
from orchestrator.store import Store

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Summary:
    run_id: str
    total: int  # cells in the grid
    skipped: int  # already in the dataset
    statuses: dict = field(default_factory=dict)
    devices: int = 0
    wall_s: float = 0.0
    measure_s: float = 0.0

    @property
    def efficiency(self) -> float:
        """Share of wall time x devices spent measuring."""
        return self.measure_s / (self.wall_s * self.devices) if self.wall_s and self.devices else 0.0

    def count(self, row: dict) -> None:
        self.statuses[row["status"]] = self.statuses.get(row["status"], 0) + 1
        self.measure_s += row.get("measure_s") or 0.0

    def line(self) -> str:
        ran = sum(self.statuses.values())
        tally = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items())) or "nothing to do"
        return (
            f"sweep {self.run_id}: {ran} cells run ({tally}), {self.skipped} already done; "
            f"{fmt_s(self.wall_s)} on {self.devices} device(s); efficiency {self.efficiency:.2f} "
            f"({self.measure_s:.1f} s measuring of {self.wall_s * self.devices:.1f} device-seconds)"
        )


def make_row(cell: Cell, result: dict, ctx: dict) -> dict:
    return {**result, **cell.params(), "cell_id": cell.cell_id, "row_id": uuid.uuid4().hex, **ctx}


class RunLog:
    """One run's rows: each made durable as it lands, then tallied in the run's summary."""

    def __init__(self, cfg, store: Store, devices: int, total: int = 0, skipped: int = 0):
        run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.store, self.summary = store, Summary(run_id, total, skipped, devices=devices)
        self.ctx = {"run_id": run_id, "sweep": cfg.sweep_name, "isolation": cfg.run.isolation,
                    "git_commit": git_commit()}

    def record(self, cell: Cell, result: dict) -> dict:
        row = make_row(cell, result, self.ctx)
        self.store.append([row])  # durable before the cell counts as done
        self.summary.count(row)
        return row


def plan(cfg) -> list[Cell]:
    """Validate and expand without touching Ray: every config error surfaces here."""
    validate(cfg)
    cells = expand(cfg)
    if len(cells) > cfg.run.max_cells:
        raise ConfigError(f"the grid has {len(cells)} cells, over run.max_cells = {cfg.run.max_cells}")
    return cells


def run(cfg, output_dir: str | None = None) -> Summary:
    from orchestrator import executor  # Ray is imported only once the config is known good

    plan(cfg)
    if cfg.capacity.enabled:  # +sweep=capacity: rounds of trial cells instead of the grid
        from orchestrator import capacity

        return capacity.run(cfg, output_dir)
    executor.connect(cfg.cluster)
    sh = executor.shape()
    cells = expand(cfg, default_target=sh.default_target)
    store = Store(cfg.store.path)
    done = store.done(cfg.run.rerun)
    summary = measure(cfg, [c for c in cells if c.cell_id not in done], store, sh, cells, output_dir)
    if cfg.store.compact:
        store.compact()
    print(summary.line(), flush=True)
    if cfg.report.enabled and output_dir:
        from orchestrator import report

        report.for_sweep(cfg, store, cells, output_dir)
    return summary


def measure(cfg, todo: list[Cell], store: Store, sh, cells: list[Cell], output_dir: str | None) -> Summary:
    """Run the cells still to do, each row durable as it lands; cells the target model cannot
    run become unsupported rows without being scheduled."""
    from orchestrator import executor

    pre = {c.cell_id: r for c in todo if (r := capability.unsupported(c))}
    runnable = [c for c in todo if c.cell_id not in pre]
    slots = executor.make_slots(runnable, sh, cfg) if runnable else []
    log = RunLog(cfg, store, len(slots), len(cells), len(cells) - len(todo))
    summary = log.summary
    store.save_run(summary.run_id, {
        "sweep": cfg.sweep_name, "config": OmegaConf.to_container(cfg, resolve=True),
        "cells": [c.cell_id for c in cells], "cluster": {"gpus": sh.gpus, "cpus": sh.cpus},
        "output_dir": output_dir,
    })
    print(f"sweep {cfg.sweep_name!r}: {len(cells)} cells, {len(todo)} to run, {summary.skipped} already in "
          f"{store.path}; {len(slots)} device(s) ({cfg.run.isolation} isolation)", flush=True)
    progress = Progress(len(todo), len(slots), cfg.sweep_name, enabled=cfg.run.progress)

    def on_row(cell: Cell, result: dict) -> None:
        progress.update(log.record(cell, result))

    for cell in todo:
        if cell.cell_id in pre:
            on_row(cell, pre[cell.cell_id])
    t0 = time.perf_counter()
    try:
        if runnable:
            with executor.Executor(cfg, slots) as ex:
                ex.run(runnable, on_row)
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted: {sum(summary.statuses.values())} rows saved in {store.path}; "
              "run the same command again to resume", flush=True)
        raise
    finally:
        summary.wall_s = time.perf_counter() - t0
        progress.close()
    return summary
