"""A few cells measured by run_cell, the sweep's whole cell path (accuracy check, kernel check,
memory pass, quiet window, timing), each in a fresh process, on the GPU CUDA_VISIBLE_DEVICES names.
Usage: python docs/h200x2/probe_runcell.py N backend:batch:seq,... [fork]
fork: each process imports torch, then forks a child that measures (as a sweep's forkserver does)."""
import json
import subprocess
import sys

CODE = """
import json, os, sys
import torch
from tasks.cell import run_cell
if sys.argv[2] == "fork" and os.fork():
    os.wait()
    sys.exit(0)
m = dict(warmup_iters=1, warmup_ms=25, budget_ms=100, min_iters=3, max_iters=1000, precision=0.005, flush_l2=True,
         duty=0.5, memory=True, accuracy=True, kernels="ops", method="auto")
out = []
for backend, b, s in json.loads(sys.argv[1]):
    row = run_cell({"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
                    "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "device": "cuda", "seed": 0,
                    "measure": m})
    out.append(f"{backend} b{b} s{s} {row['median_ms']:.4f}" if row["status"] == "ok" else row["status"])
print("  ".join(out))
"""
cells = [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in sys.argv[2].split(",")]
for i in range(int(sys.argv[1])):
    res = subprocess.run([sys.executable, "-c", CODE, json.dumps(cells), sys.argv[3] if len(sys.argv) > 3 else ""],
                         capture_output=True, text=True)
    print(f"process {i}: {res.stdout.strip() or res.stderr[-500:]}", flush=True)
