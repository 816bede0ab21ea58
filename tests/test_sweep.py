"""A smoke sweep end to end on a real local Ray cluster into a real parquet dataset."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import ROOT, each_row_once, ensure_ray, make_cfg, run_cli, stderr_lines

from orchestrator.driver import run
from orchestrator.grid import expand
from orchestrator.rows import COLUMNS
from orchestrator.store import Store

REQUIRED = ["cell_id", "sweep_name", "backend", "seq_len", "batch_size", "num_heads", "head_dim", "dtype", "causal",
            "status", "error", "median_ms", "p10_ms", "p90_ms", "tflops", "rel_error", "peak_allocated_bytes",
            "nvml_used_before_bytes", "nvml_used_peak_bytes", "nvml_index", "gpu_uuid", "device_name",
            "torch_version"]


def test_smoke_sweep_writes_one_row_per_cell(smoke_dataset):
    df = pd.read_parquet(smoke_dataset["store"])
    cells = expand(make_cfg("+sweep=smoke"), default_target="cpu")
    assert sorted(df.cell_id) == sorted(c.cell_id for c in cells)
    assert set(REQUIRED) <= set(df.columns) and list(df.columns) == [n for n, _, _ in COLUMNS]
    assert (df.status == "ok").all(), df[["backend", "error"]]
    assert (df.sweep_name == "smoke").all() and (df.target == "cpu").all()
    assert (df.p10_ms <= df.median_ms).all() and (df.median_ms <= df.p90_ms).all()
    assert (df.iters >= 5).all() and (df.tflops > 0).all()
    assert (df.rel_error < 1e-4).all()  # float32 against the fp32 reference
    assert df.torch_version.notna().all() and df.host.notna().all() and df.pid.notna().all()
    # by default one process per device (one CPU slot here) measures cell after cell
    assert df.pid.nunique() == 1 and sorted(df.process_cell) == list(range(1, len(df) + 1))
    assert (df.ended_at > df.started_at).all()
    assert smoke_dataset["summary"].statuses == {"ok": len(cells)}


def test_cells_per_process_one_gives_every_cell_a_fresh_process(tmp_path):
    """run.cells_per_process=1: the strict isolation, a process (and on a GPU a CUDA context) per cell."""
    ensure_ray(0)
    summary = run(make_cfg("+sweep=smoke", "run.cells_per_process=1", store=tmp_path / "r"))
    df = pd.read_parquet(tmp_path / "r")
    assert summary.statuses == {"ok": len(df)} and len(df) > 1
    assert df.pid.nunique() == len(df) and (df.process_cell == 1).all()


@pytest.mark.slow
def test_same_sweep_again_measures_nothing_and_rerun_all_measures_everything(smoke_dataset, tmp_path):
    ensure_ray(0)
    cfg = make_cfg("+sweep=smoke", store=smoke_dataset["store"])
    before = Store(smoke_dataset["store"]).read()
    again = run(cfg)
    assert again.skipped == again.total and not again.statuses
    assert len(Store(smoke_dataset["store"]).read()) == len(before)

    copy = tmp_path / "copy"
    Store(copy).append(before.to_dict("records"))
    redo = run(make_cfg("+sweep=smoke", "run.rerun=all", store=copy))
    assert redo.statuses == {"ok": len(before)}
    after = Store(copy).read()
    assert len(after) == 2 * len(before)
    assert set(after.row_id) >= set(before.row_id)  # the old rows stay


@pytest.mark.slow
def test_a_sweep_with_nothing_left_starts_no_cluster_unless_its_conditions_changed(tmp_path):
    """The same command again, every cell in the dataset: no Ray, no device workers, the report
    made. The cells' target comes from the cluster, so the shortcut holds only where a private
    cluster gave it under the same conditions: with fake GPUs (another target, "any") the
    cluster starts and measures those cells."""
    from orchestrator.config import host_gpus

    if host_gpus():
        pytest.skip("fake GPUs on a GPU machine still carry its GPU model: the same cells, no other target")
    store, args = tmp_path / "r", ["+sweep=smoke", "grid.backends=[math,flash]"]
    first = run_cli(*args, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run1'}")
    assert first.returncode == 0 and "cluster: starting" in first.stdout, first.stderr[-2000:]
    again = run_cli(*args, f"store.path={store}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cluster: starting" not in again.stdout and "no cluster to start" in again.stdout, again.stdout[-2000:]
    assert "0 cells run (nothing to do), 4 already done" in again.stdout
    assert again.stdout.splitlines()[-1].startswith("the whole command: ") and "with no cluster" in again.stdout
    assert (tmp_path / "run2" / "report.html").is_file()
    refused = run_cli(*args, "run.cpu_workers=999", f"store.path={store}", f"hydra.run.dir={tmp_path / 'run4'}")
    assert refused.returncode == 2 and "run.cpu_workers = 999" in refused.stderr, refused.stderr[-2000:]  # as with one
    other = run_cli(*args, "cluster.num_gpus=1", "run.device=cpu", f"store.path={store}",
                    f"hydra.run.dir={tmp_path / 'run3'}")
    assert other.returncode == 0 and "cluster: starting" in other.stdout, other.stderr[-2000:]
    assert "4 cells run (4 ok)" in other.stdout, other.stdout[-2000:]
    assert sorted(Store(store).read().target) == ["any"] * 4 + ["cpu"] * 4


def test_a_grown_grid_runs_only_the_new_cells(smoke_dataset, tmp_path):
    ensure_ray(0)
    store = tmp_path / "grow"
    Store(store).append(Store(smoke_dataset["store"]).read().to_dict("records"))
    s = run(make_cfg("+sweep=smoke", "grid.seq_lens=[64,128,96]", store=store))
    assert s.skipped == 6 and s.statuses == {"ok": 3}


@pytest.mark.slow
def test_multirun_lands_every_job_in_one_dataset(tmp_path):
    store = tmp_path / "results"
    proc = run_cli("-m", "+sweep=smoke", "grid.batch_sizes=[1],[2]", "grid.backends=[math]",
                   f"store.path={store}", f"hydra.sweep.dir={tmp_path / 'multi'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(store)
    assert sorted(df.batch_size.unique()) == [1, 2]
    assert df.run_id.nunique() == 2 and len(df) == 4 and (df.status == "ok").all()
    each_row_once(store, cells=4)  # pandas, pyarrow, DuckDB and polars alike
    # each job's account of its time is its own: the second's start does not hold the first job
    (first, first_before), (second, second_before) = [
        tuple(map(float, re.search(r"whole command: ([\d.]+) s: ([\d.]+) s before", ln).groups()))
        for ln in proc.stdout.splitlines() if "the whole command:" in ln]
    assert second_before < first - first_before, proc.stdout


@pytest.mark.slow
def test_ray_start_up_chatter_goes_to_the_log_file_unless_asked_for(tmp_path):
    quiet = run_cli("+sweep=smoke", "grid.backends=[math,cudnn]", "grid.modes=[fwd,fwd_bwd]",
                    f"store.path={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}")  # (timed: wall_s)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    said = quiet.stdout + quiet.stderr
    assert quiet.stdout.splitlines()[0] == "cluster: starting a private Ray cluster on this machine"
    # the progress counts what runs, after a line that says what cannot (cuDNN on a CPU), and tells modes apart
    assert "8 cells, 8 to run" in said and "4 of them cannot run on these devices" in said and "4 to measure" in said
    assert "[4/4] ok" in said and " n64 fwd_bwd on CPU 0: " in said and " n64 on CPU 0: " in said
    assert re.search(r"8 cells run \(4 ok, 4 unsupported\), 0 already done; \d+\.\d s on 1 device", said), said
    # last, where the whole command's time went: the fixed parts apart from the cells, the same
    # start and cells as the sweep's own line, within the time the command took
    parts = re.fullmatch(r"the whole command: ([\d.]+) s: ([\d.]+) s before the cluster .*, ([\d.]+) s start .*, "
                         r"([\d.]+) s of cells, ([\d.]+) s after the last row \(compaction [\d.]+ s, report "
                         r"[\d.]+ s; closing the devices and the cluster [\d.]+ s, beside them\)",
                         quiet.stdout.splitlines()[-1])
    assert parts, quiet.stdout.splitlines()[-1]
    whole, before, start, cells, after = map(float, parts.groups())
    sweep = re.search(r"0 already done; ([\d.]+) s on 1 device\(s\) after a ([\d.]+) s start", said)
    assert (cells, start) == (float(sweep[1]), float(sweep[2]))
    assert 0 < before and 0 < after and whole <= quiet.wall_s + 0.1
    assert "Started a local Ray instance" not in said and "Token authentication" not in said
    assert "worker.py" not in said and "(raylet)" not in said
    assert "Started a local Ray instance" in (tmp_path / "run" / "sweep.log").read_text()  # kept, in the run folder
    loud = run_cli("+sweep=smoke", "grid.backends=[math]", "cluster.verbose=true", f"store.path={tmp_path / 'r2'}",
                   f"hydra.run.dir={tmp_path / 'run2'}")  # a store of its own: with every cell done, no cluster starts
    assert loud.returncode == 0 and "Started a local Ray instance" in loud.stdout + loud.stderr


def test_the_fork_server_starts_with_the_command_and_leaves_nothing_behind(tmp_path):
    """`python -m orchestrator` starts the cells' fork server before Hydra composes the config (its
    imports then overlap the command's own start). The run takes it over: its cells' output lands
    in the run folder's cells.log, off the terminal. A run with no use for it (cells as Ray tasks)
    and a refused config leave no process and no folder of it behind."""
    tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: Ray's socket paths live under it too
    env = {"TMPDIR": str(tmp), "PYTHONFAULTHANDLER": "1"}  # a segfaulting cell then says so on its stderr
    try:
        crash = run_cli("+sweep=faults", "grid.backends=[math,fault_segfault]", "run.retries=0",
                        f"store.path={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}", env=env)
        assert crash.returncode == 0, crash.stderr[-2000:]
        cells_log = (tmp_path / "run" / "cells.log").read_text()
        assert "started with the command): this run's cells from here" in cells_log  # the early one
        assert "Segmentation fault" in cells_log and "Segmentation fault" not in crash.stdout + crash.stderr
        task = run_cli("+sweep=smoke", "grid.backends=[math]", "run.isolation=task", f"store.path={tmp_path / 'r'}",
                       f"hydra.run.dir={tmp_path / 'run2'}", env=env)
        assert task.returncode == 0, task.stderr[-2000:]
        bad = run_cli("+sweep=smoke", "run.isolation=threads", env=env)
        assert bad.returncode == 2 and len(stderr_lines(bad)) == 1, bad.stderr
        assert not list(tmp.glob("attn-fork-*"))
        servers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                   if "orchestrator.forkserver" in (p.info["cmdline"] or [])]
        assert not [c for c in servers if str(tmp) in " ".join(c)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_fork_server_starts_early_only_for_a_sweep_that_forks_cells_here(monkeypatch):
    from orchestrator.cli import runs_cells_here

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runs_cells_here(["+sweep=full", "grid.seq_lens=[512]"]) and runs_cells_here(["cluster.address=null"])
    for args in (["--help"], ["--cfg=job"], ["--cfg", "job"], ["--info=all"], ["cluster.address=auto"],
                 ["+sweep=full", "run.isolation=task"]):
        assert not runs_cells_here(args), args
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert not runs_cells_here(["+sweep=full"])


DRIVER = """
import sys
from hydra import compose, initialize_config_dir
import orchestrator.config
from orchestrator.driver import run
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose("config", overrides=["+sweep=smoke", "store.path={store}", "run.progress=false"])
summary = run(cfg, {out!r})
assert summary.statuses == {{"ok": 6}}, summary.statuses
print("torch" in sys.modules)
"""


def test_the_driver_never_imports_torch(tmp_path):
    """The driver dispatches, records rows (with their roofline shares) and reports: none of it
    needs torch. The first row used to import it (the shares lived beside the ceilings' torch
    code): on a GPU machine, 3 s in which no cell was dispatched."""
    code = DRIVER.format(conf=str(ROOT / "conf"), store=tmp_path / "r", out=str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_run_fail_on_makes_the_exit_code_fail_a_ci_job(tmp_path):
    args = ["+sweep=faults", "grid.backends=[math,fault_exit]", "run.retries=0", f"store.path={tmp_path / 'r'}"]
    default = run_cli(*args, f"hydra.run.dir={tmp_path / 'run1'}")
    assert default.returncode == 0, default.stderr[-2000:]  # today's behaviour: the rows say it
    strict = run_cli(*args, "run.rerun=all", "run.fail_on=[crashed,timeout,error]",
                     f"hydra.run.dir={tmp_path / 'run2'}")
    assert strict.returncode == 1 and "run.fail_on: 1 crashed" in strict.stderr, strict.stderr[-2000:]
    ok = run_cli(*args, "grid.backends=[math]", "run.rerun=all", "run.fail_on=[crashed]",
                 f"hydra.run.dir={tmp_path / 'run3'}")
    assert ok.returncode == 0


@pytest.mark.slow
def test_the_whole_commands_time_leaves_out_what_a_shell_ran_before_it_exec_d_python(tmp_path):
    """`bash -c 'pip install ... && python -m orchestrator'`: bash execs python in its own process,
    whose start /proc dates to the shell's. The command's account counts from Python's start and
    says what it left out, instead of calling the shell's seconds "before the cluster"."""
    import shlex

    args = ["+sweep=smoke", "grid.backends=[math]", "grid.seq_lens=[64]", "grid.modes=[fwd]",
            f"store.path={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'run'}"]
    command = f"sleep 3; exec {shlex.quote(sys.executable)} -m orchestrator {shlex.join(args)}"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    left_out = re.search(r"this process began ([\d.]+) s before Python reached this tool", said)
    assert left_out and 2.5 < float(left_out[1]) < 4, said
    whole = float(re.search(r"the whole command: ([\d.]+) s:", said)[1])
    assert whole <= wall - 2.5, (whole, wall)


def test_the_command_counts_from_the_process_start_unless_it_began_long_before_python():
    """The account's start: the process's (the interpreter's start included) when Python reached
    the tool soon after it; Python's when the process began more than EXEC_GAP_S earlier (a shell
    that exec'd python after other work); Python's, with nothing said, where /proc is missing."""
    from orchestrator.summary import EXEC_GAP_S, command_start, process_started_at

    assert command_start(100.0, 100.3) == (100.0, None)
    assert command_start(100.0, 100.0 + EXEC_GAP_S + 1) == (100.0 + EXEC_GAP_S + 1, EXEC_GAP_S + 1)
    assert command_start(None, 100.3) == (100.3, None)
    assert command_start(100.3, 100.0) == (100.0, None)  # clocks a little apart: never after Python's start
    here = process_started_at()
    assert here is None or here <= time.time()
