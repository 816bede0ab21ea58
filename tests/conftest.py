"""Shared fixtures: real Hydra composition, a real local Ray cluster, real parquet."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    """`python -m orchestrator ARGS` in a subprocess; returns the CompletedProcess. A None in env
    unsets that variable."""
    import subprocess

    full_env = {k: v for k, v in {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def pytest_sessionfinish(session, exitstatus):
    import ray

    if ray.is_initialized():
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip themselves where there is no GPU (`-m "not slow"` replaces the default `-m 'not gpu'`)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
