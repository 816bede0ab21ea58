"""Run cells on the cluster's devices, one device each, and hand back each cell's result.

Two launchers behind one interface, each running cells in processes of their own on exactly
one device:

* ``PoolLauncher`` (``run.isolation=pool``, default): one long-lived actor per device
  (``num_gpus=1``) runs cells in a child forked from a torch-preloaded fork server
  (``isolation.py``): by default one child measures the device's cells one after another and is
  replaced after any failure; with ``run.cells_per_process=1`` each cell gets a fresh child,
  started and prepared while the previous cell measures. It enforces each cell's deadline itself.
* ``TaskLauncher`` (``run.isolation=task``): one ``@ray.remote(max_calls=1)`` task per cell, the
  plain Ray way: a new worker process per cell, which pays Python start, ``import torch`` and
  CUDA each time. Each task says through a queue when it is ready to measure; its deadline
  counts from then.

``Executor`` keeps every device busy, longest cells first (so that no device idles at the
end), retries crashed and timed-out cells, and reports each device's current cell.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.util.queue import Queue

from orchestrator.cluster import ClusterError
from orchestrator.config import cells_per_process
from orchestrator.grid import Cell
from orchestrator.isolation import failure
from orchestrator.progress import cell_label
from orchestrator.rows import RETRYABLE, Status
from orchestrator.workers import DeviceWorker, probe_task, run_task

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One device's worth of capacity for one target; ``info`` is what its probe found."""

    target: str
    options: dict
    index: int
    handle: object = None  # the pool actor
    info: dict = field(default_factory=dict)
    placed: object = None  # pool mode: a call that returns once the actor is up on a node (an ObjectRef)

    @property
    def name(self) -> str:
        env = self.info.get("env", {})
        if env.get("device_type") == "cuda":
            return f"GPU {env.get('nvml_index', self.index)} {self.info.get('host', '')}".strip()
        return f"{'CPU' if self.target == 'cpu' else self.target} {self.index}"


# ----------------------------------------------------------------------------- pool


class PoolLauncher:
    depth = 3  # cells in flight per device: one measuring, the next ones starting and preparing

    def __init__(self, cfg, fork_address: str | None):
        self.cfg, self.address = cfg, fork_address

    def _actor(self, slot: Slot):
        r, device = self.cfg.run, "cpu" if slot.target == "cpu" or self.cfg.run.device == "cpu" else "cuda"
        actor = DeviceWorker.options(**slot.options).remote(self.address, device, list(self.cfg.grid.dtypes),
                                                            r.prewarm, r.start_timeout_s, cells_per_process(r))
        slot.placed = actor.placed.remote()
        return actor

    def start(self, slots: list[Slot], shared: bool = False) -> None:
        for s in slots:
            s.handle = self._actor(s)
        probes = [s.handle.probe.remote() for s in slots]
        wait_started(slots, probes, self.cfg.run.start_timeout_s + 300, self.placed, shared)
        take_infos(slots, probes, "a device worker could not start")

    @staticmethod
    def placed(slot: Slot) -> bool:
        return slot.placed is None or is_ready(slot.placed)

    def submit(self, slot: Slot, spec: dict, timeout_s: float):
        return slot.handle.run.remote(spec, timeout_s)

    def lost(self, slot: Slot, exc: Exception, handle) -> dict:
        if slot.handle is handle:  # replace the dead actor once, not again for its other queued cells
            slot.handle = self._actor(slot)
        return failure(Status.CRASHED.value, f"device worker died: {str(exc).strip().splitlines()[0]}", time.time())

    def close(self, slots: list[Slot]) -> None:
        # an actor still waiting for the cluster's resources would take its close call only once placed
        live = [s.handle for s in slots if s.handle is not None and self.placed(s)]
        with contextlib.suppress(ray.exceptions.RayError):  # a dead or busy actor is killed all the same
            ray.get([h.close.remote() for h in live], timeout=10)
        for s in slots:
            if s.handle is not None:
                ray.kill(s.handle)
                s.handle = None


# ----------------------------------------------------------------------------- task


WAIT_LINE_S = 15.0  # a device not placed by then gets a line, and another each minute after


def is_ready(ref) -> bool:
    return bool(ray.wait([ref], timeout=0)[0])


