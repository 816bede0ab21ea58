"""What this device can do at best, measured once per device and run: the matmul rate in each
dtype of the grid and the memory bandwidth. A cell's TFLOP/s and bytes per second are then
a share of these (``pct_of_compute_ceiling``, ``pct_of_bandwidth_ceiling``: ``orchestrator.rows.shares``,
on the driver, which never imports torch): the roofline.

GPU: a square matmul large enough to fill the chip (8192 for half types, 4096 for float32;
torch's default float32 matmul, no TF32), and a 1 GiB device-to-device copy counted as bytes
read plus bytes written. CPU: the same at 1024 (smaller for a dtype the CPU emulates, so that a
call takes about 10 ms; a half dtype's rate at least float32's) and 256 MiB. Each is the median
of a few timed repeats after one warm-up (on the CPU the fastest: see ``_time_s``): about 0.2 s
on an H100.
"""

from __future__ import annotations

import statistics
import time

import torch

from tasks.work import dtype_of


def _time_s(fn, device: torch.device, reps: int) -> float:
    """Seconds per call, after one warm-up call: the median of reps between CUDA events on a GPU;
    on the CPU the fastest of them, since a process beside it (this machine's other cells, a
    build) can only make a call slower, and a ceiling taken from slowed calls puts cells over
    100% of it."""
    fn()  # warm-up: library handles, kernel loading, the CPU's thread pool
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) if device.type == "cuda" else min(times)


def _cpu_size(dt: torch.dtype, most: int = 1024, enough_s: float = 0.01) -> int:
    """A CPU matmul size that takes about enough_s: 1024 where the dtype is fast, smaller where
    it is emulated (float16 on a CPU without it: 1.6 s a 1024 matmul, 12 ms at 256). float32 is
    never emulated: always 1024 (a small matmul on a busy machine can take 10 ms of thread-pool
    waits, and a ceiling from 128 x 128 matmuls put cells at 20,000% of it)."""
    if dt == torch.float32:
        return most
    n = 128
    while n < most:
        a = torch.randn(n, n, dtype=dt)
        if _time_s(lambda a=a: a @ a, torch.device("cpu"), 3) >= enough_s:  # warm, and the fastest of 3
            break
        n *= 2
    return n


def matmul_tflops(dtype: str, device: torch.device) -> float:
    dt = dtype_of(dtype)
    n = (8192 if dt != torch.float32 else 4096) if device.type == "cuda" else _cpu_size(dt)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    return 2 * n**3 / _time_s(lambda: a @ b, device, 5) / 1e12


def copy_gbps(device: torch.device) -> float:
    nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return 2 * nbytes / _time_s(lambda: dst.copy_(src), device, 5) / 1e9


def measure(dtypes, device: torch.device) -> dict:
    """{"tflops": {dtype: rate}, "gbps": bandwidth, "seconds": what measuring took}.

    On the CPU a half dtype's rate is at least float32's: its attention kernels convert to float32
    and compute there, while its own matmul may be emulated (float16 on a CPU without it: 0.003
    TFLOP/s, which put fp16 math and flash cells at 1,400-1,900% of the ceiling)."""
    t0 = time.perf_counter()
    rates = {d: matmul_tflops(d, device) for d in sorted(set(dtypes))}
    if device.type == "cpu" and any(d != "float32" for d in rates):
        fp32 = rates.get("float32") or matmul_tflops("float32", device)
        rates = {d: max(r, fp32) for d, r in rates.items()}
    out = {"tflops": rates, "gbps": copy_gbps(device)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out | {"seconds": time.perf_counter() - t0}
