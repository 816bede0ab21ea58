"""Run cells in child processes forked from a torch-preloaded fork server, one device at a time.

By default (``cells_per_process=0``) one child measures the device's cells one after another and
is replaced after an error, a crash, a timeout or a call that could not be captured; between cells
it frees the cell's memory and loads its libraries again as a fresh process does. With
``cells_per_process=1`` each cell gets a fresh child and CUDA context, the next cells' process
start hidden behind the current cell's work as far as it may be:

A cell process goes through ``tasks.cell``'s phases; the runner hands the device on at fixed
points, so that nothing another cell does overlaps what this cell measures:

* **start** (the driver, the CUDA context, cuBLAS, the accuracy check's kernels: 0.55 s alone
  on an H200, a median 1.07-1.2 s in paced sweeps there, waits included) runs
  as soon as the child is forked: ``prewarm`` children are started ahead of time while earlier
  cells run, all at once when none is left waiting (their starts overlap), in
  steps that never overlap another cell's quiet window (its memory pass, host-inclusive calls
  and timing): ``tasks.device.gpu_quiet`` keeps them apart with a lock per GPU (a context
  starting beside timed kernels moved their medians by up to 24% on an H200), and a waiting
  window goes before the next step.
* **prepare** (inputs, first call) and **measure** (warm-up, accuracy, kernel check, then the
  quiet window) wait until the previous cell has measured, freed its memory and returned its
  result (its process then exits). A prepare that runs out of memory meanwhile is tried again
  once the previous cell's process is gone; the memory pass also waits until then. NVML's
  device reading leaves out the waiting cells' processes (``tasks.device``).

A cell's deadline counts its own work only: from the moment its process is ready (started,
given its cell, the previous cell done) to its result. Process start
has its own, generous limit. A child that dies or overruns becomes a ``crashed`` or
``timeout`` result. No Ray here: the actor in ``executor.py`` wraps this.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import threading
import time
import traceback
from datetime import datetime, timezone
from multiprocessing.connection import Connection

from orchestrator import forkserver
from orchestrator.rows import Status


def failure(status: str, message: str, started: float, pid: int | None = None) -> dict:
    """A result for a cell that returned nothing."""
    return {
        "status": status,
        "error": message,
        "pid": pid,
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


# ----------------------------------------------------------------------------- in the child


def child_main(fd: int) -> None:
    """A cell process: start the device, then prepare and measure its cell when told to."""
    conn = Connection(fd)
    try:
        _serve(conn)
    except (EOFError, OSError):  # the runner went away (the sweep stopped): leave quietly
        os._exit(0)


def _serve(conn) -> None:
    from tasks import cell as cellrun

    state = {"cell": None, "go": None}
    device, env, cells = None, None, 0
    while True:
        msg = conn.recv()  # EOFError: the runner closed, never given a cell
        kind = msg[0]
        if kind == "start":  # ("start", visible_devices, device kind, dtypes)
            if msg[1] is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = msg[1]
            try:
                device, env = cellrun.start_device(msg[2], msg[3])
            except Exception as exc:
                conn.send(("start_failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]))
                os._exit(0)
            conn.send(("started", env))
        elif kind == "probe":  # ("probe", dtypes, stay): the device's ceilings, then leave or take the first cell
            from tasks import ceilings

            conn.send(("probed", {"env": env, "ceilings": ceilings.measure(msg[1], device)}))
            if not msg[2]:
                os._exit(0)
            if not _released(cellrun, None, clear=True):  # it cannot take the first cell: the runner replaces it
                os._exit(0)
        elif kind in ("cell", "go"):  # ("go", {"after_pid": the previous cell's process})
            state[kind] = msg[1]
        if device is not None and state["cell"] is not None and state["go"] is not None:
            out = cellrun.Outcome()
            out.cols |= env | {"process_cell": cells + 1}
            conn.send(("ready", time.time()))
            prepared = None
            with out:
                prepared = cellrun.Prepared(state["cell"], device)
            if not _measure(conn, cellrun, out, prepared, env, state["cell"], device, state["go"]):
                os._exit(0)  # no interpreter teardown; the next cell waits until this process is gone
            # run.cells_per_process: this process takes the next cell; its start cost that cell nothing
            cells += 1
            state = {"cell": None, "go": None}
            env = env | {"startup_s": 0.0, "startup_wait_s": 0.0 if env.get("startup_wait_s") is not None else None}


def stays(row: dict) -> bool:
    """Whether a cell process may measure another cell after this row (run.cells_per_process):
    after a cell that ran cleanly, that PyTorch refused, or that ran out of memory (its memory is
    freed before the next cell). An error, a crash or a timeout ends the process (its CUDA context
    may be broken), and so does a call that could not be captured in a CUDA graph (a failed
    capture may leave its memory pool, or the allocator's capture state, behind)."""
    return (row.get("status") in (Status.OK.value, Status.UNSUPPORTED.value, Status.OOM.value)
            and not (row.get("timing_note") or "").startswith("not capturable"))


def _released(cellrun, prepared, clear: bool, spec: dict | None = None) -> bool:
    """``cellrun.release``; False, with the traceback in cells.log, when it raised."""
    try:
        cellrun.release(prepared, clear=clear, spec=spec)
        return True
    except Exception:  # noqa: BLE001 - whatever it was, the caller ends this process
        traceback.print_exc()
        return False


def _measure(conn, cellrun, out, prepared, env, spec, device, go: dict) -> bool:
    """Prepare's outcome measured and sent; True when this process stays for another cell."""
    from tasks.device import HAS_NVML, Nvml, nvml_handle, wait_gone, wait_released

    t_go = time.perf_counter()
    if out.failed and out.cols["status"] == Status.OOM.value:
        # it prepared while the previous cell's process still held its context: alone, it may fit
        wait_gone(go.get("after_pid"))
        cellrun.release(None)
        out = cellrun.Outcome(out.cols | {"status": Status.ERROR.value, "error": None})
        with out:
            prepared = cellrun.Prepared(spec, device)
    if not out.failed:
        with out:
            nvml = Nvml(nvml_handle(env["gpu_uuid"])) if HAS_NVML and "gpu_uuid" in env else None
            prev = go.get("after_pid")

            def previous_gone():
                wait_gone(prev)
                wait_released(nvml, prev)

            out.cols |= cellrun.measure(prepared, nvml, before_memory=previous_gone)
            out.cols["status"] = Status.OK.value
    stay = bool(go.get("stay")) and stays(out.cols)
    # the device's memory back before the next cell prepares; if that fails, the cell is measured all the same,
    # and only this process cannot take another (its exit frees the rest)
    stay = _released(cellrun, prepared, clear=stay, spec=spec) and stay
    conn.send(("result", out.done(t_go), stay))  # the runner keeps this process only when it says so
    return stay


# ----------------------------------------------------------------------------- in the actor


class Child:
    """A forked cell process and the runner's end of its pipe."""

    def __init__(self, server: forkserver.Client):
        ours, theirs = socket.socketpair()
        self.server = server
        self.pid = server.fork("orchestrator.isolation", "child_main", theirs.fileno())
        theirs.close()
        self.conn = Connection(ours.detach())
        self.lock = threading.Lock()
        self.started = False
        self.cells = 0  # cells it has measured (more than one with run.cells_per_process)
        self.stays = False  # it said, with its last result, that it takes another cell

    def send(self, *msg) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.conn.send(msg)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def exit_code(self, timeout_s: float = 10.0) -> int | None:
        return self.server.exit_code(self.pid, timeout_s)

    def close(self) -> None:
        self.kill()
        self.exit_code()
        with contextlib.suppress(OSError):
            self.conn.close()


class Turn:
    """One cell's place in the device's order. ``released`` is set once its result is in (or
    its process is gone), never before the previous cell's, so a cell that ends early cannot let
    the next one past a measuring cell."""

    def __init__(self, child: Child, prev: Turn | None):
        self.child, self.prev = child, prev
        self.released = threading.Event()

    def wait_prev(self) -> None:
        if self.prev is not None:
            self.prev.released.wait()

    def release(self) -> None:
        self.wait_prev()
        self.released.set()
        self.prev = None  # done with it: no chain of every earlier cell


class Overrun(Exception):
    """The child did not answer in time; the argument names what it was waiting for."""


class StartFailed(Exception):
    """The child could not start its device."""


class GoneBetweenCells(Exception):
    """A process kept from the previous cell went away before taking this one."""


class ForkRunner:
    """Runs cells in call order, one fresh child each, on one device; thread-safe (the actor
    takes the next cells while one measures, so they can start and prepare)."""

    def __init__(self, address: str, device: str = "cpu", visible: str | None = None, dtypes=(),
                 prewarm: int = 2, start_timeout_s: float = 180.0, cells_per_process: int = 1):
        """cells_per_process: how many cells one process measures (0: no limit); above 1 a process
        that measured a cell cleanly takes the next one, and none is started ahead."""
        self.server = forkserver.Client(address)
        self.device, self.visible, self.dtypes = device, visible, list(dtypes)
        self.per_process = cells_per_process
        self.reuse = cells_per_process != 1
        self.prewarm = 0 if self.reuse else prewarm if device == "cuda" else min(prewarm, 1)
        self.start_timeout_s = start_timeout_s
        self.lock = threading.Lock()
        self.waiting: collections.deque[Child] = collections.deque()
        self.kept: Child | None = None  # run.cells_per_process: the process that takes the next cell
        self.last: Turn | None = None

    def _fork(self, start: bool) -> Child:
        child = Child(self.server)
        if start:
            self._start(child)
        return child

    def _start(self, child: Child) -> None:
        child.send("start", self.visible, self.device, self.dtypes)
        child.started = True

    def probe(self) -> dict:
        """Start this device in a child and measure its ceilings: {"env", "ceilings"}, or
        {"error": why} when the device cannot start (no CUDA, a broken driver)."""
        t0 = time.perf_counter()
        child = self._fork(start=True)  # returns once the fork server has its imports (torch) done
        forked = time.perf_counter() - t0
        try:
            deadline = time.monotonic() + self.start_timeout_s
            self._until(child, {"started"}, deadline)
            started = time.perf_counter() - t0 - forked
            child.send("probe", self.dtypes, self.reuse)
            info = self._until(child, {"probed"}, deadline)[1]
            info |= {"fork_wait_s": forked, "device_start_s": started,
                     "ceilings_s": time.perf_counter() - t0 - forked - started}
            if self.reuse:  # it takes the first cell: one process start fewer
                self.kept, child = child, None
            return info
        except StartFailed as exc:
            return {"error": str(exc)}
        except (Overrun, EOFError, OSError) as exc:
            return {"error": f"the device's first process did not start ({type(exc).__name__})"}
        finally:
            if child is not None:
                child.close()

    def _take(self) -> Turn:
        with self.lock:
            if self.reuse:  # its process is known once the previous cell is done
                turn = self.last = Turn(None, self.last)
                return turn
            child = self.waiting.popleft() if self.waiting else self._fork(start=self.prewarm > 0)
            if not self.waiting:  # all of the next ones at once: their starts overlap one another
                self.waiting.extend(self._fork(start=True) for _ in range(self.prewarm))
            turn = self.last = Turn(child, self.last)
            return turn

    def run(self, spec: dict, timeout_s: float) -> dict:
        """Measure one cell in a fresh child; returns its result (never raises for the cell's faults)."""
        started = time.time()
        turn = self._take()
        result = None
        try:
            if turn.child is None:
                turn.wait_prev()
                turn.child = self._reused() or self._fork(start=True)
            result = self._run(turn, spec, timeout_s, started)
        finally:
            child = turn.child
            if child is not None and child.stays and result is not None:
                self.kept = child  # before the next cell's turn comes
            elif child is not None:
                with contextlib.suppress(OSError):
                    child.conn.close()
            turn.release()
        return result

    def _reused(self) -> Child | None:
        """The process the previous cell left for this one, if it is still there and silent."""
        with self.lock:
            child, self.kept = self.kept, None
        if child is not None and child.conn.poll(0):  # it said something unasked, or went away
            child.close()
            return None
        return child

    def _run(self, turn: Turn, spec: dict, timeout_s: float, started: float) -> dict:
        try:
            return self._attempt(turn, spec, timeout_s, started)
        except GoneBetweenCells:  # not this cell's doing: a fresh process
            turn.child.close()
            turn.child = self._fork(start=True)
        except StartFailed:  # a waiting process could not start (no memory beside a large cell): once more, alone
            turn.child.close()
            turn.wait_prev()
            turn.child = self._fork(start=False)
        try:
            return self._attempt(turn, spec, timeout_s, started)
        except StartFailed as exc:
            return failure(Status.ERROR.value, f"the cell's process could not start its device: {exc}", started,
                           turn.child.pid)

    def _attempt(self, turn: Turn, spec: dict, timeout_s: float, started: float) -> dict:
        child = turn.child
        reused = child.cells > 0
        child.send("cell", spec)
        turn.wait_prev()  # the previous cell has measured, freed its memory and returned its result
        if not child.started:  # no prewarm: the process starts its device only now
            self._start(child)
        prev = turn.prev.child if turn.prev is not None else None
        ask = self.reuse and (self.per_process == 0 or child.cells + 1 < self.per_process)
        child.stays = False  # until its result says otherwise
        child.send("go", {"after_pid": prev.pid if prev is not None and prev is not child else None, "stay": ask})
        child.cells += 1
        place = {"process_cell": child.cells}  # a failed cell's row says it too: was it its process's first?
        t_turn, spawn_s = time.monotonic(), None
        try:
            self._until(child, {"ready"}, t_turn + self.start_timeout_s)
            spawn_s = time.monotonic() - t_turn
            _, body, child.stays = self._until(child, {"result"}, time.monotonic() + timeout_s)
            return body | {"spawn_s": spawn_s, "cell_wall_s": time.monotonic() - t_turn}
        except Overrun as exc:
            child.kill()
            child.exit_code()
            if exc.args[0] == "ready":
                why = f"its process was not ready within run.start_timeout_s = {self.start_timeout_s:g} s"
            else:
                why = f"no result within the deadline of {timeout_s:g} s"
            return failure(Status.TIMEOUT.value, f"{why}; child killed", started, child.pid) | place
        except (EOFError, OSError):
            if reused and spawn_s is None:  # a kept process answers "ready" at once: it died before this cell
                raise GoneBetweenCells() from None
            why = f"cell process {describe_exit(child.exit_code())}"
            return failure(Status.CRASHED.value, why, started, child.pid) | place

    def _until(self, child: Child, kinds: set, deadline: float) -> tuple:
        """The child's next message (a tuple) of one of these kinds (others are skipped)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not child.conn.poll(left):
                raise Overrun("ready" if "ready" in kinds else "result")
            msg = child.conn.recv()
            if msg[0] == "start_failed":
                raise StartFailed(msg[1])
            if msg[0] in kinds:
                return msg

    def close(self) -> None:
        with self.lock:
            while self.waiting:
                self.waiting.popleft().close()
            if self.kept is not None:
                self.kept.close()
                self.kept = None
        self.server.close()