def wait_started(slots: list[Slot], probes: list, limit_s: float, placed: Callable[[Slot], bool],
                 shared: bool) -> None:
    """Until every probe has answered, in short waits (a Ctrl-C is taken at once), for at most
    limit_s. On a cluster the sweep did not start (``shared``), while some device's process is
    not placed on a node after ``WAIT_LINE_S``, and each minute after, a line says what it asks
    of the cluster and what the cluster has free: other jobs may hold it all."""
    t0, say_at, left = time.monotonic(), WAIT_LINE_S, list(probes)
    while left:
        _, left = ray.wait(left, num_returns=len(left), timeout=0.5)
        waited = time.monotonic() - t0
        if left and waited > limit_s:
            raise ClusterError(f"device workers did not start within run.start_timeout_s + 300 s ({limit_s:g} s); "
                               f"{free_line()}")
        if left and shared and waited >= say_at:
            say_at += 60.0
            pending = set(left)
            waiting = [s for s, p in zip(slots, probes, strict=True) if p in pending and not placed(s)]
            if waiting:
                log.warning("waiting for the cluster: %d of %d device(s) not placed on a node after %.0f s; each asks "
                            "for %s; %s; other jobs may hold the rest. The sweep begins once every device is up, or "
                            "gives up after run.start_timeout_s + 300 s (%.0f s); Ctrl-C stops it", len(waiting),
                            len(slots), waited, asks(waiting[0].options), free_line(), limit_s)


def asks(options: dict) -> str:
    """A device's Ray resource request, in words: '1 GPU (H100), 0.25 CPU'."""
    kinds = [k.split(":", 1)[1] for k in options.get("resources", {}) if k.startswith("accelerator_type:")]
    gpu = f"{options['num_gpus']:g} GPU" + (f" ({kinds[0]})" if kinds else "") if options.get("num_gpus") else ""
    return ", ".join(x for x in (gpu, f"{options.get('num_cpus', 1):g} CPU") if x)


def free_line() -> str:
    free, total = ray.available_resources(), ray.cluster_resources()
    have = [f"{free.get(k, 0):g} of {total[k]:g} {k}" for k in ("GPU", "CPU") if total.get(k)]
    return "free now: " + (", ".join(have) or "no CPU or GPU")


def take_infos(slots: list[Slot], probes: list, failed: str) -> None:
    """Each slot's device record from its probe; a probe that raised is a one-line ClusterError."""
    try:
        infos = ray.get(probes)
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"{failed}: {str(exc).strip().splitlines()[0]}") from None
    for s, info in zip(slots, infos, strict=True):
        s.info = info


class TaskLauncher:
    depth = 1

    def __init__(self, cfg):
        self.cfg = cfg
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.ready: dict[str, float] = {}
        self.began: set[int] = set()  # the slots whose probes began (their tasks were placed)

    def start(self, slots: list[Slot], shared: bool = False) -> None:
        device = "cpu" if self.cfg.run.device == "cpu" else "cuda"
        dtypes = list(self.cfg.grid.dtypes)
        refs = [probe_task.options(**s.options).remote("cpu" if s.target == "cpu" else device, dtypes, self.queue,
                                                        s.index) for s in slots]
        try:
            wait_started(slots, refs, self.cfg.run.start_timeout_s + 300, self.placed, shared)
        except BaseException:  # a joined cluster keeps no queued probe of a sweep that stopped
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        take_infos(slots, refs, "a device could not be probed")

    def submit(self, slot: Slot, spec: dict, timeout_s: float):
        return run_task.options(**slot.options).remote(spec, self.queue)

    def poll_ready(self) -> None:
        """What the tasks said through the queue: a probe that began (placed), a cell ready to measure."""
        while not self.queue.empty():
            kind, token, _ = self.queue.get_nowait()
            if kind == "placed":
                self.began.add(token)
            else:
                self.ready[token] = time.monotonic()

    def placed(self, slot: Slot) -> bool:
        self.poll_ready()
        return slot.index in self.began

    def lost(self, slot: Slot, exc: Exception, handle) -> dict:
        return failure(Status.CRASHED.value, f"cell process died: {str(exc).strip().splitlines()[0]}", time.time())

    def close(self, slots: list[Slot]) -> None:
        ray.kill(self.queue.actor)


# ----------------------------------------------------------------------------- dispatch


@dataclass
class Flight:
    cell: Cell
    attempt: int = 1
    errors: list = field(default_factory=list)
    slot: Slot | None = None
    handle: object = None
    sent: float = 0.0
    token: str = ""


