"""Run one cell in a fresh child process forked from a forkserver preloaded with torch.

The forkserver is a clean process of its own (no Ray threads, no CUDA) that imports torch
and ``tasks`` once; each cell then forks from it in about a tenth of what starting Python
and importing torch costs, and initialises CUDA itself. A child that dies or hangs becomes
a ``crashed`` or ``timeout`` result; its GPU is free again once it is gone.
No Ray here: the actor in ``executor.py`` wraps this.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from datetime import datetime, timezone

# Imported once by the forkserver (torch, tasks, and what cells import lazily): see tasks/preload.py.
PRELOAD = ["tasks.preload"]


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


def _child(spec_conn, result_conn) -> None:
    """A fresh process that waits for its one cell, measures it, and leaves at once."""
    _die_with_parent()
    try:
        spec = spec_conn.recv()
    except EOFError:  # never given a cell (the runner closed)
        os._exit(0)
    received = time.time()
    if spec.get("visible_devices") is not None:  # before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = spec["visible_devices"]
    from tasks.cell import run_cell

    result = run_cell(spec)
    result["spawn_s"] = received - spec["sent_at"]
    result_conn.send(result)
    os._exit(0)  # no interpreter teardown; the next cell waits until this process is gone


def _noop() -> None:
    pass


@contextlib.contextmanager
def _main_not_rerun():
    """multiprocessing re-runs the parent's __main__ in each child (in a Ray worker, Ray's
    own worker script: about 0.2 s of imports per cell); a cell needs none of it."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    for k in saved:
        setattr(main, k, None) if k == "__spec__" else delattr(main, k)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class Child:
    """A forked process, idle until it is sent a cell (it has not touched the GPU)."""

    def __init__(self, ctx):
        spec_recv, self.spec_send = ctx.Pipe(duplex=False)
        self.result_recv, result_send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child, args=(spec_recv, result_send), daemon=True)
        with _main_not_rerun():
            self.proc.start()
        spec_recv.close()
        result_send.close()

    def close(self) -> None:
        self.spec_send.close()
        self.result_recv.close()
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()


class ForkRunner:
    """Runs cells, one fresh child each, with a deadline.

    The next cell's child is forked while the current one measures, so a cell waits only
    for its own CUDA start; an idle child holds no GPU memory and touches no device. A
    finished child exits while the next one starts CUDA: the next cell is told its pid and
    waits until it is gone before it reads the device or measures anything.
    """

    def __init__(self, preload: list[str] = PRELOAD):
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload)
        self.next: Child | None = None
        self.exiting: Child | None = None  # the last cell's child, on its way out

    def start(self) -> float:
        """Start the forkserver now (it imports torch once); return the seconds it took."""
        t0 = time.perf_counter()
        p = self.ctx.Process(target=_noop)
        with _main_not_rerun():
            p.start()
        p.join()
        return time.perf_counter() - t0

    def _take(self) -> Child:
        child, self.next = self.next, None
        if child is None or not child.proc.is_alive():
            child = Child(self.ctx)
        return child

    def run(self, spec: dict, timeout_s: float) -> dict:
        started = time.time()
        child = self._take()
        result, timed_out = None, False
        after = self.exiting.proc.pid if self.exiting is not None else None
        try:
            child.spec_send.send({**spec, "sent_at": started, "after_pid": after})
            self._reap()
            self.next = Child(self.ctx)  # forked while this cell runs
            timed_out = not child.result_recv.poll(timeout_s)
            if not timed_out:
                result = child.result_recv.recv()
        except (EOFError, BrokenPipeError):  # the child died
            result = None
        if result is not None:
            self.exiting = child  # it leaves by itself (os._exit): reaped during the next cell
            return result
        if not timed_out:
            child.proc.join(timeout=10)  # reap it to read its exit code
        child.close()  # kills a hung child; waits until the process is gone
        if timed_out:
            return failure("timeout", f"no result within the deadline of {timeout_s:g} s; child killed", started)
        return failure("crashed", f"cell process {describe_exit(child.proc.exitcode)}", started)

    def _reap(self) -> None:
        if self.exiting is not None:
            self.exiting.close()
            self.exiting = None

    def close(self) -> None:
        self._reap()
        if self.next is not None:
            self.next.close()
            self.next = None
