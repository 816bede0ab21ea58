"""Measure one grid cell in this process. Never raises: a failure is a status and a message.

A cell's life has three phases, which the pool runs overlapped across cells (a cell's
``start_device`` and ``prepare`` happen while the previous cell on the device still works;
see ``orchestrator/isolation.py``), and ``run_cell`` runs back to back:

1. ``start_device``: the driver, the CUDA context, cuBLAS and the fp32 kernels of the accuracy
   check (0.55 s alone on an H200, of which 0.14 s the driver's start; a median 1.07-1.2 s a
   cell in paced sweeps there, waits for other cells' quiet windows included), the environment
   record.
2. ``prepare``: the inputs and the first call (lazy loading, plan building, compilation).
3. ``measure``: warm-up, the fp32 accuracy check, the kernel check, then the quiet window:
   the memory pass, the host-inclusive calls and the timing. ``before_memory`` is called before
   the memory pass (the previous cell's process and memory must be gone for NVML's device
   reading). The next cell prepares only once this one has measured and freed its memory.

The caller gives this process exactly one device (a GPU through ``CUDA_VISIBLE_DEVICES``,
or the CPU).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import os
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import datetime, timezone

import torch

from orchestrator.rows import Status
from tasks import backends, faults, kernels, timing  # noqa: F401  (faults registers the fault_* backends)
from tasks.device import HAS_NVML, ClockSampler, Held, Nvml, environment, gpu_quiet, nvml_handle

NO_KERNEL = ("No available kernel", "No viable backend")


def now() -> datetime:
    return datetime.now(timezone.utc)


def classify(exc: BaseException, caught: list) -> tuple[str, str]:
    """(status, message) for an exception raised while measuring."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg:
        return Status.OOM.value, msg[:2000]
    if isinstance(exc, RuntimeError) and any(s in msg for s in NO_KERNEL):
        reasons = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return Status.UNSUPPORTED.value, "; ".join(reasons or [msg])[:2000]
    if isinstance(exc, NotImplementedError):
        return Status.UNSUPPORTED.value, msg[:2000]
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return Status.ERROR.value, (msg + where)[:2000]


_LIBRARIES: list[Callable[[], None]] = []  # this process's library steps, from start_device


def library_steps(device: torch.device, every_dtype: list[str]) -> list[Callable[[], None]]:
    """What a cell process loads before its first cell, step by step: cuBLAS in each dtype (its
    workspace for the default stream included), then the accuracy check's kernels (the fp32
    math reference, the casts and norms)."""

    def blas(dt: str) -> None:
        a = torch.ones(16, 16, device=device, dtype=getattr(torch, dt))
        a @ a

    def accuracy_kernels() -> None:
        from tasks.attention import reference, rel_error

        # the check as a cell runs it: the fp32 math backend, the casts, the norm, the copy to the
        # host (with the reference alone here, a process's first check took 48-52 ms, later ones 5-11)
        for dt in every_dtype:
            q = torch.ones(1, 2, 16, 16, device=device, dtype=getattr(torch, dt))
            for causal in (True, False):
                rel_error(q, reference(q, q, q, causal))
        torch.cuda.empty_cache()

    return [*(functools.partial(blas, dt) for dt in every_dtype), accuracy_kernels]


def gpu_step(work: Callable[[], None]) -> float | None:
    """One step of a cell process's start, GPU work included, with the GPU's lock held shared:
    another cell's quiet window waits for one such step at most. Seconds it waited for the lock
    (None: no lock files)."""
    with gpu_quiet(shared=True) as held:
        work()
        torch.cuda.synchronize()
    return held.waited_s


