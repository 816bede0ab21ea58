"""Why a reused cell process (run.cells_per_process=0) reports more reserved memory than a fresh one.

On 2 x H100 (5f9e681, inprocess_5f9e681.txt's datasets) 35 of 113 cells read a higher
`peak_reserved_bytes` and `nvml_process_peak_bytes` with one process per device than in a fresh
process (flash batch 32 seq 16384: 10.7 against 8.6 GB), with the same `peak_allocated_bytes`.
This runs cells one after another in one process as a reused cell process does (prepare,
measure, release with clear=True) and, right before each memory pass, lists the caching
allocator's segments that hold a live block besides the inputs, with the code that allocated it.
Usage (a GPU): python docs/h100x2/probe_reuse_memory.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from overhead import compose  # noqa: E402

import orchestrator.config  # noqa: E402,F401  (registers the schema)
from tasks import cell, timing  # noqa: E402

gpu = torch.cuda.is_available()
m = OmegaConf.to_container(compose([]).measure, resolve=True)
orig = timing.measure_memory


def where(frames) -> str:
    ours = [f for f in frames if "/tasks/" in f["filename"] or "/orchestrator/" in f["filename"]]
    return " < ".join(f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']} {f['name']}" for f in ours[:4]) or "?"


def listing(fn, device, nvml=None):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        snap = torch.cuda.memory._snapshot()
        for s in snap["segments"]:
            live = [b for b in s["blocks"] if b["state"] == "active_allocated"]
            print(f"  segment {s['total_size'] / 1e6:9.1f} MB ({s['segment_type']}), live "
                  f"{sum(b['size'] for b in live) / 1e6:9.1f} MB in {len(live)} block(s): "
                  + "; ".join(f"{b['size'] / 1e6:.1f} MB {where(b.get('frames', []))}" for b in live[:3]), flush=True)
    return orig(fn, device, nvml)


timing.measure_memory = listing


def spec(backend, b, n):
    return dict(workload="attention", backend=backend, mode="fwd", dtype="bfloat16" if gpu else "float32",
                causal=True, head_dim=128 if gpu else 16, num_heads=16 if gpu else 2, batch_size=b, seq_len=n,
                target="any", device="cuda" if gpu else "cpu", seed=0, measure=m)


def main() -> None:
    device, env = cell.start_device("cuda" if gpu else "cpu", ["bfloat16" if gpu else "float32"])
    if gpu:
        torch.cuda.memory._record_memory_history(max_entries=200000)
    cells = [("flash", 32, 4096), ("cudnn", 1, 16384), ("flash", 32, 4096), ("eager", 1, 128), ("cudnn", 1, 16384),
             ("flash", 32, 4096)]
    if not gpu:
        cells = [("flash", 1, 128), ("math", 1, 256), ("flash", 1, 128)]
    for i, (backend, b, n) in enumerate(cells):
        print(f"\n== cell {i}: {backend} batch {b} seq {n}", flush=True)
        s = spec(backend, b, n)
        prepared = cell.Prepared(s, device)
        cols = cell.measure(prepared, None)
        print(f"  -> peak_reserved {cols.get('peak_reserved_bytes', 0) / 1e6:.1f} MB, peak_allocated_total "
              f"{cols.get('peak_allocated_total_bytes', 0) / 1e6:.1f} MB, timing {cols.get('timing_method')}",
              flush=True)
        cell.release(prepared, clear=True, spec=s)


if __name__ == "__main__":
    main()
