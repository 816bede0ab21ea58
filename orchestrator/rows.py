"""What one row of the dataset is: its columns (name, type, meaning) and the statuses.

The one definition the cell, the executor, the store and the report share. No imports
beyond the standard library: the cell process, the driver and readers' scripts all load it.
The README's column table lists every column (``tests/test_readme.py`` checks).
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Status(str, enum.Enum):
    """How a cell ended. Stored as its plain string value."""

    OK = "ok"
    UNSUPPORTED = "unsupported"  # the backend cannot run these inputs on this device (PyTorch's reason)
    OOM = "oom"
    ERROR = "error"  # the cell raised
    CRASHED = "crashed"  # the cell's process died (signal, exit)
    TIMEOUT = "timeout"  # past run.cell_timeout_s; killed

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in Status)
FAILED = frozenset({Status.ERROR.value, Status.CRASHED.value, Status.TIMEOUT.value})  # run.rerun=failed redoes these
RETRYABLE = frozenset({Status.CRASHED.value, Status.TIMEOUT.value})  # retried run.retries times within a run


class Column(NamedTuple):
    name: str
    type: str  # string, int64, double, bool, timestamp
    doc: str


def _cols(kind: str, *specs: tuple[str, str]) -> list[Column]:
    return [Column(name, kind, doc) for name, doc in specs]


S, I, F, B, T = "string", "int64", "double", "bool", "timestamp"  # noqa: E741

COLUMNS: list[Column] = [
    # what was measured: the cell's parameters, and the row's identity
    Column("cell_id", S, "hash of the cell's parameters (workload..target): the resume key"),
    Column("run_id", S, "the sweep run that wrote the row"),
    Column("row_id", S, "unique id of the row"),
    Column("sweep_name", S, "`sweep_name` of the run (the sweep file's name, or yours)"),
    Column("workload", S, "attention (the op) or encoder (nn.TransformerEncoder)"),
    Column("backend", S, "eager, math, flash, efficient, cudnn, flex, fault_*"),
    Column("mode", S, "fwd or fwd_bwd"),
    Column("dtype", S, "float16, bfloat16 or float32"),
    Column("causal", B, "causal masking"),
    Column("head_dim", I, "head size D"),
    Column("num_heads", I, "heads H"),
    Column("batch_size", I, "batch B"),
    Column("seq_len", I, "sequence length N"),
    Column("target", S, "accelerator type asked for (`any`: whichever was free; `cpu`)"),
    # how it ended
    Column("status", S, "ok, unsupported, oom, error, crashed, timeout"),
    Column("error", S, "what went wrong: exception, signal, deadline, or the unsupported reason"),
    Column("attempts", I, "tries it took (crashed and timed-out cells are retried)"),
    Column("isolation", S, "pool (forked child per cell) or task (Ray task per cell)"),
    Column("measure_key", S, "hash of the measurement settings (`measure.*`): a sweep with other settings says "
                                "so (run.rerun=changed measures those cells again)"),
    Column("measure_settings", S, "the measurement settings as JSON"),
    # timing
    Column("timing_method", S, "cuda_graph (replay of a captured CUDA graph), cuda_events (each call between "
                               "events), cpu_clock (monotonic clock)"),
    Column("timing_note", S, "why cuda_graph was not used (capture failed, or measure.method), or why there are "
                             "fewer input_sets than asked, else null"),
    Column("warmup_iters", I, "calls before timing, the first (compiling) call included"),
    Column("warmup_s", F, "seconds of warm-up, the first call included"),
    Column("first_call_s", F, "seconds of the first call (lazy loading, plan building, compilation)"),
    Column("compile_s", F, "seconds of the compiling first call (compiled backends: flex)"),
    Column("iters", I, "timed calls (graph replays or calls)"),
    Column("stop_reason", S, "why timing stopped: precision (median known within measure.precision), budget "
                             "(measure.budget_ms spent), max_iters"),
    Column("input_sets", I, "copies of the inputs the timed replays took in turn (calls under 0.05 ms: "
                            "measure.input_sets), else 1"),
    Column("median_ci_pct", F, "half-width of the median's 95% confidence interval, % of the median"),
    Column("median_ms", F, "median time per call, by timing_method (device time for cuda_graph)"),
    Column("p10_ms", F, "10th percentile"),
    Column("p90_ms", F, "90th percentile"),
    Column("mean_ms", F, "mean"),
    Column("std_ms", F, "standard deviation"),
    Column("min_ms", F, "fastest call"),
    Column("host_median_ms", F, "median of calls timed between CUDA events as launched from Python (the host's "
                                "launch speed included): 10 ms of warm calls (at least one), each waited for, "
                                "after the memory pass"),
    Column("launch_overhead_ms", F, "host_median_ms - median_ms, at least 0: time the GPU waits for launches"),
    Column("sm_clock_mhz", F, "GPU: mean SM clock (NVML), sampled every ms while the timed calls ran"),
    Column("clock_limits", S, "GPU: what held the clock down while timing (sw_power_cap, sw_thermal, "
                              "hw_slowdown, ...); null when nothing did"),
    # what the numbers mean
    Column("flops", F, "floating-point operations per call, by `flops_convention`"),
    Column("tflops", F, "flops / median seconds / 1e12"),
    Column("bytes", F, "fewest bytes a call must move through memory (inputs read, outputs written once)"),
    Column("flops_convention", S, "how flops and bytes are counted"),
    Column("ceiling_tflops", F, "this device's measured matmul rate in the cell's dtype (TFLOP/s; on a CPU, a half "
                                     "dtype's at least float32's, which its kernels compute in)"),
    Column("ceiling_gbps", F, "this device's measured memory bandwidth (GB/s, read + write of a large copy)"),
    Column("pct_of_compute_ceiling", F, "tflops / ceiling_tflops, %"),
    Column("pct_of_bandwidth_ceiling", F, "bytes / median seconds / ceiling_gbps, %"),
    Column("rel_error", F, "||out - ref|| / ||ref|| against fp32 math on a (batch, head) slice"),
    # memory: one call in a pass of its own
    Column("inputs_bytes", I, "PyTorch memory allocated before the memory pass (the inputs, and cuBLAS's workspace on "
           "a GPU)"),
    Column("peak_allocated_bytes", I, "PyTorch peak allocated during one call, above inputs_bytes"),
    Column("peak_allocated_total_bytes", I, "PyTorch peak allocated, inputs included"),
    Column("peak_reserved_bytes", I, "PyTorch peak reserved by the caching allocator during the memory pass"),
    Column("nvml_used_before_bytes", I, "NVML used memory of the cell's GPU before the memory pass's call "
                                        "(device-wide: this cell's context, inputs, other tenants; not this "
                                        "sweep's waiting cell processes)"),
    Column("nvml_used_peak_bytes", I, "the same reading right after the call (PyTorch's caching allocator still "
                                      "holds what the call reserved)"),
    Column("nvml_process_peak_bytes", I, "NVML memory of the cell's own process after the call: its CUDA context, "
                                         "library workspaces, inputs and the call's peak reservation"),
    Column("nvml_context_bytes", I, "NVML memory of the cell's process before its inputs: CUDA context and "
                                    "library handles (cuBLAS, cuDNN)"),
    Column("kernels", S, "what one recorded call ran (`;`-separated): ATen operators, or GPU kernels with "
                         "measure.kernels=gpu"),
    Column("kernels_match", B, "whether those belong to the pinned backend"),
    # where and with what
    Column("device_type", S, "cuda or cpu"),
    Column("device_name", S, "GPU (or CPU) model"),
    Column("compute_capability", S, "CUDA compute capability"),
    Column("device_total_bytes", I, "GPU memory"),
    Column("gpu_uuid", S, "NVML UUID of the GPU that ran the cell"),
    Column("nvml_index", I, "NVML index of that GPU (not the CUDA index)"),
    Column("nvml_name", S, "NVML's name of that GPU"),
    Column("cuda_visible_devices", S, "GPU ids Ray gave the cell (its CUDA_VISIBLE_DEVICES)"),
    Column("driver_version", S, "NVIDIA driver"),
    Column("cuda_version", S, "CUDA of the torch build"),
    Column("cudnn_version", S, "cuDNN version"),
    Column("torch_version", S, "torch version"),
    Column("host", S, "host name"),
    Column("node_id", S, "Ray node id"),
    Column("pid", I, "process id of the cell"),
    Column("process_cell", I, "which cell of its process this was (crashed and timed-out cells included): 1, 2, ... "
                              "in a device's process (the default); always 1 with run.cells_per_process=1"),
    Column("git_commit", S, "commit of this project when run from a git checkout (`-dirty`: uncommitted changes)"),
    Column("tool_version", S, "installed version of this project (attention-sweep-orchestrator)"),
    # when, and what it cost
    Column("started_at", T, "when the cell's own work began, its inputs (UTC)"),
    Column("ended_at", T, "cell end (UTC)"),
    Column("measure_s", F, "seconds from the cell's go (the previous cell on its device done) to its result"),
    Column("setup_s", F, "seconds of the cell's inputs and first call, before its go"),
    Column("timing_s", F, "seconds of warm-up, graph capture and timed calls (the first call apart), with the "
                          "rests between stretches of timed calls (measure.duty)"),
    Column("memory_s", F, "seconds of the memory pass"),
    Column("kernels_s", F, "seconds of the kernel check"),
    Column("accuracy_s", F, "seconds of the accuracy check"),
    Column("spawn_s", F, "seconds from the cell's turn on its device to its process being ready (about 0 when "
                         "started ahead)"),
    Column("startup_s", F, "seconds of the cell process's CUDA context and library start (0 for a process's later "
                           "cells; hidden behind earlier cells when prewarmed)"),
    Column("startup_wait_s", F, "of startup_s, seconds its steps waited for the GPU's lock (other cells' quiet "
                                "windows; null on the CPU)"),
    Column("previous_wait_s", F, "seconds the cell waited, before its quiet window, for the previous cell's "
                                 "process and its GPU memory to be gone (about 0 in task mode)"),
    Column("quiet_wait_s", F, "seconds the cell waited for its quiet window: other processes' start steps on "
                              "its GPU (null on the CPU, or where the lock files could not be opened)"),
    Column("cell_wall_s", F, "seconds from the cell's turn on its device (the previous cell done measuring) to "
                             "its result"),
]
NAMES = tuple(c.name for c in COLUMNS)
_NAME_SET = frozenset(NAMES)
PARAMS = ("workload", "backend", "mode", "dtype", "causal", "head_dim", "num_heads", "batch_size", "seq_len", "target")


class UnknownColumn(KeyError):
    """A row carries a key that is not a column: a programming error, never silently dropped."""


def check(row: dict) -> dict:
    """Return row if every key is a column; raise UnknownColumn naming the others."""
    extra = set(row) - _NAME_SET
    if extra:
        raise UnknownColumn(f"not dataset columns: {', '.join(sorted(extra))}")
    return row


def shares(row: dict, ceiling: dict | None) -> dict:
    """The roofline columns of a measured row, from its device's ceilings (``tasks.ceilings``)."""
    if not ceiling or row.get("status") != "ok" or not row.get("median_ms"):
        return {}
    tflops = ceiling["tflops"].get(row["dtype"])
    cols = {"ceiling_tflops": tflops, "ceiling_gbps": ceiling["gbps"]}
    if tflops and row.get("tflops") is not None:
        cols["pct_of_compute_ceiling"] = 100 * row["tflops"] / tflops
    if row.get("bytes"):
        cols["pct_of_bandwidth_ceiling"] = 100 * row["bytes"] / (row["median_ms"] / 1e3) / 1e9 / ceiling["gbps"]
    return cols
