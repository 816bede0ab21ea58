"""Failures provoked for real: each ends as one row with the right status; the sweep goes on."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, ensure_ray, make_cfg

from orchestrator import forkserver
from orchestrator.driver import run
from orchestrator.store import Store

EXPECTED = {  # backend: (status, words in the error, attempts with run.retries=1)
    "math": ("ok", None, 1),
    "eager": ("ok", None, 1),  # after every fault, on the same device
    "fault_raise": ("error", "ValueError: fault_raise", 1),
    "fault_oom": ("oom", "can't allocate memory", 1),
    "fault_illegal_address": ("error", "IndexError", 1),
    "fault_segfault": ("crashed", "SIGSEGV", 2),
    "fault_abort": ("crashed", "SIGABRT", 2),
    "fault_exit": ("crashed", "exited with code 3", 2),
    "fault_hang": ("timeout", "deadline of 3 s", 2),
}


def faults_sweep(tmp_path, *overrides):
    ensure_ray(0)
    store = tmp_path / "faults"
    summary = run(make_cfg("+sweep=faults", "run.cell_timeout_s=3", *overrides, store=store))
    return summary, Store(store).read().set_index("backend")


def test_pool_mode_turns_every_failure_into_its_row(tmp_path, monkeypatch):
    started = []  # the fork servers the sweep starts (the real ones), to see they leave nothing behind
    real_start = forkserver.start
    monkeypatch.setattr(forkserver, "start", lambda *a, **kw: started.append(real_start(*a, **kw)) or started[-1])
    summary, df = faults_sweep(tmp_path)
    assert len(df) == len(EXPECTED) and df.cell_id.is_unique
    for backend, (status, words, attempts) in EXPECTED.items():
        row = df.loc[backend]
        assert row.status == status, (backend, row.error)
        assert words is None or words in row.error, (backend, row.error)
        assert row.attempts == attempts, backend
    assert df.loc["eager", "median_ms"] > 0 and df.loc["eager", "pid"] != df.loc["math", "pid"]
    assert summary.statuses == {"ok": 2, "error": 2, "oom": 1, "crashed": 3, "timeout": 1}
    assert started and not [a for a, _ in started if os.path.exists(os.path.dirname(a))]  # no socket left in /tmp


def test_one_process_for_many_cells_turns_the_same_failures_into_rows(tmp_path):
    """run.cells_per_process=0: a process measures cell after cell, and is replaced after each
    failure but an OOM; every fault still ends as its own row, and the healthy cells after it are
    measured."""
    _, df = faults_sweep(tmp_path, "run.cells_per_process=0")
    assert df.status.to_dict() == {b: s for b, (s, _, _) in EXPECTED.items()}, df.error.to_dict()
    assert df.process_cell.max() >= 2, "no process measured a second cell"
    for _, cells in df.dropna(subset=["process_cell"]).groupby("pid").process_cell:
        assert sorted(cells) == list(range(1, len(cells) + 1))  # a process's cells, counted from its first
    failed = df[~df.status.isin(["ok", "unsupported", "oom"])].dropna(subset=["process_cell"])
    for pid, n in zip(failed.pid, failed.process_cell, strict=True):
        assert df[df.pid == pid].process_cell.max() == n  # a failed cell is its process's last


@pytest.mark.slow
def test_task_mode_contains_the_same_failures(tmp_path):
    _, df = faults_sweep(tmp_path, "run.isolation=task", "run.retries=0")
    got = df.status.to_dict()
    assert got == {b: s for b, (s, _, _) in EXPECTED.items()}, df.error.to_dict()
    assert (df.attempts == 1).all()
    assert "deadline of 3 s" in df.loc["fault_hang", "error"]


@pytest.mark.slow
def test_rerun_failed_repeats_only_error_crashed_and_timeout(tmp_path):
    faults_sweep(tmp_path, "run.retries=0")
    store = Store(tmp_path / "faults")
    first = store.read()
    again = run(make_cfg("+sweep=faults", "run.cell_timeout_s=3", "run.retries=0", "run.rerun=failed",
                         store=tmp_path / "faults"))
    redo = {b for b, (s, _, _) in EXPECTED.items() if s in ("error", "crashed", "timeout")}
    assert sum(again.statuses.values()) == len(redo) and again.skipped == len(EXPECTED) - len(redo)
    rows = store.read()
    assert len(rows) == len(first) + len(redo)
    assert set(rows.loc[~rows.row_id.isin(first.row_id), "backend"]) == redo


def start_sweep(store, run_dir, *extra):
    args = [sys.executable, "-m", "orchestrator", "+sweep=smoke", "grid.backends=[math,eager]",
            "grid.seq_lens=[64,80,96,112,128,144,160,176,192,208,224,240]", "measure.budget_ms=200",
            f"store.path={store}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_rows(store, n, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(list(store.glob("part-*.parquet"))) >= n:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


def signal_mid_sweep(store, run_dir, rows: int, sig) -> subprocess.Popen:
    """A sweep in a driver process of its own, sent `sig` once `rows` rows are saved."""
    proc = start_sweep(store, run_dir)
    wait_for_rows(store, rows, proc)
    os.kill(proc.pid, sig)
    return proc


def finish(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the killed driver left behind (Ray's processes)
    except ProcessLookupError:
        pass
    proc.wait()


def fork_server_address(driver_pid: int) -> str:
    """The socket of the fork server a driver process started (from the server's command line)."""
    import psutil

    for child in psutil.Process(driver_pid).children():
        cmd = child.cmdline()
        if "orchestrator.forkserver" in cmd:
            return cmd[cmd.index("orchestrator.forkserver") + 1]
    raise AssertionError("the driver runs no fork server")


def serving(address: str) -> list[str]:
    """Processes whose command line names this fork server address, with their state."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status", "ppid"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if address in (p.info["cmdline"] or []):
                found.append(f"{p.pid} {p.info['status']} parent {p.info['ppid']}")
    return found


def holding(root: str, but: int = 0) -> list[str]:
    """This user's processes with a file open under root (but that one)."""
    import psutil

    found = []
    for p in psutil.process_iter(["uids", "name"]):
        try:
            if p.pid != but and p.info["uids"].real == os.getuid() and any(f.path.startswith(root)
                                                                           for f in p.open_files()):
                found.append(f"{p.pid} {p.info['name']}")
        except (psutil.Error, TypeError):
            pass
    return found


@pytest.mark.slow
def test_driver_killed_with_sigkill_loses_nothing_and_resumes(tmp_path):
    """SIGKILL to the driver: every row it wrote stays, the same command resumes, and nothing of
    its private cluster stays behind (Ray's dashboard and runtime-env agents did, for good), but
    for a user's `tail -f` of one of its logs."""
    store = tmp_path / "results"
    ray_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short
    proc = start_sweep(store, tmp_path / "run1", f"+cluster.init._temp_dir={ray_dir}")
    wait_for_rows(store, 6, proc)
    socket_path = fork_server_address(proc.pid)
    assert holding(ray_dir)  # the cluster's processes write their logs there
    log_file = next(Path(ray_dir).glob("session_*/logs/raylet.out"))
    reader = subprocess.Popen(["tail", "-f", str(log_file)], stdout=subprocess.DEVNULL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Store(store).read()
    deadline = time.time() + 20
    while holding(ray_dir, but=reader.pid) and time.time() < deadline:
        time.sleep(0.5)
    left = holding(ray_dir, but=reader.pid)
    time.sleep(1)
    reading = reader.poll() is None
    reader.kill()
    reader.wait()
    finish(proc)
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert not left, f"left running by the killed driver's cluster: {left}"
    assert reading  # a reader of its logs is not the cluster's
    deadline = time.time() + 10  # the server removes its socket, then its folder: wait for the folder
    while os.path.exists(os.path.dirname(socket_path)) and time.time() < deadline:
        time.sleep(0.1)
    folder = os.path.dirname(socket_path)
    assert not os.path.exists(folder), ("the orphaned fork server left its socket's folder", os.listdir(folder),
                                        serving(socket_path))
    assert 6 <= len(before) < 24 and before.cell_id.is_unique
    proc2 = start_sweep(store, tmp_path / "run2")
    out, _ = proc2.communicate(timeout=300)
    finish(proc2)
    assert proc2.returncode == 0, out[-3000:]
    assert f"{24 - len(before)} to run, {len(before)} already in" in out
    after = pd.read_parquet(store)
    assert len(after) == 24 and after.cell_id.is_unique and (after.status == "ok").all()
    assert set(before.row_id) <= set(after.row_id)  # every row written before the kill survived
    assert not list(Path(f"{store}.meta", "alive").glob("*"))  # the killed run's heartbeat went with its claims


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    store = tmp_path / "results"
    proc = signal_mid_sweep(store, tmp_path / "run1", 3, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    finish(proc)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted:" in out and "run the same command again to resume" in out
    saved = Store(store).read()
    assert len(saved) >= 3 and saved.cell_id.is_unique
    proc2 = start_sweep(store, tmp_path / "run2")
    out2, _ = proc2.communicate(timeout=300)
    finish(proc2)
    assert proc2.returncode == 0, out2[-3000:]
    assert len(pd.read_parquet(store)) == 24


def test_an_unreadable_part_file_is_named_and_the_sweep_goes_on(smoke_dataset, tmp_path, capsys):
    ensure_ray(0)
    store = tmp_path / "results"
    Store(store).append(Store(smoke_dataset["store"]).read().to_dict("records"))
    (store / "part-broken.parquet").write_bytes(b"PAR1 truncated")
    s = run(make_cfg("+sweep=smoke", store=store))
    said = capsys.readouterr()
    assert "part-broken.parquet" in said.out + said.err  # a warning: on stderr
    assert s.skipped == 6 and not s.statuses


def this_clusters_device_workers() -> list[int]:
    """Pids of the DeviceWorker actors of the test's own Ray cluster, which this process started
    (its descendants): never another run's processes on the host."""
    import psutil

    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "DeviceWorker" in " ".join(p.cmdline()) or "DeviceWorker" in p.name():
                pids.append(p.pid)
        except psutil.Error:  # gone meanwhile, or a zombie
            pass
    return pids


def test_a_device_worker_killed_from_outside_costs_only_its_cells_an_attempt(tmp_path):
    """SIGKILL the pool actor that owns the device mid-sweep: its cells are retried on a new one."""
    import threading

    ensure_ray(0)
    store = tmp_path / "killed"
    killed = []

    def kill_worker_once():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if len(list(store.glob("part-*.parquet"))) >= 2:
                for pid in this_clusters_device_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill_worker_once)
    t.start()
    summary = run(make_cfg("+sweep=smoke", "grid.seq_lens=[64,80,96,112,128,144]", "measure.budget_ms=200",
                           store=store))
    t.join()
    df = Store(store).read()
    assert killed, "no device worker found to kill"
    assert len(df) == 18 and df.cell_id.is_unique
    assert (df.status == "ok").all(), df[["backend", "status", "error"]]
    retried = df[df.attempts > 1]
    assert len(retried) >= 1 and retried.error.str.contains("device worker died").all()
    assert summary.statuses == {"ok": 18}
