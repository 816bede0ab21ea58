"""Where the time of a reused cell process goes (run.cells_per_process=0), step by step.

In the first sweeps with one process per device (0c96c88, inprocess_reuse.txt), the first cell
of each process spent 3-4.7 s of its measure_s outside every measured part (warm-up, checks,
memory pass, timing), later cells 0.05-0.8 s. This runs the runner as a sweep does, in a fork
server whose preload wraps the steps between those parts (the cell's release, NVML, the retry
of a prepare that ran out of memory, the waits) and prints each step's seconds to stderr, then
the rows' parts. Usage: PYTHONPATH=docs/h200x2:. python docs/h200x2/probe_reuse.py  (a GPU)
"""
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if __name__ != "__main__":  # imported by the fork server: wrap the steps, print their seconds
    import gc

    import torch

    from orchestrator import isolation
    from tasks import cell, device

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                print(f"STEP pid {os.getpid()} {name} {time.perf_counter() - t0:.4f}", file=sys.stderr, flush=True)
        return wrapper

    cell.release = timed("release", cell.release)
    cell.Prepared = type("Prepared", (cell.Prepared,), {"__init__": timed("prepare", cell.Prepared.__init__)})
    cell.measure = timed("measure", cell.measure)
    device.wait_gone = timed("wait_gone", device.wait_gone)
    device.wait_released = timed("wait_released", device.wait_released)
    device.Nvml.__init__ = timed("nvml", device.Nvml.__init__)
    gc.collect = timed("gc_collect", gc.collect)
    torch.cuda.empty_cache = timed("empty_cache", torch.cuda.empty_cache)
    if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
        torch._C._cuda_clearCublasWorkspaces = timed("clear_cublas", torch._C._cuda_clearCublasWorkspaces)
    isolation._measure = timed("_measure", isolation._measure)


def main() -> None:
    import torch

    from orchestrator import forkserver
    from orchestrator.isolation import ForkRunner

    m = dict(warmup_iters=1, warmup_ms=25.0, budget_ms=100.0, min_iters=3, max_iters=1000, precision=0.005,
             flush_l2=True, duty=0.5, method="auto", memory=True, accuracy=True, kernels="ops", seed=0)

    gpu = torch.cuda.is_available()  # on a CPU only a check that the probe runs

    def spec(backend, b, n):
        return dict(workload="attention", backend=backend, mode="fwd", dtype="bfloat16" if gpu else "float32",
                    causal=True, head_dim=128 if gpu else 16, num_heads=16 if gpu else 2, batch_size=b, seq_len=n,
                    target="any", device="cuda" if gpu else "cpu", seed=0, measure=m)

    cells = [("eager", 8, 16384), ("math", 8, 16384), ("eager", 32, 8192), ("flash", 1, 128), ("eager", 8, 16384)]
    if not gpu:
        cells = [("eager", 1, 256), ("fault_raise", 1, 64), ("math", 1, 512), ("flash", 1, 128)]
    log = os.environ.get("LOG", "/tmp/probe_reuse_cells.log")
    address, proc = forkserver.start(preload=["tasks.preload", "probe_reuse"], log=log)
    print(f"{torch.cuda.get_device_name(0) if gpu else 'CPU'}; fork server log {log}", flush=True)
    try:
        for per in (0, 1):
            runner = ForkRunner(address, "cuda" if gpu else "cpu", os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
                                ["bfloat16" if gpu else "float32"],
                                prewarm=2, cells_per_process=per)
            t0 = time.perf_counter()
            print(f"\n== cells_per_process={per}; probe {runner.probe().get('ceilings', {}).get('seconds')} s "
                  f"({time.perf_counter() - t0:.2f} s)", flush=True)
            print(f"STEP mark cells_per_process={per}", file=open(log, "a"), flush=True)
            for b, bs, n in cells:
                t = time.perf_counter()
                r = runner.run(spec(b, bs, n), 120)
                parts = {k: r.get(k) for k in ("process_cell", "pid", "status", "setup_s", "measure_s", "warmup_s",
                                               "accuracy_s", "kernels_s", "memory_s", "timing_s", "previous_wait_s",
                                               "cell_wall_s", "startup_s")}
                print(f"{b} b{bs} s{n}: {time.perf_counter() - t:.2f} s "
                      + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in parts.items()),
                      flush=True)
            runner.close()
    finally:
        forkserver.stop(address, proc)
    print("\nsteps (from the cell processes):")
    print("".join(line for line in open(log) if line.startswith("STEP")))


if __name__ == "__main__":
    main()
