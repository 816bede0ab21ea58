"""What runs in Ray's worker processes: the device actor (pool mode) and the per-cell task
(task mode). Kept apart, with few imports, because every worker process imports this module
before it can start: a lighter module is a faster start of every device."""

from __future__ import annotations

import os
import socket
import time

import ray

from orchestrator import forkserver
from orchestrator.isolation import ForkRunner


def normal_priority() -> None:
    """Undo Ray's nice 15 for this worker's threads (and what they start: a fork server, the
    cell's own threads), back to the node's priority (its raylet's), where this user may. At
    nice 15 a cell loses the CPU to every busy process on the host: a task-mode cell's start
    took 65 s instead of 4 s on a loaded 2-core machine, and its launches (``host_median_ms``)
    slow down too. A private cluster starts its workers at the node's priority already
    (``cluster.connect``)."""
    try:
        node = os.getpriority(os.PRIO_PROCESS, os.getppid())  # the raylet's: the node's priority
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process only
        node, tids = 0, [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) > node:
                os.setpriority(os.PRIO_PROCESS, tid, node)
        except OSError:  # no permission to raise a priority (not root, no CAP_SYS_NICE): keep Ray's
            return


def where() -> dict:
    """The calling Ray worker's node and the GPU ids Ray gave it."""
    ctx = ray.get_runtime_context()
    gpus = ctx.get_accelerator_ids().get("GPU", [])
    return {"node_id": ctx.get_node_id(), "visible_devices": ",".join(gpus) if gpus else None,
            "host": socket.gethostname()}


@ray.remote(max_concurrency=8)
class DeviceWorker:
    """Owns one device for the whole sweep; runs each cell in a fresh forked child (or, with
    run.cells_per_process, in the child that measured the previous cell cleanly)."""

    def __init__(self, address: str | None, device: str, dtypes: list[str], prewarm: int, start_timeout_s: float,
                 cells_per_process: int = 1):
        self.up_at = time.time()  # the driver's start line says how long the actor's process took to come up
        normal_priority()
        self.server = None
        if not address or not os.path.exists(address):  # another host: a fork server of our own
            self.server = forkserver.start()
            address = self.server[0]
        self.where = where()
        self.runner = ForkRunner(address, device, self.where["visible_devices"], dtypes, prewarm, start_timeout_s,
                                 cells_per_process)

    def placed(self) -> bool:
        """Returns once this actor is up on a node (beside a probe that is still running)."""
        return True

    def probe(self) -> dict:
        t0 = time.perf_counter()
        info = self.runner.probe()
        return info | self.where | {"probe_s": time.perf_counter() - t0, "up_at": self.up_at}

    def run(self, spec: dict, timeout_s: float) -> dict:
        return self.runner.run(spec, timeout_s) | {"node_id": self.where["node_id"],
                                                   "cuda_visible_devices": self.where["visible_devices"]}

    def close(self) -> None:
        """The waiting cell processes go, and a fork server of our own with its socket (once this
        actor is killed, Ray kills its child processes with SIGKILL: no clean-up of their own)."""
        self.runner.close()
        if self.server is not None:
            forkserver.stop(*self.server)
            self.server = None


@ray.remote(max_calls=1, max_retries=0)
def run_task(spec: dict, queue) -> dict:
    """The plain Ray way: this worker process measures the cell, then exits."""
    normal_priority()
    import tasks.preload  # noqa: F401  (imports counted as start-up, as in pool mode)
    from tasks.cell import run_cell

    here = where()
    result = run_cell(spec, on_ready=lambda: queue.put(("ready", spec["token"], time.time())))
    return result | {"node_id": here["node_id"], "cuda_visible_devices": here["visible_devices"]}


@ray.remote(max_calls=1, max_retries=0)
def probe_task(device: str, dtypes: list[str], queue=None, slot: int | None = None) -> dict:
    """A device's environment and ceilings, in task mode (one task per device, all at once). It
    says through the queue, first, that it began (the driver's wait line counts the others)."""
    if queue is not None:
        queue.put(("placed", slot, time.time()))
    normal_priority()
    import tasks.preload  # noqa: F401
    from tasks import ceilings
    from tasks.cell import start_device

    try:
        dev, env = start_device(device, dtypes)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]} | where()
    return {"env": env, "ceilings": ceilings.measure(dtypes, dev)} | where()
