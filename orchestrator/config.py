"""The config schema (registered in Hydra's ConfigStore) and the checks run before any work.

Hydra checks keys and types against these dataclasses when it composes the config;
``validate`` checks the values (known backends and dtypes, positive sizes, a grid of a sane
size) and raises ``ConfigError`` with one line naming the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.rows import STATUSES

DTYPES = ("float16", "bfloat16", "float32")
MODES = ("fwd", "fwd_bwd")
WORKLOADS = ("attention", "encoder")
ISOLATION = ("pool", "task")
DEVICES = ("auto", "cuda", "cpu")
KERNEL_CHECKS = ("ops", "gpu", "off")
METHODS = ("auto", "graph", "events")
RERUN = ("none", "failed", "changed", "all")


class ConfigError(ValueError):
    """A bad config value: the message is one line that names it."""


_UNKNOWN = re.compile(r"(?:(\S+): )?Key '(\w+)' not in '(\w+)'")


def explain_unknown_key(text: str) -> str | None:
    """'grid.seqlens: no such key; grid takes: backends, seq_lens, ...' where `text` says that a
    section of the schema has no such key (Hydra's own hint, to append it with +, fails the
    same way on a schema); None for any other text."""
    m = _UNKNOWN.search(text)
    schema = globals().get(m.group(3)) if m else None
    if not is_dataclass(schema):
        return None
    full = m.group(1) or m.group(2)
    section = full.rsplit(".", 1)[0] if "." in full else "the top level"
    return f"{full}: no such key; {section} takes: {', '.join(f.name for f in fields(schema))}"


@dataclass
class GridConfig:
    backends: list[str] = MISSING
    seq_lens: list[int] = MISSING
    batch_sizes: list[int] = MISSING
    head_dims: list[int] = MISSING
    num_heads: list[int] | None = None  # heads per cell; or derive them from model_dim
    model_dim: int | None = None  # heads = model_dim // head_dim for each head size
    dtypes: list[str] = MISSING
    causal: list[bool] = field(default_factory=lambda: [True])
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    accelerators: list[str] | None = None  # Ray accelerator types; null: any free GPU


@dataclass
class MeasureConfig:
    """How a cell is measured (tasks/timing.py). Part of what a stored row is: a sweep with other
    settings says so, and ``run.rerun=changed`` measures those cells again."""

    warmup_iters: int = 1  # warm-up: at least this many calls after the first (compiling) one...
    warmup_ms: float = 25.0  # ... and this long
    method: str = "auto"  # auto: CUDA-graph replays where the call captures, else events; graph; events
    precision: float = 0.005  # stop once the median's 95% CI is within this share of it (0: never early)
    budget_ms: float = 100.0  # or once this much time went to timed calls...
    min_iters: int = 3  # ... but never before this many
    max_iters: int = 1000  # and never more than this many
    flush_l2: bool = True
    input_sets: int = 8  # GPU: a call under 0.05 ms is timed over graphs on this many copies of its inputs
    duty: float = 0.5  # GPU: the share of the timing spent in timed calls, in stretches of <= 20 ms with rests
    #                    between ((1 - duty) / duty times each stretch; 1: back to back)
    memory: bool = True
    accuracy: bool = True
    kernels: str = "ops"  # one recorded call: ops (ATen operators), gpu (GPU kernels, torch.profiler), off
    seed: int = 0


@dataclass
class RunConfig:
    isolation: str = "pool"  # pool: an actor per GPU forks a child per cell; task: a Ray task per cell
    cell_timeout_s: float = 300.0  # a cell's own work, from its process being ready to its result
    start_timeout_s: float = 180.0  # a cell process's start (CUDA context), apart from the cell's deadline
    retries: int = 1  # for crashed and timed-out cells
    rerun: str = "none"  # none: resume; failed: also error/crashed/timeout; changed: also cells measured
    #                      with other measure settings; all: everything
    fail_on: list[str] = field(default_factory=list)  # exit 1 when a cell of this run ends in one of these
    max_cells: int = 20000
    device: str = "auto"  # auto: cuda on GPU slots, cpu otherwise; cuda: refuse a cluster without GPUs;
    #                       cpu: measure on the CPU anyway (GPU slots only schedule)
    cpu_workers: int = 1  # cells at once on a cluster with no GPU
    cpus_per_gpu_cell: float = 0.01
    cpu_threads: int | None = None  # torch threads of a CPU cell; null: the machine's cores / cpu_workers
    prewarm: int = 2  # pool mode on a GPU: cell processes started ahead (CUDA context) while one measures
    cells_per_process: int | None = None  # pool mode: cells one process measures in turn; null (the default): no
    #                                      limit, one process per device, replaced after an error, crash, timeout
    #                                      or uncapturable call; 1: a fresh process and CUDA context per cell (task
    #                                      mode always); N: a fresh one every N cells
    progress: bool = True


@dataclass
class StoreConfig:
    path: str = "outputs/results"
    compact: bool = True


@dataclass
class ClusterConfig:
    address: str | None = None  # null: a private local cluster (or RAY_ADDRESS); auto, host:port, ray://: join
    num_cpus: int | None = None  # private local cluster only
    num_gpus: int | None = None  # private local cluster only (a limit; more than the host has only with
    #                              run.device=cpu, to test scheduling)
    init: dict[str, Any] = field(default_factory=dict)  # more ray.init keyword arguments
    verbose: bool = False  # Ray's own start-up messages on the terminal (always in the run folder's ray.log)


@dataclass
class ReportConfig:
    enabled: bool = True
    baseline: str = "math"
    plots: bool = True


@dataclass
class CapacityConfig:
    """``+sweep=capacity``: bisect seq_len per backend x batch x dtype x head size (orchestrator/capacity.py)."""

    enabled: bool = False
    min_seq: int = 128
    max_seq: int = 131072
    granularity: int = 128  # trial lengths are multiples of this
    memory_limit_bytes: int | None = None  # a trial whose measured peak exceeds this counts as too large


@dataclass
class Config:
    sweep_name: str = "default"
    workload: str = "attention"
    grid: GridConfig = field(default_factory=GridConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    run: RunConfig = field(default_factory=RunConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)


ConfigStore.instance().store(name="schema", node=Config)


def _positive(name: str, values, allow_none=False) -> None:
    if values is None and allow_none:
        return
    if not values:
        raise ConfigError(f"{name} is empty: give at least one value")
    for i, v in enumerate(values):
        if v <= 0:
            raise ConfigError(f"{name}[{i}] = {v}: must be a positive integer")


def _member(name: str, values, allowed) -> None:
    if not values:
        raise ConfigError(f"{name} is empty: give at least one value")
    for i, v in enumerate(values):
        if v not in allowed:
            raise ConfigError(f"{name}[{i}] = {v!r}: unknown; choose from {', '.join(allowed)}")


def host_gpus() -> list[str]:
    """The UUIDs of the NVIDIA GPUs this machine has, by NVML (no torch, no CUDA context, no
    Ray); none where there is no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        ids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
               for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - no library, no driver, no device
        return []
    return [i.decode() if isinstance(i, bytes) else i for i in ids]


