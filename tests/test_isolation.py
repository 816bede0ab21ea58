"""The forked-child runner, without Ray: fresh processes, deadlines that count the cell's own
work, and the hand-over between cells (the next one starts early, never measures early)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psutil
import pytest
from conftest import ROOT

from orchestrator import forkserver
from orchestrator.isolation import ForkRunner
from tasks.device import wait_gone

MEASURE = dict(warmup_iters=1, warmup_ms=0.0, budget_ms=5.0, min_iters=2, max_iters=5, flush_l2=False,
               memory=False, accuracy=True, kernels="ops", seed=0)


def spec(backend, n=64):
    return dict(workload="attention", backend=backend, mode="fwd", dtype="float32", causal=True, head_dim=16,
                num_heads=2, batch_size=1, seq_len=n, target="cpu", device="cpu", seed=0, measure=MEASURE)


@pytest.fixture(scope="module")
def fork_server():
    address, proc = forkserver.start()
    yield address, proc
    forkserver.stop(address, proc)


@pytest.fixture(scope="module")
def server(fork_server):
    return fork_server[0]


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_wait_gone_waits_for_a_live_process_only():
    proc = subprocess.Popen(["sleep", "0.4"])
    t0 = time.perf_counter()
    wait_gone(proc.pid)
    assert time.perf_counter() - t0 >= 0.3  # returned when it exited (a zombie until reaped)
    proc.wait()
    t0 = time.perf_counter()
    wait_gone(proc.pid)  # reaped: no such process
    wait_gone(None)
    assert time.perf_counter() - t0 < 0.1


HOLD = ("import sys, time; from tasks.device import gpu_quiet\n"
        "print('asking', flush=True)\n"
        "with gpu_quiet(shared=sys.argv[2] == 'shared'):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[1]))")


@pytest.fixture
def made_up_gpu(monkeypatch):
    """Point CUDA_VISIBLE_DEVICES at a GPU name of its own; returns a function that switches to
    another such name. Their lock files and the lock holders started go afterwards."""
    from tasks.device import gpu_lock_paths

    paths, holders = [], []

    def switch() -> None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"test-{time.time_ns()}")
        paths.extend(gpu_lock_paths())

    switch.holders = holders
    switch()
    yield switch
    for h in holders:
        h.kill()
        h.wait()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def hold(made_up_gpu, seconds: float, shared: bool = False) -> subprocess.Popen:
    """A process that holds the current GPU's lock for `seconds` (as a starting cell process
    does when `shared`, as a measuring one otherwise), once it holds it."""
    holder = asking(made_up_gpu, seconds, shared)
    assert holder.stdout.readline().strip() == "held"
    return holder


def asking(made_up_gpu, seconds: float, shared: bool = False) -> subprocess.Popen:
    """Such a process, once it is about to ask for the lock."""
    how = "shared" if shared else "alone"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds), how], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    made_up_gpu.holders.append(holder)
    assert holder.stdout.readline().strip() == "asking"
    return holder


def test_one_gpu_is_quiet_for_one_process_at_a_time(made_up_gpu, monkeypatch):
    """A cell process starting its CUDA context waits while another times its kernels on the
    same GPU (and the other way round); several start at once; another GPU does not wait; a
    killed holder lets go."""
    from tasks.device import gpu_quiet

    holder = hold(made_up_gpu, 1.0)
    t0 = time.perf_counter()
    with gpu_quiet(shared=True) as held:
        waited = time.perf_counter() - t0
    assert waited > 0.5  # a start waits until the holder's quiet window ended
    assert abs(held.waited_s - waited) < 0.1  # and says so (startup_wait_s)
    holder.wait()
    starting = hold(made_up_gpu, 1.0, shared=True)
    t0 = time.perf_counter()
    with gpu_quiet(shared=True) as held:  # another start beside it: no wait
        assert time.perf_counter() - t0 < 0.5 and held.waited_s < 0.5
    t0 = time.perf_counter()
    with gpu_quiet() as held:
        waited = time.perf_counter() - t0
    assert waited > 0.5  # a quiet window waits until the start's step is done
    assert abs(held.waited_s - waited) < 0.1  # and says so (quiet_wait_s)
    starting.wait()
    step = hold(made_up_gpu, 600, shared=True)  # a long start step
    window = asking(made_up_gpu, 1.0)
    time.sleep(0.3)  # the window now waits for the step
    threading.Timer(0.5, step.kill).start()
    t0 = time.perf_counter()
    with gpu_quiet(shared=True):  # the next step goes after the waiting window, not beside the first step
        waited = time.perf_counter() - t0
    assert window.stdout.readline().strip() == "held"
    assert waited > 1.2  # the first step's 0.5 s, then the window's 1 s
    window.wait()
    made_up_gpu()
    killed = hold(made_up_gpu, 600)
    gpu = os.environ["CUDA_VISIBLE_DEVICES"]
    made_up_gpu()
    t0 = time.perf_counter()
    with gpu_quiet():  # another GPU: no wait
        assert time.perf_counter() - t0 < 0.5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpu)
    killed.kill()
    killed.wait()
    t0 = time.perf_counter()
    with gpu_quiet():  # the killed holder's lock went with it
        assert time.perf_counter() - t0 < 0.5


def test_cells_overlap_their_start_but_never_their_measurement(fork_server):
    """The actor hands the runner several cells at once (as the pool does): each is a fresh
    process, the next one is alive and started before the last ends, yet no cell begins
    measuring before the previous one has returned its result."""
    server, server_pid = fork_server[0], fork_server[1].pid
    runner = ForkRunner(server, "cpu", prewarm=1)
    backends = ["math", "flash", "eager", "math", "flash", "eager"]
    most = []
    try:
        with ThreadPoolExecutor(3) as pool:
            slow = [spec(b) | {"measure": {**MEASURE, "budget_ms": 300.0, "max_iters": 100000, "min_iters": 50}}
                    for b in backends]
            futures = [pool.submit(runner.run, s, 60) for s in slow]
            while not all(f.done() for f in futures):
                most.append(len(psutil.Process(server_pid).children()))
                time.sleep(0.02)
            rows = [f.result() for f in futures]
    finally:
        runner.close()
    assert [r["status"] for r in rows] == ["ok"] * len(backends), [r["error"] for r in rows]
    assert len({r["pid"] for r in rows}) == len(rows)
    assert max(most) >= 2, "the next cell's process was never up while one measured"
    rows.sort(key=lambda r: r["ended_at"])
    for before, after in zip(rows, rows[1:], strict=False):
        go = after["ended_at"] - timedelta(seconds=after["measure_s"])
        assert go >= before["ended_at"] - timedelta(milliseconds=1), "measured while the previous cell still did"
    assert all(gone(r["pid"]) for r in rows)


def test_deadline_counts_the_cell_not_its_wait(server):
    """A cell waiting behind a slow one is not timed out for it; a hung cell is, and is killed."""
    runner = ForkRunner(server, "cpu", prewarm=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(runner.run, spec("math", 2048) | {"measure": {**MEASURE, "budget_ms": 2500.0,
                                                                              "max_iters": 100000}}, 60)
            time.sleep(0.2)
            quick = pool.submit(runner.run, spec("math"), 1.5)  # waits ~2.5 s behind `slow`, then needs little
            assert (slow.result()["status"], quick.result()["status"]) == ("ok", "ok")
        crashed = runner.run(spec("fault_segfault"), 60)
        hung = runner.run(spec("fault_hang"), 1)
        again = runner.run(spec("math"), 60)
    finally:
        runner.close()
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["error"]
    assert hung["status"] == "timeout" and "deadline of 1 s" in hung["error"] and gone(hung["pid"])
    assert again["status"] == "ok"


def test_cells_per_process_keeps_a_process_until_its_limit_or_a_failure(fork_server):
    """run.cells_per_process: a process that measured a cell cleanly (or ran out of memory) takes
    the next one, up to the limit; a cell that fails (an error, a crash) is its process's last, and
    the next cell gets a fresh one. The probe's process takes the first cell; nothing is left once the runner closes."""
    server, server_pid = fork_server[0], fork_server[1].pid
    runner = ForkRunner(server, "cpu", cells_per_process=3)
    backends = ["math", "flash", "eager", "math", "fault_raise", "math", "fault_segfault", "fault_oom", "flash", "math"]
    try:
        assert "ceilings" in runner.probe()
        assert len(psutil.Process(server_pid).children()) == 1  # the probe's process stayed for the first cell
        rows = [runner.run(spec(b), 60) for b in backends]
    finally:
        runner.close()
    statuses = ["ok"] * 4 + ["error", "ok", "crashed", "oom", "ok", "ok"]  # out of memory: the process goes on
    assert [r["status"] for r in rows] == statuses, [r["error"] for r in rows]
    assert [r.get("process_cell") for r in rows] == [1, 2, 3, 1, 2, 1, 2, 1, 2, 3]
    pids = [r["pid"] for r in rows]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] != pids[5] == pids[6] != pids[7] == pids[8] == pids[9]
    assert rows[1]["startup_s"] == 0.0 and rows[0]["startup_s"] > 0  # only a process's first cell paid its start
    for pid in set(pids):  # the last one ends by itself (its limit reached), maybe just after close
        wait_gone(pid)
    assert all(gone(c.pid) for c in psutil.Process(server_pid).children())


