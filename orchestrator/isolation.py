"""Run one cell in a fresh child process forked from a forkserver preloaded with torch.

The forkserver is a clean process of its own (no Ray threads, no CUDA) that imports torch
and ``tasks`` once; each cell then forks from it in about a tenth of what starting Python
and importing torch costs, and initialises CUDA itself. A child that dies or hangs becomes
a ``crashed`` or ``timeout`` result; its GPU is free again once it is gone.
No Ray here: the actor in ``executor.py`` wraps this.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from datetime import datetime, timezone

PRELOAD = ["torch", "tasks.cell", "tasks.attention"]


def failure(status: str, message: str, started: float) -> dict:
    """A result for a cell that returned nothing."""
    return {
        "status": status,
        "error": message,
        "pid": None,
        "started_at": datetime.fromtimestamp(started, timezone.utc),
        "ended_at": datetime.now(timezone.utc),
        "measure_s": 0.0,
    }


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code} before returning a result"


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its parent (the forkserver) goes, so no orphan holds a GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(spec: dict, conn) -> None:
    _die_with_parent()
    if spec.get("visible_devices") is not None:  # before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = spec["visible_devices"]
    from tasks.cell import run_cell

    conn.send(run_cell(spec))
    conn.close()


def _noop() -> None:
    pass


class ForkRunner:
    """Runs cells, one fresh child each, with a deadline."""

    def __init__(self, preload: list[str] = PRELOAD):
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload)

    def start(self) -> float:
        """Start the forkserver now (it imports torch once); return the seconds it took."""
        t0 = time.perf_counter()
        p = self.ctx.Process(target=_noop)
        p.start()
        p.join()
        return time.perf_counter() - t0

    def run(self, spec: dict, timeout_s: float) -> dict:
        started = time.time()
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(spec, send), daemon=True)
        proc.start()
        send.close()
        result, timed_out = None, False
        try:
            timed_out = not recv.poll(timeout_s)
            if not timed_out:
                result = recv.recv()
        except EOFError:  # the child closed the pipe by dying
            result = None
        finally:
            recv.close()
        if timed_out:
            proc.kill()
            proc.join()
            return failure("timeout", f"no result within the deadline of {timeout_s:g} s; child killed", started)
        proc.join(timeout=30)
        if proc.is_alive():  # sent a result but does not exit: do not let it hold the GPU
            proc.kill()
            proc.join()
        if result is None:
            return failure("crashed", f"cell process {describe_exit(proc.exitcode)}", started)
        return result
