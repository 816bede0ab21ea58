"""On a GPU machine (`pytest -m gpu`): NVML of the right device, real CUDA failures."""

import os
import subprocess

import pytest
import torch

from tasks.cell import run_cell
from tasks.device import nvml_uuid

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MEASURE = dict(warmup_iters=2, warmup_ms=10, budget_ms=50, min_iters=5, max_iters=200, flush_l2=True,
               memory=True, accuracy=True, kernels="ops", seed=0)


def spec(backend, seq=1024, **kw):
    return {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": 4, "seq_len": seq, "target": "any",
            "device": "cuda", "seed": 0, "measure": MEASURE, **kw}


def smi() -> dict:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return {u.strip(): (int(i), n.strip()) for i, u, n in (line.split(",") for line in out.strip().splitlines())}


def test_nvml_finds_the_cell_gpu_by_uuid_not_by_index_zero():
    row = run_cell(spec("flash"))
    assert row["status"] == "ok", row["error"]
    index, name = smi()[row["gpu_uuid"]]
    assert row["nvml_index"] == index and row["nvml_name"] == name
    assert row["gpu_uuid"] == nvml_uuid(torch.cuda.get_device_properties(0).uuid)
    assert row["driver_version"] and row["cuda_version"] and row["cudnn_version"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_cell_on_the_second_gpu_reads_the_second_gpu():
    uuids = list(smi())
    code = ("from tasks.cell import run_cell; import sys, json; sys.path.insert(0, 'tests');"
            "from test_gpu import spec; r = run_cell(spec('flash')); print(r['gpu_uuid'], r['nvml_index'])")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "1"}
    out = subprocess.run(["python", "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == uuids[1] and int(out[1]) == 1


def test_memory_figures_belong_together():
    row = run_cell(spec("math", seq=4096))
    assert row["status"] == "ok", row["error"]
    scores = 4 * 16 * 4096 * 4096 * 2  # one bf16 B*H*N*N score matrix
    assert row["peak_allocated_bytes"] >= scores
    assert row["nvml_used_peak_bytes"] - row["nvml_used_before_bytes"] >= row["peak_allocated_bytes"] * 0.9
    flash = run_cell(spec("flash", seq=4096))
    assert flash["peak_allocated_bytes"] < row["peak_allocated_bytes"] / 10


def test_real_cuda_out_of_memory_is_an_oom_row():
    row = run_cell(spec("fault_oom"))
    assert row["status"] == "oom" and "CUDA out of memory" in row["error"]


def test_timing_is_event_based_and_plausible():
    row = run_cell(spec("flash", seq=8192))
    assert row["status"] == "ok", row["error"]
    assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
    assert 50 < row["tflops"] < 1500  # an H100 runs bf16 flash at a few hundred TFLOP/s
    assert row["rel_error"] < 1e-2
