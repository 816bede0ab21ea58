"""Shared fixtures: real Hydra composition, a real local Ray cluster, real parquet."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import orchestrator.config  # noqa: F401  (registers the schema that conf/config.yaml names)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def make_cfg(*overrides: str, store: Path | None = None):
    """The real composed config, as `python -m orchestrator OVERRIDES` would see it."""
    extra = [f"store.path={store}"] if store is not None else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra, "run.progress=false"])


def ensure_ray(num_gpus: int = 0):
    """A real private Ray cluster of 2 CPUs and num_gpus (fake) GPUs, reused while its shape fits.
    ``address="local"``: never another process's cluster on this host."""
    import ray

    if ray.is_initialized():
        if int(ray.cluster_resources().get("GPU", 0)) == num_gpus:
            return ray
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=num_gpus, include_dashboard=False, logging_level="ERROR",
             _system_config={"worker_niceness": 0})  # as the tool's own private cluster (cluster.connect)
    return ray


@pytest.fixture
def ray_local():
    """A real local Ray cluster with 2 CPUs and no GPU."""
    return ensure_ray(0)


@pytest.fixture
def ray_fake_gpus():
    """A real Ray cluster that advertises 4 GPUs (scheduling only: cells run on the CPU)."""
    return ensure_ray(4)


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory):
    """A dataset made by a real `+sweep=smoke` run on the local cluster."""
    from orchestrator.driver import run

    ensure_ray(0)
    store = tmp_path_factory.mktemp("smoke") / "results"
    out = tmp_path_factory.mktemp("smoke_out")
    summary = run(make_cfg("+sweep=smoke", store=store), output_dir=str(out))
    return {"store": store, "output_dir": out, "summary": summary}


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300, env: dict | None = None):
    """`python -m orchestrator ARGS` in a subprocess; returns the CompletedProcess (and its
    ``wall_s``). A None in env unsets that variable."""
    import subprocess
    import time

    full_env = {k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}.items() if v is not None}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    proc.wall_s = time.monotonic() - t0  # the command as the user waits for it
    return proc


def stderr_lines(proc) -> list[str]:
    """The non-blank lines a process wrote to stderr (a refusal must be exactly one)."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


def pytest_sessionfinish(session, exitstatus):
    import ray

    if ray.is_initialized():
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip themselves where there is no GPU (`-m "not slow"` replaces the default `-m 'not gpu'`)."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine")
    for item in gpu:
        item.add_marker(skip)


# ----------------------------------------------------------------------------- every reader of the dataset


def readers() -> dict:
    """Each way a user reads the dataset: a function of the folder giving the row_ids it sees."""
    import pyarrow.dataset as ds

    duckdb = pytest.importorskip("duckdb")  # test dependencies ('.[test]'); a GPU machine may lack them
    pl = pytest.importorskip("polars")
    return {
        "pandas": lambda p: pd.read_parquet(p)["row_id"].tolist(),
        "pyarrow": lambda p: ds.dataset(p, format="parquet").to_table(columns=["row_id"])["row_id"].to_pylist(),
        "duckdb **": lambda p: [r[0] for r in duckdb.sql(f"select row_id from '{p}/**/*.parquet'").fetchall()],
        "duckdb dir": lambda p: [r[0] for r in duckdb.sql(f"select row_id from read_parquet('{p}')").fetchall()],
        "polars": lambda p: pl.read_parquet(p)["row_id"].to_list(),
        "polars scan": lambda p: pl.scan_parquet(p).select("row_id").collect()["row_id"].to_list(),
    }


def each_row_once(path, expected: set[str] | None = None, cells: int | None = None) -> None:
    """Every reader sees every row exactly once (and, given, exactly these rows / this many cells).
    With FAULT_MATRIX_LOG=FILE, each reader's count is appended to FILE (for a table of them)."""
    for name, read in readers().items():
        ids = read(str(path))
        if os.environ.get("FAULT_MATRIX_LOG"):
            with open(os.environ["FAULT_MATRIX_LOG"], "a") as f:
                f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "reader": name,
                                    "rows": len(ids), "twice": len(ids) - len(set(ids)),
                                    "expected": None if expected is None else len(expected)}) + "\n")
        assert len(ids) == len(set(ids)), f"{name}: {len(ids) - len(set(ids))} rows twice"
        if expected is not None:
            assert set(ids) == expected, f"{name}: {len(set(ids) ^ expected)} rows differ"
    if cells is not None:
        df = pd.read_parquet(path)
        assert df.cell_id.nunique() == cells and len(df) == cells, "a cell measured twice"