def test_a_kept_process_that_dies_between_cells_is_not_the_next_cells_fault(server):
    """A process kept for the next cell that is gone when the cell comes (killed, or a late crash of
    the cell before) is replaced: the cell runs in a fresh one and is not recorded as crashed."""
    runner = ForkRunner(server, "cpu", cells_per_process=0)
    try:
        first = runner.run(spec("math"), 60)
        os.kill(first["pid"], signal.SIGKILL)
        wait_gone(first["pid"])
        second = runner.run(spec("flash"), 60)
        third = runner.run(spec("eager"), 60)
    finally:
        runner.close()
    assert (first["status"], second["status"], third["status"]) == ("ok", "ok", "ok"), second["error"]
    assert second["pid"] != first["pid"] and second["process_cell"] == 1
    assert third["pid"] == second["pid"] and third["process_cell"] == 2


def test_a_clean_up_that_fails_keeps_the_measured_cell_and_ends_its_process(tmp_path):
    """run.cells_per_process=0: when freeing a measured cell's memory for the next cell raises, the
    cell's row is still its measurement (not a crash), the next cell runs in a fresh process, and
    the traceback is in the log."""
    log = tmp_path / "cells.log"
    address, proc = forkserver.start(preload=[*forkserver.PRELOAD, "release_fails"], log=str(log))
    runner = ForkRunner(address, "cpu", cells_per_process=0)
    try:
        rows = [runner.run(spec(b), 60) for b in ["math", "flash", "eager", "math"]]
    finally:
        runner.close()
        forkserver.stop(address, proc)
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    assert rows[0]["pid"] == rows[1]["pid"] != rows[2]["pid"] == rows[3]["pid"]
    assert [r["process_cell"] for r in rows] == [1, 2, 1, 2]
    assert "the clean-up after a flash cell failed on purpose" in log.read_text()


