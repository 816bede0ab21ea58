"""Ray, and nothing but Ray: start or join a cluster, run cells one device each, stream rows.

Two isolation modes, each running every cell in a fresh process on exactly one device:

* ``pool`` (default): one long-lived actor per GPU (``num_gpus=1``) owns a forkserver
  preloaded with torch; each cell is a fresh child forked from it (``isolation.py``).
* ``task``: one ``@ray.remote(max_calls=1)`` task per cell: the plain Ray way, a new
  worker process per cell, which pays Python start, ``import torch`` and CUDA each time.

On a cluster without GPUs the same paths run cells on the CPU, ``run.cpu_workers`` at once.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from orchestrator.config import ConfigError
from orchestrator.grid import Cell
from orchestrator.isolation import ForkRunner, failure

RETRYABLE = ("crashed", "timeout")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody answers (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cluster.address = {address!r}: cannot connect ({exc})") from None


def connect(cluster) -> None:
    """Join the configured cluster, or start a local one; safe to call twice."""
    if ray.is_initialized():
        return
    kw = {"include_dashboard": False, "log_to_driver": True, **dict(cluster.init)}
    if cluster.address:
        check_reachable(cluster.address)
        try:
            ray.init(address=cluster.address, **kw)
        except Exception as exc:  # unreachable address, no cluster running, version skew
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cluster.address = {cluster.address!r}: cannot connect ({first})") from None
        return
    ray.init(num_cpus=cluster.num_cpus, num_gpus=cluster.num_gpus, **kw)


@dataclass
class Shape:
    """What the cluster offers: GPUs by accelerator type ("any" counts all), and CPUs."""

    gpus: dict[str, int] = field(default_factory=dict)
    cpus: float = 0.0

    @property
    def default_target(self) -> str:
        types = [t for t in self.gpus if t != "any"]
        if not self.gpus.get("any"):
            return "cpu"
        return types[0] if len(types) == 1 else "any"


def shape() -> Shape:
    s = Shape()
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node["Resources"]
        s.cpus += res.get("CPU", 0)
        n = int(res.get("GPU", 0))
        if n:
            s.gpus["any"] = s.gpus.get("any", 0) + n
            for key in res:
                if key.startswith("accelerator_type:"):
                    t = key.split(":", 1)[1]
                    s.gpus[t] = s.gpus.get(t, 0) + n
    return s


def _where() -> dict:
    ctx = ray.get_runtime_context()
    gpus = ctx.get_accelerator_ids().get("GPU", [])
    return {"node_id": ctx.get_node_id(), "visible_devices": ",".join(gpus) if gpus else None}


@ray.remote
class DeviceWorker:
    """Owns one device for the whole sweep; runs each cell in a fresh forked child."""

    def __init__(self):
        self.runner = ForkRunner()
        self.startup_s = self.runner.start()

    def info(self) -> dict:
        return {**_where(), "pid": os.getpid(), "startup_s": self.startup_s}

    def run(self, spec: dict, timeout_s: float) -> dict:
        t0, where = time.perf_counter(), _where()
        result = self.runner.run({**spec, "visible_devices": where["visible_devices"]}, timeout_s)
        wall = time.perf_counter() - t0
        gpus = where["visible_devices"]
        return {**result, "node_id": where["node_id"], "cuda_visible_devices": gpus, "cell_wall_s": wall}


@ray.remote(max_calls=1, max_retries=0)
def run_task(spec: dict) -> dict:
    """The plain Ray way: this worker process measures the cell, then exits."""
    import tasks.preload  # noqa: F401  (imports counted as start-up, as in pool mode)
    from tasks.cell import run_cell

    where = _where()
    return {**run_cell(spec), "node_id": where["node_id"], "cuda_visible_devices": where["visible_devices"]}


@dataclass
class Slot:
    """One device's worth of capacity for one target: an actor (pool) or a task slot."""

    target: str
    options: dict
    actor: object = None


@dataclass
class Flight:
    cell: Cell
    slot: Slot
    attempt: int
    sent: float
    errors: list = field(default_factory=list)
    actor: object = None  # the actor it was sent to (pool mode)


def _options(target: str, on_gpu: bool, cfg) -> dict:
    if not on_gpu:
        return {"num_cpus": 1}
    opts = {"num_gpus": 1, "num_cpus": cfg.run.cpus_per_gpu_cell}
    if target not in ("any", "cpu"):
        opts["resources"] = {f"accelerator_type:{target}": 0.001}
    return opts


def make_slots(cells: list[Cell], sh: Shape, cfg) -> list[Slot]:
    slots = []
    for target in sorted({c.target for c in cells}):
        on_gpu = target != "cpu"
        n = sh.gpus.get(target, 0) if on_gpu else cfg.run.cpu_workers
        if n == 0:
            have = ", ".join(t for t in sh.gpus if t != "any") or "none"
            raise ConfigError(f"grid.accelerators: no GPU of type {target!r} in the cluster (types: {have})")
        slots += [Slot(target, _options(target, on_gpu, cfg)) for _ in range(n)]
    return slots


