"""What a cell process's start and end cost on this GPU, as the sweep's fork server makes them:
children forked from a parent that has imported torch (no CUDA), k at a time.

Per child: the CUDA context (``torch.cuda.init`` and a first tensor), cuBLAS in bf16 and fp32;
then, told to leave, from ``os._exit`` to the parent reaping it (the driver tears the context
down as the process's files close) and to NVML no longer listing it with the device's used
memory steady (what ``tasks.device.wait_released`` waits for).
Usage: python docs/h200x2/probe_lifecycle.py   (needs a GPU)"""
import os
import statistics
import sys
import time

import pynvml
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def child(w: int, r: int) -> None:
    t0 = time.perf_counter()
    torch.cuda.init()
    torch.empty(1, device="cuda")
    t1 = time.perf_counter()
    for dt in (torch.bfloat16, torch.float32):
        a = torch.ones(16, 16, device="cuda", dtype=dt)
        a @ a
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # a cell's inputs and outputs, then freed
    del x
    torch.cuda.empty_cache()
    os.write(w, f"{t1 - t0:.4f} {t2 - t1:.4f}\n".encode())
    os.read(r, 1)
    os._exit(0)


def fork_piped(target) -> tuple[int, int, int]:
    """A forked child running ``target(to_parent, from_parent)`` (pipe ends, raw descriptors);
    returns (pid, the parent's read end, the parent's write end). ``target`` must not return."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        target(w1, r2)
    return pid, r1, w2


def drive_phases(kids, phases, pause_s: float = 0.6) -> dict:
    """Tell children made by ``fork_piped`` to go through `phases` together, one byte each; a
    child answers each phase but "exit" with "start end" (wall-clock seconds) and leaves at
    "exit". Returns {phase: (first start, last end)}."""
    spans = {}
    for phase in phases:
        t0 = time.time()
        for _, _, w2 in kids:
            os.write(w2, b"g")
        if phase == "exit":
            for pid, _, _ in kids:
                os.waitpid(pid, 0)
            spans[phase] = (t0, time.time() + 0.02)  # the driver frees the memory a moment later
        else:
            got = [os.read(r1, 200).decode().split() for _, r1, _ in kids]
            spans[phase] = (min(float(g[0]) for g in got), max(float(g[1]) for g in got))
        time.sleep(pause_s)
    return spans


def beside_phases(measure, seconds: float, disturb, k: int, phases) -> tuple[list, dict]:
    """Fork ``measure(w, seconds)``, which writes b"r" once ready, then the repr of a list of
    records, and leaves; once it is ready, fork k children running ``disturb`` (see
    ``fork_piped``) and drive them through `phases` (``drive_phases``). Returns (the records,
    {phase: (first start, last end)})."""
    tr, tw = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(tr)
        measure(tw, seconds)
    os.close(tw)
    assert os.read(tr, 1) == b"r"
    kids = [fork_piped(disturb) for _ in range(k)]
    time.sleep(0.8)
    spans = drive_phases(kids, phases)
    data = b""
    while chunk := os.read(tr, 1 << 20):
        data += chunk
    os.waitpid(pid, 0)
    return eval(data.decode()), spans  # noqa: S307 - our own child's repr of numbers and dicts


def main() -> None:
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]))

    def procs():
        return {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)}

    print(f"{'k at once':>9} {'context s':>10} {'blas s':>8} {'wall of k starts':>17} {'exit->reaped s':>15} "
          f"{'exit->released s':>17}")
    for k in (1, 1, 1, 2, 4, 8):
        kids = []
        t0 = time.perf_counter()
        for _ in range(k):
            kids.append(fork_piped(child))
        got = [os.read(r1, 100).decode().split() for _, r1, _ in kids]
        wall = time.perf_counter() - t0
        ctx = statistics.median(float(g[0]) for g in got)
        blas = statistics.median(float(g[1]) for g in got)
        reaped, released = [], []
        for pid, _, w2 in kids:  # one at a time, as cells end
            t = time.perf_counter()
            os.write(w2, b"x")
            os.waitpid(pid, 0)
            reaped.append(time.perf_counter() - t)
            last = None
            while True:
                used = pynvml.nvmlDeviceGetMemoryInfo(h).used
                if pid not in procs() and last is not None and abs(used - last) < (4 << 20):
                    break
                last = used
                time.sleep(0.005)
            released.append(time.perf_counter() - t)
        print(f"{k:>9} {ctx:>10.3f} {blas:>8.3f} {wall:>17.3f} {statistics.median(reaped):>15.3f} "
              f"{statistics.median(released):>17.3f}", flush=True)


if __name__ == "__main__":
    import tasks.preload  # noqa: F401  (what the fork server imports)

    main()
