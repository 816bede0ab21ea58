"""What decides a cell's speed in one process and not in another? Each of N fresh processes,
one after the other with nothing else on the GPU, measures the same cells with the sweep's
own code (start_device, Prepared, warm, timed, the clock sampler) four times:
  r0  the cell as a sweep measures it;
  r1  the same inputs again (a new graph);
  r2  new inputs, after a dummy allocation that moves them to other addresses;
  r3  the same, another shift.
Before them, three accuracy checks (each with its own call), timed. Then the GPU kernels each
cell ran (torch.profiler). If r0-r3 agree within a process and the
processes differ, the state is the process's; if r2/r3 move, it is where the inputs lie.
Usage: python docs/h200x2/probe_process.py [N] [backend:batch:seq,...]   (a cell may repeat)
PROBE_MEMORY=1: the sweep's memory pass before each timing, as in a cell's quiet window.
PROBE_PRELOAD=1: first import tasks.preload, as a sweep's forkserver does."""
import json
import subprocess
import sys

CELLS = [("cudnn", 8, 8192), ("cudnn", 32, 4096), ("flash", 8, 8192), ("math", 1, 256), ("math", 1, 512)]
CODE = r"""
import json, os, sys, time, torch
from tasks import timing
from tasks.cell import Prepared, release, start_device
from tasks.device import ClockSampler, Nvml, nvml_handle
from tasks.kernels import _gpu_kernels
proc = int(sys.argv[2])
if os.environ.get("PROBE_PRELOAD"):  # what a sweep's forkserver imports and runs before forking a cell
    import tasks.preload
device, env = start_device("cuda", ["bfloat16"])
nvml = Nvml(nvml_handle(env["gpu_uuid"]))
m = dict(warmup_iters=1, warmup_ms=25, budget_ms=300, min_iters=3, max_iters=1000, precision=0.002, flush_l2=True,
         memory=False, accuracy=False, kernels="off", method="auto")
protocol = timing.Protocol.of(m)
out = {}
for backend, b, s in json.loads(sys.argv[1]):
    spec = {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "device": "cuda", "seed": 0, "measure": m}
    rounds, pad = [], None
    p = Prepared(spec, device)
    checks = []
    for _ in range(3):  # the accuracy check's cost, first call and after
        t0 = time.perf_counter()
        p.work.check(None)
        checks.append(round(time.perf_counter() - t0, 4))
    for r in range(4):
        if r >= 2:
            release(p)
            pad = None
            pad = torch.empty(((proc * 7 + r * 13) % 31 + 1) << 20, dtype=torch.uint8, device=device)
            p = Prepared(spec, device)
        warmed, o = timing.warm(p.work.step, device, protocol)
        del o
        if os.environ.get("PROBE_MEMORY"):  # the sweep's memory pass right before, as in its quiet window
            timing.measure_memory(p.work.step, device, nvml)
        clock = ClockSampler(nvml.handle)
        t = timing.timed(p.work.step, device, protocol, warmed, clock) | clock.cols()
        rounds.append({k: t.get(k) for k in ("median_ms", "p10_ms", "p90_ms", "iters", "sm_clock_mhz", "clock_limits")})
    names = " | ".join(_gpu_kernels(p.work.step, device))  # pinned by Prepared
    release(p)
    name = f"{backend} b{b} s{s}"
    out[name + "'" * sum(k.startswith(name) for k in out)] = {"rounds": rounds, "kernels": names, "checks": checks}
print("RESULT " + json.dumps(out))
"""
n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
if len(sys.argv) > 2:
    CELLS = [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in sys.argv[2].split(",")]
kernels = {}
for i in range(n):
    res = subprocess.run([sys.executable, "-c", CODE, json.dumps(CELLS), str(i)], capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        print(f"process {i} failed: {res.stderr[-800:]}", flush=True)
        continue
    got = json.loads(line[0][7:])
    for cell, d in got.items():
        meds = "  ".join(f"r{j} {r['median_ms']:.4f} [{r['p10_ms']:.4f}-{r['p90_ms']:.4f}] n={r['iters']} "
                         f"{r['sm_clock_mhz'] or 0:.0f}MHz{'(' + r['clock_limits'] + ')' if r['clock_limits'] else ''}"
                         for j, r in enumerate(d["rounds"]))
        print(f"process {i}  {cell:18} {meds}  check s {d['checks']}", flush=True)
        kernels.setdefault(cell, {}).setdefault(d["kernels"], []).append(i)
print("\nGPU kernels per cell (which processes ran each set):")
for cell, sets in kernels.items():
    for names, procs in sets.items():
        print(f"  {cell:18} processes {procs}: {names[:1500]}")