class Executor:
    """Runs cells over the slots; calls on_row(cell, result) as each one ends for good.

    A context manager: the device actors (and their forkservers) live until it closes, so
    several ``run`` calls (the capacity search's rounds) share one start-up.
    """

    def __init__(self, cfg, slots: list[Slot]):
        self.cfg, self.slots = cfg, slots
        self.pool = cfg.run.isolation == "pool"
        self.timeout = float(cfg.run.cell_timeout_s)
        if self.pool:
            for s in slots:
                s.actor = DeviceWorker.options(**s.options).remote()
            # Start together: each actor's forkserver imports torch first (seconds), and a
            # device whose actor comes up late would start its share of the cells late.
            t0 = time.perf_counter()
            ready, _ = ray.wait([s.actor.info.remote() for s in slots], num_returns=len(slots), timeout=600)
            starts = [i["startup_s"] for i in ray.get(ready)]
            if starts:
                print(f"{len(starts)} device worker(s) ready in {time.perf_counter() - t0:.1f} s "
                      f"(forkserver start, importing torch: up to {max(starts):.1f} s)", flush=True)

    def spec(self, cell: Cell) -> dict:
        device = self.cfg.run.device
        if device == "auto":
            device = "cpu" if cell.target == "cpu" else "cuda"
        m = self.cfg.measure
        return {**cell.params(), "device": device, "seed": m.seed, "measure": dict(m)}

    def _send(self, f: Flight):
        f.sent = time.perf_counter()
        if self.pool:
            f.actor = f.slot.actor
            return f.actor.run.remote(self.spec(f.cell), self.timeout)
        return run_task.options(**f.slot.options).remote(self.spec(f.cell))

    def _collect(self, ref, f: Flight) -> dict:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the device's actor died: start a new one
            if f.slot.actor is f.actor:  # once, not again for the other cell queued on it
                f.slot.actor = DeviceWorker.options(**f.slot.options).remote()
            return failure("crashed", f"device worker died: {str(exc).splitlines()[0]}", time.time())
        except ray.exceptions.RayError as exc:  # task mode: the worker process died
            return failure("crashed", f"cell process died: {str(exc).strip().splitlines()[0]}", time.time())

    def run(self, cells: list[Cell], on_row: Callable[[Cell, dict], None]) -> None:
        """Keep every slot busy until all cells have a final result.

        A pool actor is given a second cell while it measures the first, so it starts
        the next one without waiting for the driver; a task slot holds one (its deadline
        runs from dispatch).
        """
        queues = collections.defaultdict(collections.deque)
        for c in cells:
            queues[c.target].append(Flight(c, None, 1, 0.0))
        depth = 2 if self.pool else 1
        load = {id(s): 0 for s in self.slots}
        inflight: dict = {}
        try:
            while inflight or any(queues.values()):
                for slot in self.slots:
                    while load[id(slot)] < depth and queues[slot.target]:
                        f = queues[slot.target].popleft()
                        f.slot = slot
                        load[id(slot)] += 1
                        inflight[self._send(f)] = f
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    f = inflight.pop(ref)
                    load[id(f.slot)] -= 1
                    self._finish(f, self._collect(ref, f), queues, on_row)
                if not self.pool:
                    for f in self._overdue(inflight):
                        load[id(f.slot)] -= 1
                        msg = f"no result within the deadline of {self.timeout:g} s; task cancelled"
                        self._finish(f, failure("timeout", msg, time.time() - self.timeout), queues, on_row)
        except BaseException:
            for ref in inflight:
                ray.cancel(ref, force=not self.pool)
            raise

    def _overdue(self, inflight: dict) -> list[Flight]:
        """Task mode: cancel the tasks past their deadline and hand back their flights."""
        now, late = time.perf_counter(), []
        for ref, f in list(inflight.items()):
            if now - f.sent > self.timeout:
                ray.cancel(ref, force=True)
                late.append(inflight.pop(ref))
        return late

    def _finish(self, f: Flight, result: dict, queues, on_row) -> None:
        result.setdefault("cell_wall_s", time.perf_counter() - f.sent)
        if result["status"] in RETRYABLE and f.attempt <= self.cfg.run.retries:
            f.errors.append(f"attempt {f.attempt}: {result['status']}: {result['error']}")
            queues[f.cell.target].append(Flight(f.cell, None, f.attempt + 1, 0.0, f.errors))
            return
        if f.errors:  # keep what the earlier attempts met
            last = [f"attempt {f.attempt}: {result['error']}"] if result.get("error") else []
            result["error"] = "; ".join([*f.errors, *last])
        result["attempts"] = f.attempt
        on_row(f.cell, result)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in self.slots:
            if s.actor is not None:
                ray.kill(s.actor)
                s.actor = None
