"""The parquet dataset: one folder of part files that pandas, pyarrow, DuckDB and polars read.

Each finished cell is written at once as a part file of its own (written beside, fsynced,
then renamed into place), so a killed driver loses nothing that was reported done.
``compact`` merges the parts into one file at the end of a sweep. Rows carry a unique
``row_id``; readers drop repeats, so a compaction cut short duplicates nothing.
Files whose names start with ``_`` or ``.`` are ignored by every parquet reader: the
store keeps its temporary files, run configs and unreadable files there.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
_T = pa.timestamp("us", tz="UTC")

# (column, type, meaning): the README's column table lists each (tests/test_readme.py checks).
COLUMNS = [
    ("cell_id", _S, "hash of the cell's parameters (workload..target): the resume key"),
    ("run_id", _S, "the sweep run that wrote the row"),
    ("row_id", _S, "unique id of the row"),
    ("sweep", _S, "sweep name (`sweep_name`) of the run"),
    ("workload", _S, "attention (the op) or encoder (nn.TransformerEncoder)"),
    ("backend", _S, "eager, math, flash, efficient, cudnn, flex, fault_*"),
    ("mode", _S, "fwd or fwd_bwd"),
    ("dtype", _S, "float16, bfloat16 or float32"),
    ("causal", _B, "causal masking"),
    ("head_dim", _I, "head size D"),
    ("num_heads", _I, "heads H"),
    ("batch_size", _I, "batch B"),
    ("seq_len", _I, "sequence length N"),
    ("target", _S, "accelerator type asked for (`any`: whichever was free; `cpu`)"),
    ("status", _S, "ok, unsupported, oom, error, crashed, timeout"),
    ("error", _S, "what went wrong: exception, signal, deadline, or the unsupported reason"),
    ("attempts", _I, "tries it took (crashed and timed-out cells are retried)"),
    ("isolation", _S, "pool (forked child per cell) or task (Ray task per cell)"),
    ("warmup_iters", _I, "calls before timing"),
    ("warmup_s", _F, "seconds of warm-up, compilation included"),
    ("first_call_s", _F, "seconds of the first call (compilation, plan building)"),
    ("compile_s", _F, "seconds of the compiling first call (compiled backends: flex), outside warm-up and timing"),
    ("iters", _I, "timed calls"),
    ("median_ms", _F, "median time per call"),
    ("p10_ms", _F, "10th percentile"),
    ("p90_ms", _F, "90th percentile"),
    ("mean_ms", _F, "mean"),
    ("std_ms", _F, "standard deviation"),
    ("min_ms", _F, "fastest call"),
    ("flops", _F, "floating-point operations per call, by `flops_convention`"),
    ("tflops", _F, "flops / median seconds / 1e12"),
    ("flops_convention", _S, "how flops are counted"),
    ("rel_error", _F, "||out - ref|| / ||ref|| against fp32 math on a (batch, head) slice"),
    ("inputs_bytes", _I, "PyTorch memory allocated before the memory pass (the inputs)"),
    ("peak_allocated_bytes", _I, "PyTorch peak allocated during one call, above inputs_bytes"),
    ("peak_allocated_total_bytes", _I, "PyTorch peak allocated, inputs included"),
    ("peak_reserved_bytes", _I, "PyTorch peak reserved by the caching allocator"),
    ("nvml_used_before_bytes", _I, "NVML used memory of the cell's GPU before measuring"),
    ("nvml_used_peak_bytes", _I, "NVML used memory of the cell's GPU, peak polled while measuring"),
    ("kernels", _S, "what one recorded call ran (`;`-separated): ATen operators, or GPU kernels with "
                    "measure.kernels=gpu"),
    ("kernels_match", _B, "whether those belong to the pinned backend"),
    ("device_type", _S, "cuda or cpu"),
    ("device_name", _S, "GPU (or CPU) model"),
    ("compute_capability", _S, "CUDA compute capability"),
    ("device_total_bytes", _I, "GPU memory"),
    ("gpu_uuid", _S, "NVML UUID of the GPU that ran the cell"),
    ("nvml_index", _I, "NVML index of that GPU (not the CUDA index)"),
    ("nvml_name", _S, "NVML's name of that GPU"),
    ("cuda_visible_devices", _S, "GPU ids Ray gave the cell (its CUDA_VISIBLE_DEVICES)"),
    ("driver_version", _S, "NVIDIA driver"),
    ("cuda_version", _S, "CUDA of the torch build"),
    ("cudnn_version", _S, "cuDNN version"),
    ("torch_version", _S, "torch version"),
    ("host", _S, "host name"),
    ("node_id", _S, "Ray node id"),
    ("pid", _I, "process id of the cell"),
    ("git_commit", _S, "commit of this project"),
    ("started_at", _T, "cell start (UTC)"),
    ("ended_at", _T, "cell end (UTC)"),
    ("measure_s", _F, "seconds the cell spent measuring (after its process and CUDA start)"),
    ("spawn_s", _F, "seconds to start the cell's process (fork, or a Ray worker and imports)"),
    ("startup_s", _F, "seconds from the cell's process start to its device being ready (the last cell gone)"),
    ("cell_wall_s", _F, "seconds from dispatch to result, process start included"),
]
SCHEMA = pa.schema([(n, t) for n, t, _ in COLUMNS])
FINAL = ("ok", "unsupported", "oom", "error", "crashed", "timeout")
FAILED = ("error", "crashed", "timeout")


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts, or records read back from pandas with NaN for nulls) as the dataset's schema."""
    df = pd.DataFrame(rows).reindex(columns=SCHEMA.names)
    arrays = [
        pa.nulls(len(df), f.type) if df[f.name].isna().all() else pa.array(df[f.name], type=f.type, from_pandas=True)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def parts(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("*.parquet") if not p.name.startswith(("_", ".")))

    def append(self, rows: list[dict]) -> Path:
        """Write rows as one new part file, durable when this returns."""
        self.path.mkdir(parents=True, exist_ok=True)
        part = self.path / f"part-{uuid.uuid4().hex}.parquet"
        _write_atomic(to_table(rows), part)
        return part

    def _read_part(self, part: Path, columns) -> pa.Table | None:
        try:
            return pq.read_table(part, columns=columns)
        except Exception as exc:  # truncated, not parquet, unreadable
            bad = self.path / "_unreadable"
            bad.mkdir(exist_ok=True)
            os.replace(part, bad / part.name)
            print(f"store: {part} is unreadable ({type(exc).__name__}: {exc}); moved to {bad}/, other rows kept")
            return None

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        tables = [t for p in self.parts() if (t := self._read_part(p, columns)) is not None]
        if not tables:
            schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables, promote_options="default")

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every row (repeats of a row_id dropped), oldest first."""
        cols = None if columns is None else sorted(set(columns) | {"row_id", "ended_at"})
        df = self.read_table(cols).to_pandas()
        df = df.drop_duplicates("row_id").sort_values("ended_at", kind="stable", ignore_index=True)
        return df if columns is None else df[list(columns)]

    def latest(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The newest row of each cell."""
        cols = None if columns is None else sorted(set(columns) | {"cell_id"})
        df = self.read(cols)
        return df.drop_duplicates("cell_id", keep="last").reset_index(drop=True)

    def done(self, rerun: str = "none") -> set[str]:
        """Cell ids that need no new measurement: resume (none), failed, or all."""
        if rerun == "all":
            return set()
        df = self.latest(["cell_id", "status"])
        skip = set(FINAL) - (set(FAILED) if rerun == "failed" else set())
        return set(df.loc[df["status"].isin(skip), "cell_id"])

    def compact(self) -> Path | None:
        """Merge all part files into one; the old parts go only after the new file is durable."""
        parts = self.parts()
        if len(parts) < 2:
            return None
        tables = [t for p in parts if (t := self._read_part(p, None)) is not None]
        table = pa.concat_tables(tables, promote_options="default")
        out = self.path / f"data-{uuid.uuid4().hex}.parquet"
        _write_atomic(table, out)
        for p in parts:
            p.unlink(missing_ok=True)
        return out

    def save_run(self, run_id: str, info: dict) -> None:
        runs = self.path / "_runs"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / f"{run_id}.json").write_text(json.dumps(info, indent=2, default=str))

    def runs(self) -> dict[str, dict]:
        runs = self.path / "_runs"
        return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))} if runs.is_dir() else {}