def start_device(kind: str, dtypes=()) -> tuple[torch.device, dict]:
    """This process's device, ready to measure; and its columns (environment, start-up cost).

    On a GPU: first the driver's start (``torch.cuda.init``: the driver and the devices, no
    context; 0.14 s alone on an H200), host work that may overlap another cell's timing; then,
    in steps that each hold the GPU's lock shared (``gpu_quiet``) and finish their GPU work
    within it, so that a cell's quiet window on this GPU waits for one step at most: the
    context, cuBLAS in each dtype, the accuracy check's kernels (the fp32 math reference, the
    casts and norms). No measured phase pays for loading these. Each of those steps moves
    another process's timed calls of 3.6-49 ms (``docs/h200x2/probe_disturb_long.txt``, worst
    single call with one process starting): the context by 13-54%, cuBLAS by 1-3.3%, the
    accuracy kernels by 7-25%. With cuBLAS and the accuracy kernels loading beside windows
    (1b953d6), two sweeps' medians of the same cells differed by up to 13% (p90 3.0%)."""
    t0 = time.perf_counter()
    if kind != "cuda":
        return torch.device("cpu"), environment(torch.device("cpu")) | {"startup_s": time.perf_counter() - t0}
    device = torch.device("cuda", 0)
    every_dtype = sorted({*dtypes, "float32"})
    env: dict = {}
    # beside timed calls of 3.6-49 ms it moved one call by 2.8%, the others by less than 2% (probe_disturb_long.txt);
    # two sweeps with it outside the lock: p90 0.86%, 89 of 90 cells of 50 us and more within 2% (H200). Before
    # timing was paced (9d28833), three small math cells moved 7-10% with it here: their speed differs between
    # processes anyway (probe_where.txt).
    torch.cuda.init()

    def context() -> None:
        torch.empty(1, device=device)
        env.update(environment(device))

    def context_bytes() -> None:
        if "gpu_uuid" in env:
            env["nvml_context_bytes"] = Nvml(nvml_handle(env["gpu_uuid"])).process_used()

    _LIBRARIES[:] = library_steps(device, every_dtype)
    waits = [gpu_step(work) for work in [context, *_LIBRARIES, context_bytes]]
    return device, env | {"startup_s": time.perf_counter() - t0,
                          "startup_wait_s": None if None in waits else sum(waits)}


class Prepared:
    """A cell's work built on its device, with its backend pinned until ``close``."""

    def __init__(self, spec: dict, device: torch.device):
        self.spec, self.device, self.stack = spec, device, contextlib.ExitStack()
        if device.type == "cpu" and spec.get("cpu_threads"):  # one core per CPU worker, not all of them each
            torch.set_num_threads(spec["cpu_threads"])
        t0 = time.perf_counter()
        self.work = importlib.import_module(f"tasks.{spec['workload']}").build(spec, device)
        try:
            self.stack.enter_context(contextlib.nullcontext() if self.work.train else torch.inference_mode())
            self.stack.enter_context(self.work.pinned())
            t1 = time.perf_counter()
            self.work.step()  # lazy loading, plan building, compilation
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except BaseException:
            self.stack.close()  # nothing pinned stays behind in this process
            raise
        self.first_call_s = time.perf_counter() - t1
        self.cols = {"first_call_s": self.first_call_s, "setup_s": time.perf_counter() - t0,
                     "compile_s": self.first_call_s if self.work.compiled else None}

    def close(self) -> None:
        self.stack.close()


def measure(p: Prepared, nvml: Nvml | None = None, before_memory: Callable = lambda: None) -> dict:
    """A prepared cell's measured columns, in this order: warm-up (on the stream the graph will
    be captured on), the accuracy check (of the last warm-up call's output), the kernel check;
    then, in the cell's quiet window, the memory pass, the host-inclusive calls and the timing.

    ``before_memory`` waits until the previous cell's process and its memory are gone. The
    quiet window (``gpu_quiet``) keeps every other cell process on this GPU from starting its
    CUDA context meanwhile; nothing reported rests on what comes before it."""
    m, work, device = p.spec["measure"], p.work, p.device
    protocol = timing.Protocol.of(m)
    warmed, out = timing.warm(work.step, device, protocol)
    t0 = time.perf_counter()
    err = work.check(None if work.train else out) if m["accuracy"] else None
    del out
    t1 = time.perf_counter()
    how = m.get("kernels", "ops")
    ran = kernels.record(work.step, device, p.spec["backend"], how, work.compiled) if how != "off" else {}
    t2 = time.perf_counter()
    before_memory()
    t3 = time.perf_counter()
    with gpu_quiet() if device.type == "cuda" else contextlib.nullcontext(Held()) as held:
        mem = timing.measure_memory(work.step, device, nvml) if m["memory"] else {}
        clock = ClockSampler(nvml.handle) if nvml is not None else None
        t = timing.timed(work.step, device, protocol, warmed, clock, work.again)
    t |= clock.cols() if clock is not None else {}
    t["warmup_iters"] += 1  # the first call, made in prepare
    t["warmup_s"] += p.first_call_s
    return {
        **p.cols, **t, **mem, **ran,
        "previous_wait_s": t3 - t2,
        "quiet_wait_s": held.waited_s,  # None: the CPU, or no lock taken
        "accuracy_s": t1 - t0 if m["accuracy"] else None,
        "kernels_s": t2 - t1 if how != "off" else None,
        "rel_error": err,
        "flops": work.flops,
        "bytes": work.bytes,
        "flops_convention": work.flops_convention,
        "tflops": work.flops / (t["median_ms"] / 1e3) / 1e12,
    }


