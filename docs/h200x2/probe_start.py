"""Where a cell process's start goes, step by step: the steps of ``tasks.cell.start_device``,
split finer, in children forked as the fork server forks them (the parent has imported
``tasks.preload``, no CUDA), k at a time with no lock between them.

In sweeps on one H200 a child's start steps took 0.92 s of its own time on average (its
waits for quiet windows left out) and held the GPU's lock for about 0.46 s of every cell's
0.65 s: the start, not the measuring, paces a sweep of small cells. Which steps are host work
(NVML, Python, the driver's bookkeeping) and which are the driver's serialized GPU work?
Usage: python docs/h200x2/probe_start.py   (needs a GPU; probe_start.txt)"""
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from probe_lifecycle import fork_piped  # noqa: E402  (this script's folder is on sys.path)

import tasks.preload  # noqa: E402,F401  (what the fork server imports)

STEPS = ["nvml_init", "cuda_init", "context", "environment", "blas_bf16", "blas_fp32", "acc_bf16_causal",
         "acc_bf16_full", "acc_fp32_causal", "acc_fp32_full", "empty_cache", "context_bytes", "again_bf16"]


def child(w: int, r: int) -> None:
    import pynvml

    from tasks.attention import reference, rel_error
    from tasks.device import Nvml, environment, nvml_handle

    dev = torch.device("cuda", 0)
    env = {}

    def blas(dt):
        a = torch.ones(16, 16, device=dev, dtype=dt)
        a @ a

    def acc(dt, causal):
        q = torch.ones(1, 2, 16, 16, device=dev, dtype=dt)
        rel_error(q, reference(q, q, q, causal))

    work = {
        "nvml_init": pynvml.nvmlInit,
        "cuda_init": torch.cuda.init,
        "context": lambda: torch.empty(1, device=dev),
        "environment": lambda: env.update(environment(dev)),
        "blas_bf16": lambda: blas(torch.bfloat16),
        "blas_fp32": lambda: blas(torch.float32),
        "acc_bf16_causal": lambda: acc(torch.bfloat16, True),
        "acc_bf16_full": lambda: acc(torch.bfloat16, False),
        "acc_fp32_causal": lambda: acc(torch.float32, True),
        "acc_fp32_full": lambda: acc(torch.float32, False),
        "empty_cache": torch.cuda.empty_cache,
        "context_bytes": lambda: Nvml(nvml_handle(env["gpu_uuid"])).process_used(),
        "again_bf16": lambda: acc(torch.bfloat16, True),  # a warm step, for scale
    }
    times = []
    os.read(r, 1)  # all k go at once
    for name in STEPS:
        t0 = time.perf_counter()
        work[name]()
        if name not in ("nvml_init", "cuda_init"):  # a sync would create the context
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    os.write(w, (" ".join(f"{t:.4f}" for t in times) + f" {os.environ.get('CUDA_MODULE_LOADING')}\n").encode())
    os.read(r, 1)
    os._exit(0)


def main() -> None:
    print(f"seconds per step, median over the k children started at once; CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES')}")
    print(f"{'k':>2} " + " ".join(f"{s:>15}" for s in STEPS) + f" {'sum':>7} {'wall':>6}")
    for k in (1, 1, 1, 2, 2, 4):
        kids = [fork_piped(child) for _ in range(k)]
        time.sleep(0.3)
        t0 = time.perf_counter()
        for _, _, w2 in kids:
            os.write(w2, b"g")
        got = [os.read(r1, 1000).decode().split() for _, r1, _ in kids]
        wall = time.perf_counter() - t0
        for pid, _, w2 in kids:
            os.write(w2, b"x")
            os.waitpid(pid, 0)
        per = [statistics.median(float(g[i]) for g in got) for i in range(len(STEPS))]
        print(f"{k:>2} " + " ".join(f"{t:>15.4f}" for t in per) + f" {sum(per):>7.3f} {wall:>6.3f}"
              f"  (CUDA_MODULE_LOADING={got[0][-1]})", flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