def test_what_a_process_may_measure_after():
    """The rule both ends apply (the cell process, and the runner keeping it): clean, refused or out
    of memory, it goes on; an error, a crash, a timeout or a failed graph capture ends it."""
    from orchestrator.isolation import stays

    assert all(stays({"status": s}) for s in ("ok", "unsupported", "oom"))
    assert not any(stays({"status": s}) for s in ("error", "crashed", "timeout"))
    assert not stays({"status": "ok", "timing_note": "not capturable in a CUDA graph: RuntimeError: ..."})
    assert stays({"status": "ok", "timing_note": "measure.method=events"})


def test_cells_per_process_zero_is_one_process_for_every_cell_in_call_order(server):
    """With no limit, cells handed over at once (as the actor does) all run in one process, one after
    another: each begins after the previous one's result."""
    runner = ForkRunner(server, "cpu", cells_per_process=0)
    try:
        with ThreadPoolExecutor(3) as pool:
            rows = [f.result() for f in [pool.submit(runner.run, spec(b), 60) for b in ["math", "flash", "eager"] * 2]]
    finally:
        runner.close()
    assert [r["status"] for r in rows] == ["ok"] * 6 and len({r["pid"] for r in rows}) == 1
    assert sorted(r["process_cell"] for r in rows) == [1, 2, 3, 4, 5, 6]
    rows.sort(key=lambda r: r["process_cell"])
    for before, after in zip(rows, rows[1:], strict=False):
        go = after["ended_at"] - timedelta(seconds=after["measure_s"])
        assert go >= before["ended_at"] - timedelta(milliseconds=1)
    assert gone(rows[0]["pid"])


RUNNER_ONLY = """
import sys
from orchestrator import forkserver
from orchestrator.isolation import ForkRunner
spec = {spec!r}
address, proc = forkserver.start()
try:
    runner = ForkRunner(address, "cpu", cells_per_process={per})
    info = runner.probe()
    row = runner.run(spec, 60)
    runner.close()
finally:
    forkserver.stop(address, proc)
assert "ceilings" in info and row["status"] == "ok", (info, row)
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("per", [1, 0])
def test_the_runner_never_imports_torch(per):
    """The device actor only passes messages: what a cell process sends it (its device record, its
    row) unpickles without torch. A torch.__version__ in the record made the actor import torch
    when the first process started: seconds of every sweep's start on a GPU machine."""
    code = RUNNER_ONLY.format(spec=spec("math"), per=per)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_an_early_fork_server_that_died_in_its_imports_leaves_why_in_the_run_log(tmp_path):
    """The fork server `python -m orchestrator` starts before its config is known writes to a
    temporary log until the run names its own. If it dies in its imports, the run finds it dead;
    its traceback then goes to the run's cells.log, and its folder goes."""
    forkserver.start_early(preload=["no_such_module_for_this_test"])
    address, proc = forkserver._early
    proc.wait(timeout=60)
    log = tmp_path / "run" / "cells.log"
    assert forkserver.take_early(str(log)) is None  # the run starts a fork server of its own
    assert "No module named 'no_such_module_for_this_test'" in log.read_text()
    assert not os.path.exists(os.path.dirname(address))