def release(prepared: Prepared | None, clear: bool = False, spec: dict | None = None) -> None:
    """Unpin and free a cell's device memory (its process keeps running a little longer).

    ``clear``: this process measures another cell next (``run.cells_per_process``): also what a
    cell leaves that the next one's figures would carry, torch.compile's caches after a cell of a
    compiled backend (``spec``'s; the next one compiles afresh, as in a new process) and cuBLAS's
    workspaces (one per stream used, kept until cleared: NVML's process figure would count them).
    Then the library steps of ``start_device`` run again on the emptied cache, so that the next
    cell finds the memory as a fresh process has it. Made later, in that cell's accuracy check,
    cuBLAS's 32 MiB workspace took a piece of a segment the cell's freed warm-up output had left
    cached, and kept the whole segment reserved through the memory pass: flash at batch 32, seq
    16384 read 10.7 GB reserved in a reused process against 8.6 GB in a fresh one (H100,
    ``docs/h100x2/probe_reuse_memory_5f9e681.txt`` and ``..._1d9b39a.txt``)."""
    backend = backends.BACKENDS.get(spec["backend"]) if spec else None
    if prepared is not None:
        prepared.close()
        prepared.work = None
    if clear:
        gc.collect()  # outputs held in reference cycles (autograd graphs of fwd_bwd) go now
        if backend is not None and backend.compiled:  # only then: its first call in a process imports 3 s of code
            torch._dynamo.reset()
        if torch.cuda.is_initialized() and hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
            torch._C._cuda_clearCublasWorkspaces()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        if clear:
            for step in _LIBRARIES:
                gpu_step(step)


class Outcome:
    """A cell's result as it is built up, phase by phase; ``fail`` turns an exception into its status."""

    def __init__(self, cols: dict | None = None):
        self.caught: list = []
        self._warn = None
        self.failed = False
        self.cols = cols or {"started_at": now(), "status": Status.ERROR.value, "error": None, "pid": os.getpid()}

    def __enter__(self) -> Outcome:
        self._warn = warnings.catch_warnings(record=True)
        self._new = self._warn.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._warn.__exit__(None, None, None)
        self.caught += self._new
        if exc is not None and isinstance(exc, Exception):  # a failed cell is a row, never a crashed sweep
            self.cols["status"], self.cols["error"] = classify(exc, self.caught)
            self.failed = True
            return True
        return False

    def done(self, t_go: float | None) -> dict:
        self.cols["measure_s"] = time.perf_counter() - t_go if t_go else 0.0
        self.cols["ended_at"] = now()
        return self.cols


def run_cell(spec: dict, on_ready: Callable = lambda: None) -> dict:
    """Measure one cell start to end in this process; always returns a result with a status.

    ``on_ready`` is called once the device is up, when the cell's own work begins."""
    out, t_go, prepared = Outcome(), None, None
    with out:
        device, env = start_device(spec["device"], [spec["dtype"]])
        out.cols |= env | {"process_cell": 1}
        on_ready()
        t_go = time.perf_counter()
        prepared = Prepared(spec, device)
        nvml = Nvml(nvml_handle(env["gpu_uuid"])) if HAS_NVML and "gpu_uuid" in env else None
        out.cols |= measure(prepared, nvml)
        out.cols["status"] = Status.OK.value
    release(prepared)
    return out.done(t_go)
