"""The one timing function and the one memory function that every workload uses.

On CUDA: warm up (compilation, cuDNN plans and lazy module loads stay out), size the run
from the warm-up, then time each call between two CUDA events and synchronize before
reading them, flushing the L2 cache between calls so that no call reads the last one's
data from it. On the CPU: the same with a monotonic clock.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

_L2_FLUSH_BYTES = 256 << 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable, device: torch.device, min_iters: int, min_ms: float) -> dict:
    """Call fn until both min_iters calls and min_ms have passed; return the per-call estimate.

    Each call is waited for: the clock must see device time, not launch time (unsynchronised,
    a long kernel gets queued hundreds of times within min_ms, and the wait comes after).
    """
    _sync(device)
    t0 = time.perf_counter()
    first = None
    n = 0
    while n < min_iters or (time.perf_counter() - t0) * 1e3 < min_ms:
        fn()
        _sync(device)
        n += 1
        if first is None:  # the first call carries compilation and plan building
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    steady = (total - first) / (n - 1) if n > 1 else total
    return {"warmup_iters": n, "warmup_s": total, "first_call_s": first, "est_call_s": steady}


def summarize(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {
        "iters": len(ms),
        "median_ms": statistics.median(ms),
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "mean_ms": statistics.fmean(ms),
        "std_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "min_ms": min(ms),
    }


def time_fn(
    fn: Callable,
    device: torch.device,
    *,
    warmup_iters: int = 3,
    warmup_ms: float = 50.0,
    budget_ms: float = 500.0,
    min_iters: int = 10,
    max_iters: int = 1000,
    flush_l2: bool = True,
) -> dict:
    """Warm up, then time fn; the count of timed calls fills budget_ms within [min, max]."""
    warm = warm_up(fn, device, warmup_iters, warmup_ms)
    n = int(budget_ms / 1e3 / max(warm["est_call_s"], 1e-7))
    n = max(min_iters, min(max_iters, n))
    if device.type == "cuda":
        ms = _time_cuda(fn, device, n, flush_l2)
    else:
        ms = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ms.append((time.perf_counter_ns() - t0) / 1e6)
    return {**warm, **summarize(ms)}


def _time_cuda(fn: Callable, device: torch.device, n: int, flush_l2: bool) -> list[float]:
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if flush_l2 else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if flush is not None:
            flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


@contextlib.contextmanager
def quiet_profiler():
    """Drop the 'USDT:' and 'STAGE:' lines that kineto (torch 2.13) writes to stderr at each
    profiler start and stop, two per cell; whatever else was written there is kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(("USDT:", "STAGE:")):
                    sys.stderr.write(line)


def cpu_peak_bytes(fn: Callable) -> int:
    """Peak of what one call allocates on the CPU, from the profiler's allocator events
    (the CPU allocator keeps no peak statistics of its own)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = prof.profiler.kineto_results.events()
    deltas = sorted(
        (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    now = peak = 0
    for _, nbytes in deltas:
        now += nbytes
        peak = max(peak, now)
    return peak


def measure_memory(fn: Callable, device: torch.device) -> dict:
    """Peak PyTorch memory of one call, apart from timing: above what was allocated before.

    In fwd_bwd the call is a forward and a backward, so the peak holds what autograd saves.
    On the CPU only the peak above what existed before is known (the inputs are not counted).
    """
    if device.type != "cuda":
        return {"peak_allocated_bytes": cpu_peak_bytes(fn)}
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    reserved = torch.cuda.max_memory_reserved(device)
    del out
    return {
        "inputs_bytes": before,
        "peak_allocated_bytes": peak - before,
        "peak_allocated_total_bytes": peak,
        "peak_reserved_bytes": reserved,
    }
