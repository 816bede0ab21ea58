"""The Ray half of a run: the fork server, the cluster, the device workers and their probes,
signals, and dispatching a round's cells. ``driver.py`` uses it as a context manager:

    with Session(cfg, store, summary) as session:   # cluster up (private or joined), signals ours
        session.start_devices(targets)              # one worker per device, probed (ceilings)
        session.execute(cells, on_row, 0)           # rows come back through on_row

Settings the cluster can never satisfy are refused in one line before any cell runs. On
SIGINT or SIGTERM (once or twice) the running cells are cancelled, the workers and a cluster
this run started are shut down, and ``errors.Interrupted`` says how to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from orchestrator import cluster, forkserver
from orchestrator.cluster import ClusterError
from orchestrator.errors import SIGNALS, Interrupted, StopOnce, ignore_signals, restore_signals, signal_of
from orchestrator.executor import Executor, PoolLauncher, Slot, TaskLauncher
from orchestrator.grid import Cell
from orchestrator.progress import Progress
from orchestrator.summary import cost_estimate
from tasks.flops import cell_flops

log = logging.getLogger(__name__)
PLATFORM = ("device_type", "device_name", "compute_capability", "device_total_bytes", "driver_version", "cuda_version",
            "cudnn_version", "torch_version", "host")
HEARTBEAT_S = 5.0


def start_parts(infos: list[dict], asked: float) -> str:
    """Where the device workers' start went, the slowest of each part (pool mode says more)."""
    def most(key: str) -> float:
        return max((i.get(key) or 0.0) for i in infos)

    if not any("up_at" in i for i in infos):
        return f"device start and ceilings: up to {most('probe_s'):.1f} s"
    up = max(0.0, most("up_at") - asked)
    measuring = max(((i.get("ceilings") or {}).get("seconds") or 0.0) for i in infos)
    return (f"their processes up after {up:.1f} s; then, at most, {most('fork_wait_s'):.1f} s waiting for the fork "
            f"server's imports, {most('device_start_s'):.1f} s of device start, {most('ceilings_s'):.1f} s for the "
            f"ceilings ({measuring:.2f} s measuring them); {most('probe_s'):.1f} s in all")


