"""The forked-child runner, without Ray: fresh processes, deadlines, and no overlap on a device."""

import subprocess
import time

import psutil

from orchestrator.isolation import ForkRunner
from tasks.device import wait_gone

MEASURE = dict(warmup_iters=1, warmup_ms=0.0, budget_ms=5.0, min_iters=2, max_iters=5, flush_l2=False,
               memory=False, accuracy=True, kernels="ops", seed=0)


def spec(backend):
    return dict(workload="attention", backend=backend, mode="fwd", dtype="float32", causal=True, head_dim=16,
                num_heads=2, batch_size=1, seq_len=64, target="cpu", device="cpu", seed=0, measure=MEASURE)


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


def test_each_cell_is_a_fresh_process_that_starts_after_the_last_one_left():
    runner = ForkRunner()
    runner.start()
    try:
        rows = [runner.run(spec(b), timeout_s=60) for b in ("math", "flash", "math", "eager")]
        assert [r["status"] for r in rows] == ["ok"] * 4
        assert len({r["pid"] for r in rows}) == 4
        for before, after in zip(rows, rows[1:], strict=False):  # the next cell waited for the last to exit
            assert not psutil.pid_exists(before["pid"]) or psutil.Process(before["pid"]).status() == "zombie"
            assert after["started_at"] >= before["ended_at"]
        crashed = runner.run(spec("fault_segfault"), timeout_s=60)
        hung = runner.run(spec("fault_hang"), timeout_s=1)
        again = runner.run(spec("math"), timeout_s=60)
        assert (crashed["status"], hung["status"], again["status"]) == ("crashed", "timeout", "ok")
    finally:
        runner.close()
    for r in rows + [again]:  # every cell's process is gone (a zombie at most)
        assert not psutil.pid_exists(r["pid"]) or psutil.Process(r["pid"]).status() == "zombie"
    assert runner.next is None and runner.exiting is None