def check_host(cfg, have_gpus: int) -> None:
    """A private cluster on this machine, before it starts (no Ray, no torch): GPUs asked for
    that the machine does not have (``have_gpus``: NVML's count), or more CPU workers than it
    has cores. ConfigError with one line."""
    import os

    c, r = cfg.cluster, cfg.run
    if c.num_gpus and c.num_gpus > have_gpus and r.device != "cpu":
        raise ConfigError(f"cluster.num_gpus = {c.num_gpus}, but this machine has {have_gpus} NVIDIA GPU(s): cells "
                          "would fail to start CUDA. To test scheduling with fake GPUs, add run.device=cpu")
    if r.device == "cuda" and not have_gpus and not c.num_gpus:
        raise ConfigError("run.device = 'cuda', but this machine has no NVIDIA GPU (NVML finds none)")
    cpus = c.num_cpus or os.cpu_count() or 1
    if not have_gpus and not c.num_gpus and r.cpu_workers > cpus:
        raise ConfigError(f"run.cpu_workers = {r.cpu_workers}, but this machine has {cpus} CPU(s): the extra "
                          f"workers would wait forever; use run.cpu_workers={cpus}")


def validate(cfg) -> None:
    """Raise ConfigError on the first bad value; return quietly if all is well. Never imports
    torch or Ray, and never expands the grid: a grid's size is known from its axes."""
    import tasks.faults  # noqa: F401  (registers the fault_* backends; no torch at import)
    from orchestrator.grid import count
    from tasks.backends import names

    try:  # keys added with `+` on the command line escape Hydra's own check
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    except OmegaConfBaseException as exc:
        msg = f"{exc.full_key}: {str(exc).splitlines()[0]}"
        raise ConfigError(explain_unknown_key(msg) or msg) from None
    _grid(cfg.grid, names())
    if cfg.workload not in WORKLOADS:
        raise ConfigError(f"workload = {cfg.workload!r}: unknown; choose from {', '.join(WORKLOADS)}")
    _run(cfg.run)
    _measure(cfg.measure)
    _cluster(cfg.cluster)
    if not cfg.store.path:
        raise ConfigError("store.path is empty")
    _capacity(cfg)
    n = count(cfg)
    if n > cfg.run.max_cells and not cfg.capacity.enabled:
        raise ConfigError(f"the grid has {n:,} cells, over run.max_cells = {cfg.run.max_cells:,}")


def _grid(g, backends) -> None:
    _member("grid.backends", g.backends, backends)
    _positive("grid.seq_lens", g.seq_lens)
    _positive("grid.batch_sizes", g.batch_sizes)
    _positive("grid.head_dims", g.head_dims)
    _member("grid.dtypes", g.dtypes, DTYPES)
    _member("grid.modes", g.modes, MODES)
    if not g.causal:
        raise ConfigError("grid.causal is empty: give at least one value")
    if (g.num_heads is None) == (g.model_dim is None):
        raise ConfigError("set exactly one of grid.num_heads and grid.model_dim")
    _positive("grid.num_heads", g.num_heads, allow_none=True)
    if g.model_dim is not None:
        for d in g.head_dims:
            if g.model_dim <= 0 or g.model_dim % d:
                raise ConfigError(f"grid.model_dim = {g.model_dim}: not a positive multiple of head dim {d}")


