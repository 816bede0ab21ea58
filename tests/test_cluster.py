"""Existing Ray clusters: one started with `ray start --head`, and a two-node cluster whose
nodes carry different GPU models (fake GPUs: the cells measure on the CPU)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, make_cfg, run_cli
from test_scheduling import max_overlap

from orchestrator.driver import run

# A loopback test cluster: Ray's token authentication off on both sides (on a real cluster
# the driver reads the token that `ray start` wrote, or RAY_AUTH_TOKEN).
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    """`ray start --head --num-gpus=4` in a process group of its own, torn down afterwards."""
    port = free_port()
    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=4",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT,
        env={**os.environ, **NO_TOKEN},
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    time.sleep(2)
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sweep_joins_an_existing_cluster_and_uses_its_four_gpus(head_node, tmp_path):
    store = tmp_path / "results"
    proc = run_cli("+sweep=smoke", "grid.backends=[math]", "grid.seq_lens=[64,96,128,160,192,224,256,288]",
                   "measure.warmup_ms=100", "measure.budget_ms=600", "measure.max_iters=100000", "measure.precision=0", "run.device=cpu",
                   f"cluster.address={head_node}", f"store.path={store}", f"hydra.run.dir={tmp_path / 'run'}",
                   env=NO_TOKEN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr  # joined, started nothing
    df = pd.read_parquet(store)
    assert len(df) == 8 and (df.status == "ok").all()
    assert sorted(df.cuda_visible_devices.unique()) == ["0", "1", "2", "3"]
    assert max_overlap(df) == 4


def test_cells_run_on_each_listed_gpu_model(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    t4 = cluster.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:T4": 1})
    h100 = cluster.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:H100": 1})
    try:
        ray.init(address=cluster.address)
        cfg = make_cfg("+sweep=smoke", "grid.backends=[math,flash]", "grid.seq_lens=[64,128]",
                       "grid.dtypes=[float16]", "grid.accelerators=[T4,H100]", "run.device=cpu",
                       store=tmp_path / "r")
        summary = run(cfg)
        df = pd.read_parquet(tmp_path / "r")
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(df) == 8 and df.cell_id.is_unique and summary.devices == 4
    on = {"T4": t4.node_id, "H100": h100.node_id}
    ran = df[df.status == "ok"]
    assert (ran.node_id == ran.target.map(on)).all()  # each cell on a node of its model
    assert set(ran.target) == {"T4", "H100"}
    flash_t4 = df[(df.target == "T4") & (df.backend == "flash")]
    assert (flash_t4.status == "unsupported").all() and flash_t4.error.str.contains("sm80").all()
    assert (df[df.target == "H100"].status == "ok").all()


def test_a_model_missing_from_the_cluster_is_a_config_error(ray_fake_gpus, tmp_path):
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="no GPU of type 'A100'"):
        run(make_cfg("+sweep=smoke", "grid.accelerators=[A100]", store=tmp_path / "r"))
