"""Does cuDNN's attention time repeat across fresh processes, with nothing else on the GPU?
Each of N processes measures the same cudnn cells with the sweep's own cell code (run_cell,
default measure settings) and prints their medians. Usage: python docs/h200x2/probe_cudnn.py [N]"""
import json
import subprocess
import sys

CELLS = [(8, 8192), (8, 16384), (32, 4096)]
CODE = """
import json, sys
from tasks.cell import run_cell
m = dict(warmup_iters=1, warmup_ms=25, budget_ms=100, min_iters=3, max_iters=1000, precision=0.005, flush_l2=True,
         memory=True, accuracy=True, kernels="ops", method="auto")
out = []
for b, s in json.loads(sys.argv[1]):
    row = run_cell({"workload": "attention", "backend": "cudnn", "mode": "fwd", "dtype": "bfloat16", "causal": True,
                    "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "device": "cuda", "seed": 0,
                    "measure": m})
    out.append((row["status"], row.get("median_ms"), row.get("iters"), row.get("kernels")))
print(json.dumps(out))
"""
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    res = subprocess.run([sys.executable, "-c", CODE, json.dumps(CELLS)], capture_output=True, text=True)
    rows = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else res.stderr[-500:]
    print(f"process {i}: " + "  ".join(f"b{b} s{s}: {r[1]:.3f} ms ({r[2]} calls)" for (b, s), r in zip(CELLS, rows))
          if isinstance(rows, list) else rows, flush=True)
print("kernels:", rows[0][3] if isinstance(rows, list) else "")