class Session:
    def __init__(self, cfg, store, summary, fork=None):
        """fork: (address, process) of a fork server the driver started for this machine's devices."""
        self.cfg, self.store, self.summary, self.fork = cfg, store, summary, fork
        self.pool = cfg.run.isolation == "pool"
        self.slots: list[Slot] = []
        self.launcher = None
        self.owns_ray = False
        self._closer: threading.Thread | None = None
        self.signum: int | None = None
        self._saved_handlers: dict = {}
        self._beat = 0.0

    # ------------------------------------------------------------------ start and stop

    def __enter__(self) -> Session:
        try:
            self._enter()
        except BaseException as exc:  # a refusal, or Ctrl-C while Ray starts: nothing left behind
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _enter(self) -> None:
        t0 = time.perf_counter()
        if self.summary.began_at is not None:
            self.summary.before_s = time.time() - self.summary.began_at
        c, r = self.cfg.cluster, self.cfg.run
        joining = bool(c.address or os.environ.get("RAY_ADDRESS"))
        log.info("cluster: %s", "joining the Ray cluster at " + str(c.address or os.environ["RAY_ADDRESS"])
                 if joining else "starting a private Ray cluster on this machine")
        self.owns_ray = not cluster.ray.is_initialized()
        self._save_signals()  # before ray.init replaces the caller's SIGTERM handler with its own
        line = cluster.connect(c, prestart_workers=not self.pool)
        self._take_signals()
        self.resources = cluster.resources()
        log.info("cluster: %s: %s (%.1f s)", line, self.resources.line(), time.perf_counter() - t0)
        self._check_cluster()
        self.default_target = self.resources.default_target if r.device != "cpu" or self.resources.gpus else "cpu"
        self.t0 = t0

    def _check_cluster(self) -> None:
        r, res = self.cfg.run, self.resources
        if r.device == "cuda" and not res.gpus:
            raise ClusterError(f"run.device = 'cuda', but the cluster has no GPU ({res.line()})")
        if not res.gpus and res.cpus < 1:
            raise ClusterError(f"the cluster has no GPU and no whole CPU to run a cell on ({res.line()}); "
                               "start its nodes with CPUs (ray start --num-cpus=N) or GPUs")
        if not res.gpus and r.cpu_workers > res.cpus:
            raise ClusterError(f"run.cpu_workers = {r.cpu_workers}, but the cluster has {res.cpus:g} CPU(s): the "
                               f"extra workers would wait forever; use run.cpu_workers={max(1, int(res.cpus))}")

    def _save_signals(self) -> None:
        """The caller's handlers, which go back when the session ends (a signal can only be
        handled in the main thread)."""
        if threading.current_thread() is threading.main_thread():
            self._saved_handlers = {sig: h for sig in SIGNALS if (h := signal.getsignal(sig)) is not None}

    def _take_signals(self) -> None:
        """Ray installs a SIGTERM handler that exits mid-call with a C++ dump; ours stops the sweep."""
        for sig in self._saved_handlers:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.signum is not None:
            return  # a second Ctrl-C or SIGTERM while stopping: stopping cleanly anyway
        self.signum = signum
        raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.signum is None:  # a signal before ours were in place (Ray's SIGTERM handler in ray.init)
            self.signum = signal_of(exc)
        stopping = self.signum is not None
        if stopping:
            ignore_signals(self._saved_handlers)  # nothing interrupts the clean-up
        try:
            if not stopping and exc_type is None:  # the devices and the cluster go while the dataset is
                self._closer = threading.Thread(target=self._close_logged, name="session-close")  # compacted
                self._closer.start()  # and reported
            else:
                self._close(cut_short=True)
        except Exception:
            if not stopping:
                raise
            log.exception("closing the device workers or the cluster failed")
        finally:
            for handler in self._saved_handlers.values():
                if stopping and isinstance(handler, StopOnce):
                    handler.fired = True  # the command's one signal was this one: later ones change nothing
            restore_signals(self._saved_handlers)
        if stopping:
            name = signal.Signals(self.signum).name
            again = ("the same command measures every cell again; without run.rerun=all it measures only the cells "
                     "with no row, and those this run did not reach keep their earlier rows"
                     if self.cfg.run.rerun == "all" else "run the same command again to resume")
            log.warning("interrupted: %s; %d rows of this run saved in %s; %s",
                        name, sum(self.summary.statuses.values()), self.store.path, again)
            raise Interrupted(self.signum) from None
        return False

    def _close(self, cut_short: bool = False) -> None:
        """The device workers (their cell processes: seconds, with CUDA contexts to tear down), a
        cluster this run started, the fork server. ``cut_short``: a signal or an error stopped the
        run, maybe while Ray was starting."""
        try:
            if self.launcher is not None:
                self.launcher.close(self.slots)
            if self.owns_ray:
                cluster.shutdown()
                if cut_short:
                    cluster.kill_own_ray_processes()  # a start cut short leaves what ray.shutdown does not know
        finally:
            self._stop_fork()

    def _close_logged(self) -> None:
        """``_close`` after the last row, beside compaction and the report: every row is saved, so
        what fails here is logged, not raised."""
        t0 = time.perf_counter()
        try:
            self._close()
        except Exception:  # noqa: BLE001
            log.exception("closing the device workers or the cluster failed")
        self.summary.close_s = time.perf_counter() - t0

    def wait_closed(self) -> None:
        """Until the device workers, a cluster this run started and the fork server are gone."""
        if self._closer is not None:
            self._closer.join()
            self._closer = None

    def _stop_fork(self) -> None:
        if self.fork is not None:
            forkserver.stop(*self.fork)
            self.fork = None

    # ------------------------------------------------------------------ devices

    def start_devices(self, targets: dict[str, int]) -> None:
        """One worker per device of each target, no more than that target's cells at once."""
        r = self.cfg.run
        self.slots = []
        for target, most in sorted(targets.items()):
            on_gpu = target != "cpu"
            n = self.resources.gpus.get(target, 0) if on_gpu else r.cpu_workers
            if n == 0:
                have = ", ".join(t for t in self.resources.gpus if t != "any") or "none"
                raise ClusterError(f"grid.accelerators: no GPU of type {target!r} in the cluster (types: {have})")
            opts = {"num_cpus": 1} if not on_gpu else {"num_gpus": 1, "num_cpus": r.cpus_per_gpu_cell}
            if on_gpu and target != "any":
                opts["resources"] = {f"accelerator_type:{target}": 0.001}
            self.slots += [Slot(target, opts, len(self.slots) + i) for i in range(min(n, max(most, 1)))]
        # a CPU cell's torch threads: the cluster's cores shared by the devices measuring at once
        self.cpu_threads = r.cpu_threads or max(1, int(self.resources.cpus // max(1, len(self.slots))))
        fork = self.fork[0] if self.fork else None
        self.launcher = PoolLauncher(self.cfg, fork) if self.pool else TaskLauncher(self.cfg)
        t0, asked = time.perf_counter(), time.time()
        self.launcher.start(self.slots, shared=not self.owns_ray)
        bad = [s for s in self.slots if s.info.get("error")]
        if bad:
            raise ClusterError(f"a device cannot run cells (host {bad[0].info.get('host')}, GPU ids "
                               f"{bad[0].info.get('visible_devices')}): {bad[0].info['error']}")
        self.summary.devices = len(self.slots)
        self.summary.device_name = next((s.info.get("env", {}).get("device_name") for s in self.slots), None)
        self.summary.start_s = time.perf_counter() - self.t0
        log.info("%d device worker(s) ready in %.1f s (%s); %.1f s since the start", len(self.slots),
                 time.perf_counter() - t0, start_parts([s.info for s in self.slots], asked), self.summary.start_s)

    def platform(self, target: str) -> dict:
        """The device fields a row of this target gets when its cell never ran (pre-check rows)."""
        env = next((s.info.get("env", {}) for s in self.slots if s.target == target), {})
        return {k: env[k] for k in PLATFORM if env.get(k) is not None}

    def ceiling(self, row: dict, slot: Slot | None) -> dict | None:
        """The ceilings of the device that ran this row (by GPU UUID, else the slot, else the host)."""
        uuid = row.get("gpu_uuid")
        for s in self.slots:
            if uuid and s.info.get("env", {}).get("gpu_uuid") == uuid:
                return s.info.get("ceilings")
        if slot is not None and slot.info.get("ceilings") and not uuid:
            return slot.info["ceilings"]
        return next((s.info.get("ceilings") for s in self.slots if s.info.get("host") == row.get("host")
                     and not s.info.get("env", {}).get("gpu_uuid")), None)

    # ------------------------------------------------------------------ running

    def cost(self, cell: Cell) -> float:
        return cost_estimate(cell, self.cfg.measure, cell_flops(cell))

    def spec(self, cell: Cell) -> dict:
        device = self.cfg.run.device
        if device == "auto":
            device = "cpu" if cell.target == "cpu" else "cuda"
        m = self.cfg.measure
        return {**cell.params(), "device": device, "seed": m.seed, "measure": dict(m), "cpu_threads": self.cpu_threads}

    def execute(self, cells: list[Cell], on_row, unsupported: int) -> None:
        if not cells:
            return
        progress = Progress(len(cells), [s.name for s in self.slots], self.cfg.sweep_name,
                            enabled=self.cfg.run.progress, estimate_s=sum(self.cost(c) for c in cells))
        names = {s.index: s.name for s in self.slots}

        def landed(cell, result, slot):
            progress.update(on_row(cell, result, slot), names.get(slot.index) if slot else None)

        try:
            Executor(self.cfg, self.slots, self.launcher, progress, self.cost, self.spec, self.tick).run(cells, landed)
        finally:
            progress.close()

    def tick(self) -> None:
        """Called from the dispatch loop a few times a second: this run's claims stay alive."""
        now = time.monotonic()
        if now - self._beat > HEARTBEAT_S:
            self._beat = now
            self.store.claims.heartbeat(self.summary.run_id)

    def idle(self, seconds: float) -> None:
        self.tick()
        time.sleep(seconds)
