"""The one timing function and the one memory function that every workload uses.

Timing on CUDA (``warm``, then ``timed``; ``time_fn`` runs both):

1. Warm-up (``warm``): calls, each waited for, until ``warmup_iters`` calls and ``warmup_ms``
   have passed, on the stream the graph will be captured on. Nothing reported rests on these
   calls (a cell process may start its CUDA context beside them); the last one's output is
   the accuracy check's.
2. The host-inclusive time (``timed``, where nothing else runs on the GPU): calls on the
   current stream, each between two CUDA events after an L2 flush and waited for, until
   ``_HOST_MS`` have passed (at least one call). Their median is ``host_median_ms``: what one
   call costs as Python launches it (a small call can finish on the GPU before the host has
   queued its next kernel; then these events time the host). They follow the warm-up and the
   memory pass, so a long call's figure is a warm call's, not a first allocation's.
3. Capture the call in a CUDA graph and time graph replays between events, the L2 flushed
   before each (``timing_method=cuda_graph``): device time, which repeats to about 1%. A call
   that cannot be captured (it syncs, or a compiled backend refuses) is timed as in 2, and the
   row says why (``cuda_events``, ``timing_note``).
   A short call (a replay's device time under ``_SETS_BELOW_MS``, from three replays) is
   captured ``input_sets`` times (8), each graph on its own copy of the inputs, and the replays
   take the graphs in turn. Such a call's time moves with where its inputs lie: copies of an
   11 us call's inputs in one process read up to 3-4% apart, and each process puts them
   elsewhere, so one copy's median differed by up to 5% across 8 fresh processes; the mean over
   8 copies cut that by a third to a half (16 processes on 2 x H100; no way of flushing the L2
   did: ``docs/h100x2/probe_*.txt``).
4. Stop when the median is known well enough: its 95% confidence interval (order statistics)
   within ``precision`` of it, or ``budget_ms`` spent, or ``max_iters`` calls; never before
   ``min_iters``. A long call (tens of ms) stops after ``min_iters``; a short one after as many
   replays as its spread needs. The row records how it stopped.
5. Paced (``duty``): the timed calls run in stretches of at most ``_BURST_S`` (or one call), and
   before each the GPU rests ``(1 - duty) / duty`` times as long as the last stretch took. Run
   back to back, a compute-bound call drives a GPU into its power cap within about 50 ms and
   then slows by up to 15% (H200, 700 W: cuDNN batch 8, seq 8192 went from 3.34 to 3.84 ms a
   call); at half duty it held 3.34-3.38 ms for 1.5 s. The budget counts the stretches, not
   the rests. On the CPU there are no rests.

On the CPU the same protocol runs with a monotonic clock (``cpu_clock``), without step 2.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tasks.stderr import captured_fd2

_L2_FLUSH_BYTES = 256 << 20  # larger than any L2 yet (H100: 50 MB), as triton's do_bench
_BATCH_S = 0.01  # timed calls between two checks of the stopping rule, at first
_HOST_MS = 10.0  # the host-inclusive pass: calls until this long (at least one)
_BURST_S = 0.02  # paced timing: the longest stretch of timed calls between two rests
_SETS_BELOW_MS = 0.05  # calls shorter than this (device time) are timed over measure.input_sets copies
_SETS_MAYBE_MS = 1.0  # ... looked for among calls under this host-inclusive (a launch-bound call's is the host's)
_Z95 = 1.96


@dataclass(frozen=True)
class Protocol:
    """The measurement settings that decide the timing (conf `measure.*`)."""

    warmup_iters: int = 1
    warmup_ms: float = 25.0
    budget_ms: float = 100.0
    min_iters: int = 3
    max_iters: int = 1000
    precision: float = 0.005
    flush_l2: bool = True
    duty: float = 0.5  # share of the timing's wall time the GPU runs timed calls (1: back to back)
    method: str = "auto"  # auto: graph where it captures; graph; events
    input_sets: int = 8  # short calls: graphs on this many copies of the inputs, replayed in turn

    @classmethod
    def of(cls, m: dict) -> Protocol:
        return cls(**{k: m[k] for k in cls.__dataclass_fields__ if k in m})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ci_half(ms: list[float]) -> float:
    """Half-width of the median's 95% confidence interval, relative to the median (inf when
    too few samples): order statistics, no assumption on the distribution."""
    n = len(ms)
    half = _Z95 * math.sqrt(n) / 2
    lo, hi = math.floor(n / 2 - half), math.ceil(n / 2 + 1 + half) - 1  # 0-based indices
    if lo < 0 or hi > n - 1:
        return math.inf
    s = sorted(ms)
    med = statistics.median(s)
    return (s[hi] - s[lo]) / 2 / med if med > 0 else math.inf


def summarize(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    ci = median_ci_half(ms)
    return {
        "iters": len(ms),
        "median_ms": statistics.median(ms),
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "mean_ms": statistics.fmean(ms),
        "std_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "min_ms": min(ms),
        "median_ci_pct": None if math.isinf(ci) else ci * 100,
    }


class Timer:
    """Times one call or one graph replay per sample, with the L2 flushed before each."""

    def __init__(self, device: torch.device, flush_l2: bool):
        self.device = device
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if flush_l2 and self.cuda else None

    def batch(self, fn: Callable, n: int, wait_each: bool = False, while_busy: Callable | None = None) -> list[float]:
        """n timed calls; ``while_busy(last_event)`` runs once they are queued (GPU)."""
        if not self.cuda:
            out = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                fn()
                out.append((time.perf_counter_ns() - t0) / 1e6)
            return out
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in pairs:
            if self.flush is not None:
                self.flush.zero_()
            start.record()
            fn()
            end.record()
            if wait_each:
                end.synchronize()
        if while_busy is not None:
            while_busy(pairs[-1][1])
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) for s, e in pairs]

    def close(self) -> None:
        self.flush = None


def warm_up(fn: Callable, device: torch.device, p: Protocol) -> tuple[dict, object]:
    """Call fn until warmup_iters calls and warmup_ms have passed, each waited for; return the
    warm-up columns and the last call's output. Called on the stream the graph will be
    captured on, so that the capture needs no call of its own."""
    t0 = time.perf_counter()
    n, out = 0, None
    while n < p.warmup_iters or (time.perf_counter() - t0) * 1e3 < p.warmup_ms:
        out = None  # one output alive at a time
        out = fn()
        _sync(device)
        n += 1
    return {"warmup_iters": n, "warmup_s": time.perf_counter() - t0}, out


def host_pass(timer: Timer, fn: Callable) -> list[float]:
    """The host-inclusive samples: calls between events, each waited for, on the current stream,
    until ``_HOST_MS`` have passed (at least one)."""
    t0, ms = time.perf_counter(), []
    while not ms or (time.perf_counter() - t0) * 1e3 < _HOST_MS:
        ms += timer.batch(fn, 1, wait_each=True)
    return ms


def capture(fn: Callable, device: torch.device, stream):
    """fn captured in a CUDA graph on the (warmed) stream, or the reason it cannot be."""
    stream.wait_stream(torch.cuda.current_stream(device))
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        return graph, out, None
    except Exception as exc:  # a call that syncs, a backend that refuses capture
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        return None, None, f"not capturable in a CUDA graph: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def more_graphs(again: Callable, n: int, device: torch.device, stream) -> tuple[list[tuple], str | None]:
    """Up to n more (graph, step) pairs of the same call, each step on its own copy of the
    inputs (made on the current stream), run once on the capture's stream before its capture;
    and why there are fewer, if so (a copy that does not fit, a capture refused). The step keeps
    its inputs alive as long as its graph reads them."""
    sets = []
    for _ in range(n):
        try:
            step = again()
            on_stream(stream, device, step)
            torch.cuda.synchronize(device)
        except Exception as exc:  # noqa: BLE001 - out of memory for a copy: the sets made so far
            with contextlib.suppress(Exception):
                torch.cuda.synchronize(device)
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return sets, f"input sets: {len(sets) + 1} of {n + 1}: {why}"
        graph, _, note = capture(step, device, stream)
        if graph is None:
            return sets, f"input sets: {len(sets) + 1} of {n + 1}: {note}"
        sets.append((graph, step))
    return sets, None


def replay_ms(timer: Timer, graph, n: int = 3) -> float:
    """A graph replay's device time from a few replays, the L2 flushed before each as in the timing:
    which calls are short enough for input sets (the host-inclusive time of a launch-bound call
    is the host's, and it moved between 0.03 and 0.12 ms from run to run for one eager cell)."""
    return statistics.median(timer.batch(graph.replay, n))


def in_turn(calls: list[Callable]) -> Callable:
    if len(calls) == 1:
        return calls[0]
    turn = itertools.cycle(calls)
    return lambda: next(turn)()


def timed_loop(timer: Timer, call: Callable, est_s: float, p: Protocol,
               while_busy: Callable | None = None) -> tuple[list[float], str]:
    """Timed calls in growing batches until the stopping rule holds; returns (ms, stop_reason).
    On a GPU below full duty, a batch is one stretch (step 5 above), after a rest."""
    ms: list[float] = []
    rest = (1 - p.duty) / p.duty if timer.cuda and p.duty < 1 else 0.0
    most = max(1, int(_BURST_S / max(est_s, 1e-7))) if rest else p.max_iters  # calls in one stretch
    batch = max(1, min(p.max_iters, int(_BATCH_S / max(est_s, 1e-7))))
    last = max(_BURST_S, est_s)  # the calls right before (host pass, capture) count as a stretch
    spent = 0.0
    while True:
        if rest:
            time.sleep(last * rest)
        t = time.perf_counter()
        ms += timer.batch(call, min(batch, most, p.max_iters - len(ms)), while_busy=while_busy)
        last = time.perf_counter() - t
        spent += last
        spent_ms = spent * 1e3
        if rest:  # stretches of _BURST_S by what a timed call has taken, not the eager estimate
            most = max(1, int(_BURST_S / (spent / len(ms))))
        if len(ms) >= p.max_iters:
            return ms, "max_iters"
        if len(ms) >= p.min_iters:
            if p.precision > 0 and median_ci_half(ms) <= p.precision:
                return ms, "precision"
            if spent_ms >= p.budget_ms:
                return ms, "budget"
        per_call_ms = spent_ms / len(ms)
        left = max(1, int((p.budget_ms - spent_ms) / max(per_call_ms, 1e-4)))
        batch = max(1, min(len(ms), left, p.max_iters - len(ms)))  # double, within the budget


def on_stream(stream, device: torch.device, fn: Callable, *args):
    """fn(*args) on a side stream (the capture's), ordered after what the current stream has
    queued (the inputs fn reads) and before what it queues next."""
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        out = fn(*args)
    torch.cuda.current_stream(device).wait_stream(stream)
    return out


def warm(fn: Callable, device: torch.device, p: Protocol = Protocol()) -> tuple[tuple, object]:
    """The warm-up alone: ``(warm-up columns, the stream it ran on (the capture's))`` for
    ``timed``, and the last call's output."""
    if device.type != "cuda":
        cols, out = warm_up(fn, device, p)
        return (cols, None), out
    stream = torch.cuda.Stream(device)
    cols, out = on_stream(stream, device, warm_up, fn, device, p)
    return (cols, stream), out


def timed(fn: Callable, device: torch.device, p: Protocol, warmed: tuple,
          while_busy: Callable[[torch.cuda.Event], None] | None = None, again: Callable | None = None) -> dict:
    """After ``warm``: the host-inclusive pass, the capture, the timing by the protocol above;
    the row's timing columns. ``while_busy(last_event)`` is called after each timed batch is
    queued (the GPU's clock is sampled until the batch is done). ``again``: makes fn's step on
    new copies of its inputs (``Work.again``), for the input sets of a short call."""
    cols, stream = warmed
    timer = Timer(device, p.flush_l2)
    t0 = time.perf_counter()
    host = host_pass(timer, fn) if timer.cuda else None
    host_med = statistics.median(host) if host else None
    # a timed call's wall time, its L2 flush included (256 MB at memory speed: ~0.05 ms on an H200, ~0.8 on a T4)
    est_s = (time.perf_counter() - t0) / len(host) if host else cols["warmup_s"] / cols["warmup_iters"]
    graph, out, note = None, None, None
    if timer.cuda:
        torch.cuda.empty_cache()  # the capture's private pool may need what the eager calls left cached
        if p.method in ("auto", "graph"):
            graph, out, note = capture(fn, device, stream)
        else:
            note = f"measure.method={p.method}"
    method = "cuda_graph" if graph is not None else ("cuda_events" if timer.cuda else "cpu_clock")
    sets = [(graph, fn)] if graph is not None else []
    if sets and again is not None and p.input_sets > 1 and host_med < _SETS_MAYBE_MS \
            and replay_ms(timer, graph) < _SETS_BELOW_MS:
        more, note = more_graphs(again, p.input_sets - 1, device, stream)
        sets += more
    call = in_turn([g.replay for g, _ in sets]) if sets else fn
    ms, stop = timed_loop(timer, call, est_s, p, while_busy)
    stats = summarize(ms)
    cols = cols | {
        **stats,
        "timing_method": method,
        "timing_note": note,
        "stop_reason": stop,
        "input_sets": max(1, len(sets)),
        "host_median_ms": host_med,
        "launch_overhead_ms": max(0.0, host_med - stats["median_ms"]) if host_med is not None else None,
        "timing_s": cols["warmup_s"] + time.perf_counter() - t0,
    }
    for g, _ in sets:
        g.reset()  # the graphs and their private memory pools go now, not whenever they are collected
    del graph, out, sets, call
    timer.close()
    return cols


def time_fn(fn: Callable, device: torch.device, p: Protocol = Protocol(), again: Callable | None = None) -> dict:
    """Warm up, then time fn by the protocol above; the row's timing columns."""
    warmed, out = warm(fn, device, p)
    del out
    return timed(fn, device, p, warmed, again=again)


@contextlib.contextmanager
def quiet_profiler():
    """Drop the 'USDT:' and 'STAGE:' lines that kineto (torch 2.13) writes to stderr at each
    profiler start and stop, two per cell; whatever else was written there is kept."""
    got = None
    try:
        with captured_fd2() as got:
            yield
    finally:
        kept = [line for line in (got.text if got else "").splitlines(keepends=True)
                if not line.startswith(("USDT:", "STAGE:"))]
        sys.stderr.write("".join(kept))


def cpu_peak_bytes(fn: Callable) -> int:
    """Peak of what one call allocates on the CPU, from the profiler's allocator events
    (the CPU allocator keeps no peak statistics of its own)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # its output freed after its peak: the peak is the same
    events = prof.profiler.kineto_results.events()
    deltas = sorted(
        (e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    now = peak = 0
    for _, nbytes in deltas:
        now += nbytes
        peak = max(peak, now)
    return peak


def measure_memory(fn: Callable, device: torch.device, nvml=None) -> dict:
    """Peak memory of one call, in a pass of its own: PyTorch's figures above what was
    allocated before (the inputs) and, on a GPU with ``nvml`` (a ``device.Nvml``), NVML's
    readings of the device and of this process right before and right after the call (its
    output still held).

    In fwd_bwd the call is a forward and a backward, so the peak holds what autograd saves.
    On the CPU only the peak above what existed before is known (the inputs are not counted).
    """
    t0 = time.perf_counter()
    if device.type != "cuda":
        return {"peak_allocated_bytes": cpu_peak_bytes(fn), "memory_s": time.perf_counter() - t0}
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    used_before = nvml.device_used() if nvml else None
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    cols = {
        "inputs_bytes": before,
        "peak_allocated_bytes": peak - before,
        "peak_allocated_total_bytes": peak,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
    }
    if nvml:
        cols |= {"nvml_used_before_bytes": used_before, "nvml_used_peak_bytes": nvml.device_used(),
                 "nvml_process_peak_bytes": nvml.process_used()}
    del out
    return cols | {"memory_s": time.perf_counter() - t0}
