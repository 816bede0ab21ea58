"""The capacity search: bisection and memory model as pure functions, then one real run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from conftest import ensure_ray, make_cfg

from orchestrator import capacity
from orchestrator.config import ConfigError, validate
from orchestrator.grid import Cell

KEY = Cell("attention", "flash", "fwd", "float16", True, 64, 16, 1, 0)
LENGTHS = capacity.lengths(128, 8192, 128)  # 64 candidates


def oracle(limit_n: int, status_over="oom"):
    """A stand-in for the executor: trials up to limit_n run, longer ones fail; memory ~ N."""
    calls = []

    def run_round(cells, on_row):
        calls.append([c.seq_len for c in cells])
        for c in cells:
            ok = c.seq_len <= limit_n
            on_row(c, {"status": "ok" if ok else status_over, "peak_allocated_total_bytes": 1000 + 10 * c.seq_len
                       if ok else None, "device_total_bytes": 1000 + 10 * limit_n})

    return run_round, calls


@pytest.mark.parametrize("limit_n", [100, 128, 129, 1000, 4096, 8191, 8192, 10**6])
def test_bisection_finds_the_longest_length_that_fits(limit_n):
    s = capacity.Search(KEY, LENGTHS)
    run_round, calls = oracle(limit_n)
    rounds = capacity.run_rounds(capacity.CapacityPlanner([s]), run_round, {})
    want = max((n for n in LENGTHS if n <= limit_n), default=None)
    assert s.longest == want
    bisect = 1 + math.ceil(math.log2(len(LENGTHS)))
    assert rounds <= bisect + 2  # bisection, then at most two lengths for the memory model
    assert calls[0] == [8192]  # max first: a backend that fits there is done in one trial
    assert len({n for c in calls for n in c}) == sum(map(len, calls))  # no length tried twice


def test_all_searches_advance_together_one_trial_each_per_round():
    searches = [capacity.Search(KEY, LENGTHS), capacity.Search(dataclasses.replace(KEY, backend="math"), LENGTHS)]
    run_round, calls = oracle(1000)
    capacity.run_rounds(capacity.CapacityPlanner(searches), run_round, {})
    assert all(len(c) <= 2 for c in calls) and len(calls[0]) == 2
    assert [s.longest for s in searches] == [896, 896]


def test_unsupported_ends_a_search_and_other_failures_are_reported():
    s = capacity.Search(KEY, LENGTHS)
    run_round, calls = oracle(0, status_over="unsupported")
    capacity.run_rounds(capacity.CapacityPlanner([s]), run_round, {})
    assert calls == [[8192]] and s.longest is None and s.stopped == "unsupported"
    s = capacity.Search(KEY, LENGTHS)
    capacity.run_rounds(capacity.CapacityPlanner([s]), oracle(300, status_over="error")[0], {})
    r = capacity.result(s, None)
    assert (r["longest_fit"], r["first_fail"], r["fail_status"]) == (256, 384, "error")


def test_memory_limit_turns_measured_peaks_into_the_answer():
    row = {"status": "ok", "peak_allocated_total_bytes": 5000}
    assert capacity.fits(row, None) and capacity.fits(row, 5000) and not capacity.fits(row, 4999)
    assert not capacity.fits({"status": "oom"}, None)
    assert capacity.fits({"status": "ok", "peak_allocated_bytes": 10, "peak_allocated_total_bytes": float("nan")}, 10)


def test_rows_already_in_the_dataset_are_reused():
    s = capacity.Search(KEY, LENGTHS)
    trial = Cell("attention", "flash", "fwd", "float16", True, 64, 16, 1, 8192)
    known = {trial.cell_id: {"status": "oom"}}
    run_round, calls = oracle(10**6)  # would say it fits: the stored oom wins
    capacity.run_rounds(capacity.CapacityPlanner([s]), run_round, known)
    assert 8192 not in [n for c in calls for n in c] and s.longest == 8064


@pytest.mark.parametrize("quadratic, coef", [(False, [3.0, 500.0]), (True, [0.5, 3.0, 500.0])])
def test_memory_model_fit_and_extrapolation(quadratic, coef):
    ns = [256, 512, 1024, 2048]
    model = capacity.fit([(n, np.polyval(coef, n)) for n in ns], quadratic)
    assert np.allclose(model, coef)
    limit = np.polyval(coef, 100_000)
    assert abs(capacity.solve(model, limit) - 100_000) <= 1
    assert capacity.fit([(256, 1.0)], quadratic) is None and capacity.solve(None, limit) is None


def test_table_names_each_search():
    s = capacity.Search(KEY, LENGTHS)
    capacity.run_rounds(capacity.CapacityPlanner([s]), oracle(8192)[0], {})
    r = capacity.result(s, None)
    assert r["at_max"] and abs(r["extrapolated"] - 8192) <= 1  # the oracle's device memory is its limit
    from orchestrator import report_capacity

    md = report_capacity.table([r])
    assert "| flash |" in md and "8,192 (max tried)" in md


def test_capacity_config_is_validated():
    validate(make_cfg("+sweep=capacity"))
    with pytest.raises(ConfigError, match="granularity"):
        validate(make_cfg("+sweep=capacity", "capacity.min_seq=1000"))
    with pytest.raises(ConfigError, match="memory_limit_bytes"):
        validate(make_cfg("+sweep=capacity", "capacity.memory_limit_bytes=100", "measure.memory=false"))


@pytest.mark.slow
def test_capacity_run_for_real(tmp_path, caplog):
    """Real trials on the CPU, where the memory limit stands in for the GPU's OOM: math's
    N x N scores meet the limit long before flash's linear memory does. Each round's line says
    which round it is (the first counts one trial per search, the sweep's total all of them)."""
    from orchestrator.driver import run
    from orchestrator.store import Store

    ensure_ray(0)
    store, out = tmp_path / "results", tmp_path / "out"
    cfg = make_cfg("+sweep=capacity", "grid.backends=[math,flash,efficient]", "grid.batch_sizes=[1]",
                   "grid.num_heads=[2]", "grid.head_dims=[16]", "grid.dtypes=[float32]", "capacity.min_seq=64",
                   "capacity.max_seq=1024", "capacity.granularity=64", "capacity.memory_limit_bytes=2000000",
                   store=store)
    summary = run(cfg, output_dir=str(out))
    df = Store(store).read()
    assert len(df) == summary.total and set(df["sweep_name"]) == {"capacity"}
    rounds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep 'capacity', round ")]
    assert len(rounds) >= 3 and rounds[0].startswith("sweep 'capacity', round 1: 3 cells") and "round 2: " in rounds[1]
    assert set(df[df.backend != "efficient"]["status"]) == {"ok"}
    trials = df[df.pid.notna()]  # the sweep sets run.cells_per_process=1: each trial in a fresh process
    assert trials.pid.is_unique and (trials.process_cell == 1).all()
    # the CPU has no efficient kernel: known before any work, one row, never scheduled
    eff = df[df.backend == "efficient"]
    assert len(eff) == 1 and eff.iloc[0]["status"] == "unsupported" and eff.iloc[0]["attempts"] == 0
    assert "no CPU kernel" in eff.iloc[0]["error"] and pd.isna(eff.iloc[0]["pid"])
    text = (out / "capacity.md").read_text()
    assert "(unsupported)" in next(line for line in text.splitlines() if "| efficient |" in line)
    math_row = next(line for line in text.splitlines() if "| math |" in line)
    assert "1,024 (max tried)" in next(line for line in text.splitlines() if "| flash |" in line)
    assert "over the memory limit" in math_row and (out / "capacity.png").stat().st_size > 0
    again = run(cfg, output_dir=str(out))  # every trial is in the dataset now
    assert again.statuses == {} and again.skipped == summary.total
