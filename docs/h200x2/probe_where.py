"""Which part of a sweep gives small math cells their second speed? (math at batch 1, seq 128:
0.0500 ms in every sweep cell, 0.056 ms in every process outside a sweep, probe_small_math.txt.)
The same cells, one GPU, measured four ways in one run:
  forkrunner  the sweep's ForkRunner and forkserver, without Ray (cells one after another, and
              three at a time from threads, as a device actor hands them over)
  pool        python -m orchestrator (Ray actor, forkserver, run.isolation=pool)
  task        python -m orchestrator run.isolation=task (a Ray task per cell, no forkserver)
  plain       run_cell in a fresh python process, also with OMP_NUM_THREADS=1 as Ray's workers have it
and the environment variables a Ray task sees that this process does not.
Usage: python docs/h200x2/probe_where.py [--device cpu]   (cpu: a dry run of the plumbing)"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CELLS = [("math", 1, 128), ("eager", 1, 128), ("math", 1, 256)]


def default_measure() -> dict:
    """A sweep's default measure settings, as its cells get them."""
    import dataclasses

    from orchestrator.config import MeasureConfig

    return dataclasses.asdict(MeasureConfig())


def spec(backend, b, s, device):
    return {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "target": device, "device": device,
            "seed": 0, "measure": default_measure()}


def show(tag, rows, specs=None):
    """Each row's median after its cell's name (from the row, or from the spec it measured)."""
    print(f"{tag:26} " + "  ".join(f"{c['backend']} b{c['batch_size']} s{c['seq_len']} "
                                   + (f"{r['median_ms']:.4f}" if r.get("status") == "ok" else str(r.get("status")))
                                   for r, c in zip(rows, specs or rows, strict=True)), flush=True)


def forkrunner(device):
    from orchestrator import forkserver
    from orchestrator.isolation import ForkRunner

    address, proc = forkserver.start()
    try:
        runner = ForkRunner(address, device, visible="0" if device == "cuda" else None, dtypes=["bfloat16"])
        specs = [spec(*c, device) for c in CELLS for _ in range(2)]
        show("forkrunner, in turn", [runner.run(s, 120) for s in specs], specs)
        with ThreadPoolExecutor(3) as pool:
            show("forkrunner, 3 at once", list(pool.map(lambda s: runner.run(s, 120), specs)), specs)
    finally:
        proc.kill()
        proc.wait()


def sweep(isolation, device):
    import pandas as pd

    store = Path(tempfile.mkdtemp()) / "store"
    cmd = [sys.executable, "-m", "orchestrator", "grid.backends=[math,eager]", "grid.seq_lens=[128,256]",
           "grid.batch_sizes=[1]", "grid.dtypes=[bfloat16]", "grid.head_dims=[128]", "grid.num_heads=[16]",
           f"run.isolation={isolation}", "run.progress=false", "report.enabled=false", f"store.path={store}",
           f"hydra.run.dir={store.parent / 'run'}", "cluster.num_gpus=1" if device == "cuda" else "run.device=cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        print(f"{isolation}: failed: {res.stderr[-600:]}")
        return
    df = pd.read_parquet(store)
    show(f"sweep, {isolation}", df.sort_values(["backend", "seq_len"]).to_dict("records"))


PLAIN = """
import json, sys
from tasks.cell import run_cell
print(json.dumps([run_cell(s) for s in json.loads(sys.argv[1])], default=str))
"""


def plain(device, **env):
    specs = [spec(*c, device) for c in CELLS]
    res = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(specs)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **({"CUDA_VISIBLE_DEVICES": "0"} if device == "cuda" else {}), **env})
    show("plain process " + " ".join(f"{k}={v}" for k, v in env.items()),
         json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else [], specs)


def ray_env():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        there = ray.get(ray.remote(lambda: dict(os.environ)).remote())
    finally:
        ray.shutdown()
    here = dict(os.environ)
    diff = {k: there[k] for k in sorted(there) if here.get(k) != there[k] and "TOKEN" not in k and "KEY" not in k}
    print("environment a Ray task sees and this process does not (or differently):")
    for k, v in diff.items():
        print(f"  {k}={v[:120]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    device = ap.parse_args().device
    plain(device)
    plain(device, OMP_NUM_THREADS="1")  # as Ray sets it for its workers, and so for the forkserver
    forkrunner(device)
    sweep("pool", device)
    sweep("task", device)
    ray_env()


if __name__ == "__main__":
    main()