class Executor:
    """Runs cells over the slots; calls on_row(cell, result, slot) as each one ends for good."""

    def __init__(self, cfg, slots: list[Slot], launcher, progress=None, cost: Callable[[Cell], float] = lambda c: 0.0,
                 spec: Callable[[Cell], dict] = None, tick: Callable[[], None] = lambda: None):
        self.cfg, self.slots, self.launcher, self.progress = cfg, slots, launcher, progress
        self.cost, self.spec, self.tick = cost, spec, tick
        self.timeout = float(cfg.run.cell_timeout_s)
        self.inflight: dict = {}
        self.on_slot: dict[int, collections.deque] = {s.index: collections.deque() for s in slots}

    def run(self, cells: list[Cell], on_row: Callable) -> None:
        """Until every cell has a final result: keep each slot fed (longest cells first)."""
        queues = collections.defaultdict(list)
        for c in sorted(cells, key=self.cost, reverse=True):
            queues[c.target].append(Flight(c))
        for q in queues.values():
            q.reverse()  # pop() from the end: the longest first
        try:
            while self.inflight or any(queues.values()):
                self._fill(queues)
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.2)
                for ref in ready:
                    self._land(ref, self._collect(ref), queues, on_row)
                if isinstance(self.launcher, TaskLauncher):
                    self._overdue(queues, on_row)
                self.tick()
        except BaseException:
            for ref in self.inflight:
                ray.cancel(ref, force=isinstance(self.launcher, TaskLauncher))
            raise

    def _fill(self, queues) -> None:
        """One cell per slot per pass, so that the longest cells spread over every device."""
        added = True
        while added:
            added = False
            for slot in self.slots:
                if len(self.on_slot[slot.index]) < self.launcher.depth and queues[slot.target]:
                    self._send(slot, queues[slot.target].pop())
                    added = True

    def _send(self, slot: Slot, f: Flight) -> None:
        f.slot, f.handle, f.sent = slot, slot.handle, time.monotonic()
        f.token = f"{f.cell.cell_id}-{f.attempt}"
        self.inflight[self.launcher.submit(slot, self.spec(f.cell) | {"token": f.token}, self.timeout)] = f
        self.on_slot[slot.index].append(f)
        if len(self.on_slot[slot.index]) == 1:
            self._running(slot)

    def _running(self, slot: Slot) -> None:
        if self.progress is not None and self.on_slot[slot.index]:
            c = self.on_slot[slot.index][0].cell
            self.progress.running(slot.name, cell_label(c.params()), self.cost(c))

    def _collect(self, ref) -> dict:
        f = self.inflight[ref]
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the device's actor died: a new one takes over
            return self.launcher.lost(f.slot, exc, f.handle)
        except ray.exceptions.RayError as exc:  # task mode: the worker process died
            return self.launcher.lost(f.slot, exc, f.handle)

    def _land(self, ref, result: dict, queues, on_row) -> None:
        f = self.inflight.pop(ref)
        result.setdefault("cell_wall_s", time.monotonic() - f.sent)  # task mode: dispatch to result
        ready = getattr(self.launcher, "ready", {}).get(f.token)
        if ready is not None:
            result.setdefault("spawn_s", ready - f.sent)
        self.on_slot[f.slot.index].remove(f)
        self._running(f.slot)
        if result["status"] in RETRYABLE and f.attempt <= self.cfg.run.retries:
            f.errors.append(f"attempt {f.attempt}: {result['status']}: {result['error']}")
            queues[f.cell.target].append(Flight(f.cell, f.attempt + 1, f.errors))  # next to go
            return
        if f.errors:  # keep what the earlier attempts met
            last = [f"attempt {f.attempt}: {result['status']}: {result['error']}"] if result.get("error") else []
            result["error"] = "; ".join([*f.errors, *last])
        result["attempts"] = f.attempt
        on_row(f.cell, result, f.slot)

    def _overdue(self, queues, on_row) -> None:
        """Task mode: a task not ready within run.start_timeout_s of dispatch, or past its deadline
        once ready, is cancelled (killed) and becomes a timeout result."""
        self.launcher.poll_ready()
        now, r = time.monotonic(), self.cfg.run
        for ref, f in list(self.inflight.items()):
            ready = self.launcher.ready.get(f.token)
            if ready is None and now - f.sent > r.start_timeout_s:
                why = f"its process was not ready within run.start_timeout_s = {r.start_timeout_s:g} s"
            elif ready is not None and now - ready > self.timeout:
                why = f"no result within the deadline of {self.timeout:g} s"
            else:
                continue
            ray.cancel(ref, force=True)
            self._land(ref, failure(Status.TIMEOUT.value, f"{why}; task cancelled", time.time()), queues, on_row)