def cells_per_process(r) -> int:
    """run.cells_per_process as the worker takes it: null is 0 (no limit) in pool mode, 1 in task mode."""
    if r.cells_per_process is None:
        return 0 if r.isolation == "pool" else 1
    return r.cells_per_process


def _run(r) -> None:
    if r.isolation not in ISOLATION:
        raise ConfigError(f"run.isolation = {r.isolation!r}: choose from {', '.join(ISOLATION)}")
    if r.device not in DEVICES:
        raise ConfigError(f"run.device = {r.device!r}: choose from {', '.join(DEVICES)}")
    if r.rerun not in RERUN:
        raise ConfigError(f"run.rerun = {r.rerun!r}: choose from {', '.join(RERUN)}")
    for key in ("cell_timeout_s", "start_timeout_s", "cpu_workers", "max_cells"):
        if getattr(r, key) <= 0:
            raise ConfigError(f"run.{key} = {getattr(r, key)}: must be positive")
    if r.cells_per_process not in (None, 1) and r.isolation != "pool":
        raise ConfigError(f"run.cells_per_process = {r.cells_per_process}: only pool isolation runs several cells in "
                          "one process; a Ray task (run.isolation=task) measures one")
    for key in ("retries", "prewarm", "cells_per_process"):
        if getattr(r, key) is not None and getattr(r, key) < 0:
            raise ConfigError(f"run.{key} = {getattr(r, key)}: must be 0 or more")
    for i, status in enumerate(r.fail_on):
        if status not in STATUSES:
            raise ConfigError(f"run.fail_on[{i}] = {status!r}: not a status; choose from {', '.join(STATUSES)}")


def _measure(m) -> None:
    for key in ("warmup_iters", "min_iters", "max_iters", "budget_ms"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"measure.{key} = {getattr(m, key)}: must be positive")
    if m.warmup_ms < 0 or not 0 <= m.precision < 1:
        raise ConfigError(f"measure.warmup_ms = {m.warmup_ms}, measure.precision = {m.precision}: "
                          "warm-up 0 or more ms, precision a share in [0, 1)")
    if m.kernels not in KERNEL_CHECKS:
        raise ConfigError(f"measure.kernels = {m.kernels!r}: choose from {', '.join(KERNEL_CHECKS)}")
    if m.method not in METHODS:
        raise ConfigError(f"measure.method = {m.method!r}: choose from {', '.join(METHODS)}")
    if not 0.1 <= m.duty <= 1:
        raise ConfigError(f"measure.duty = {m.duty}: the share of the timing the GPU runs timed calls, in [0.1, 1] "
                          "(below, the rests hold the GPU for over 9 times the calls)")
    if not 1 <= m.input_sets <= 16:
        raise ConfigError(f"measure.input_sets = {m.input_sets}: copies of a short call's inputs to time over, "
                          "1 (the inputs alone) to 16")
    if m.min_iters > m.max_iters:
        raise ConfigError(f"measure.min_iters = {m.min_iters} exceeds measure.max_iters = {m.max_iters}")


def _cluster(c) -> None:
    import os

    if c.num_cpus is not None and c.num_cpus < 1:
        raise ConfigError(f"cluster.num_cpus = {c.num_cpus}: a cluster needs at least 1 CPU")
    if c.num_gpus is not None and c.num_gpus < 0:
        raise ConfigError(f"cluster.num_gpus = {c.num_gpus}: must be 0 or more")
    joining = c.address or os.environ.get("RAY_ADDRESS")
    if joining and (c.num_cpus is not None or c.num_gpus is not None):
        where = f"cluster.address = {c.address!r}" if c.address else f"RAY_ADDRESS = {os.environ['RAY_ADDRESS']!r}"
        raise ConfigError(f"cluster.num_cpus / cluster.num_gpus size a private local cluster; with {where} the "
                          "existing cluster's resources apply: drop them (or use cluster.address=null)")


def _capacity(cfg) -> None:
    c = cfg.capacity
    if not c.enabled:
        return
    if c.granularity <= 0 or c.min_seq <= 0 or c.min_seq % c.granularity or c.max_seq % c.granularity:
        raise ConfigError(f"capacity: min_seq {c.min_seq} and max_seq {c.max_seq} must be positive multiples "
                          f"of granularity {c.granularity}")
    if c.min_seq > c.max_seq:
        raise ConfigError(f"capacity.min_seq = {c.min_seq} exceeds capacity.max_seq = {c.max_seq}")
    if c.memory_limit_bytes is not None and (c.memory_limit_bytes <= 0 or not cfg.measure.memory):
        raise ConfigError(f"capacity.memory_limit_bytes = {c.memory_limit_bytes}: must be positive, "
                          "with measure.memory on")
