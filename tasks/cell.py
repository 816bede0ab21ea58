"""Measure one grid cell in this process: ``run_cell(spec) -> result dict``. Never raises.

The caller gives this process exactly one device (a GPU through ``CUDA_VISIBLE_DEVICES``,
or the CPU); a failure becomes a status and a message in the result.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import traceback
import warnings
from datetime import datetime, timezone

import torch

from tasks import kernels, timing
from tasks.device import NvmlMonitor, environment, nvml_handle, wait_gone

NO_KERNEL = ("No available kernel", "No viable backend")


def now() -> datetime:
    return datetime.now(timezone.utc)


def classify(exc: BaseException, caught: list) -> tuple[str, str]:
    """(status, message) for an exception raised while measuring."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg:
        return "oom", msg[:2000]
    if isinstance(exc, RuntimeError) and any(s in msg for s in NO_KERNEL):
        reasons = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return "unsupported", "; ".join(reasons or [msg])[:2000]
    if isinstance(exc, NotImplementedError):
        return "unsupported", msg[:2000]
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return "error", (msg + where)[:2000]


def compile_first(work, device: torch.device) -> dict:
    """A compiled backend's first step compiles: time it apart from warm-up and timing."""
    if not work.compiled:
        return {}
    t0 = time.perf_counter()
    work.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"compile_s": time.perf_counter() - t0}


def measure(spec: dict, device: torch.device) -> dict:
    m = spec["measure"]
    work = importlib.import_module(f"tasks.{spec['workload']}").build(spec, device)
    grad_mode = contextlib.nullcontext() if work.train else torch.inference_mode()
    with grad_mode, work.pinned():
        compiled = compile_first(work, device)
        t = timing.time_fn(
            work.step,
            device,
            warmup_iters=m["warmup_iters"],
            warmup_ms=m["warmup_ms"],
            budget_ms=m["budget_ms"],
            min_iters=m["min_iters"],
            max_iters=m["max_iters"],
            flush_l2=m["flush_l2"],
        )
        mem = timing.measure_memory(work.step, device) if m["memory"] else {}
        how = m.get("kernels", "ops")
        ran = kernels.record(work.step, device, spec["backend"], how, work.compiled) if how != "off" else {}
        err = work.check() if m["accuracy"] else None
    return {
        **compiled,
        **t,
        **mem,
        **ran,
        "rel_error": err,
        "flops": work.flops,
        "flops_convention": work.flops_convention,
        "tflops": work.flops / (t["median_ms"] / 1e3) / 1e12,
    }


def _device(spec: dict) -> torch.device:
    if spec["device"] == "cuda":
        torch.cuda.init()
        return torch.device("cuda", 0)
    if spec.get("cpu_threads"):
        torch.set_num_threads(spec["cpu_threads"])
    return torch.device("cpu")


def run_cell(spec: dict) -> dict:
    """Measure one cell; always returns a result with a status."""
    out = {"started_at": now(), "status": "error", "error": None}
    t_start, t_measure = time.perf_counter(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            device = _device(spec)
            wait_gone(spec.get("after_pid"))  # the last cell's process has left the device
            out |= environment(device)
            monitor = NvmlMonitor(nvml_handle(out["gpu_uuid"])) if "gpu_uuid" in out else None
            t_measure = time.perf_counter()
            out["startup_s"] = t_measure - t_start  # device context, the last cell gone, NVML lookup
            with monitor or contextlib.nullcontext():
                out |= measure(spec, device)
            if monitor:
                out |= monitor.record()
            out["status"] = "ok"
        except Exception as exc:  # a failed cell is a row, never a crashed sweep
            out["status"], out["error"] = classify(exc, caught)
    out["measure_s"] = time.perf_counter() - t_measure if t_measure else 0.0
    out["ended_at"] = now()
    out.setdefault("pid", os.getpid())
    return out

