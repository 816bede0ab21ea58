"""Does another process's start (or end) on the same GPU move a cell's timed replays, with the
timing paced as a sweep paces it? The question behind the lock that keeps cell starts out of
quiet windows (``tasks.device.gpu_quiet``): it was measured with timing back to back, when the
power cap also moved long kernels.

One process times a cell as a sweep does (its graph replayed, L2 flushed before each, stretches
of 20 ms with 20 ms rests) for a few seconds. Meanwhile this process forks k children, as the
fork server does, and has them go through a cell process's start one phase at a time, with
pauses between: the CUDA context, cuBLAS in bf16 and fp32, the accuracy check's kernels; then
they exit (context teardown). Each stretch of replays is put with the phase it overlapped.
Usage: python docs/h200x2/probe_disturb.py          (needs a GPU; probe_disturb.txt)
       python docs/h200x2/probe_disturb.py --long   long cells (3-50 ms, a call or two per stretch),
           the driver's init apart from the context, and per call: the worst call and the share
           of calls over +2% in each phase (the median over a stretch hid what sweeps saw)"""
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from probe_lifecycle import beside_phases  # noqa: E402  (this script's folder is on sys.path)

import tasks.preload  # noqa: E402,F401  (what the fork server imports)

LONG = "--long" in sys.argv
CELLS = [("efficient", 8, 16384), ("eager", 8, 4096), ("cudnn", 32, 4096)] if LONG else \
    [("cudnn", 8, 4096), ("flash", 1, 1024), ("math", 1, 256)]
PHASES = ["init", "context", "blas", "accuracy", "exit"] if LONG else ["context", "blas", "accuracy", "exit"]


def spec(backend, b, s):
    import dataclasses

    from orchestrator.config import MeasureConfig

    return {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "target": "cuda", "device": "cuda",
            "seed": 0, "measure": dataclasses.asdict(MeasureConfig())}


def timer_main(cell, w, seconds):
    from tasks import cell as cellrun
    from tasks import timing

    device, _ = cellrun.start_device("cuda", ["bfloat16"])
    p = cellrun.Prepared(spec(*cell), device)
    warmed, out = timing.warm(p.work.step, device, timing.Protocol())
    del out
    graph, out, note = timing.capture(p.work.step, device, warmed[1])
    assert graph is not None, note
    timer = timing.Timer(device, True)
    per = statistics.median(timer.batch(graph.replay, 20)) / 1e3
    n = max(1, int(0.02 / max(per, 1e-6)))
    os.write(w, b"r")
    stretches = []
    end = time.time() + seconds
    last = 0.02
    while time.time() < end:
        time.sleep(last if LONG else 0.02)  # long calls: rest as long as the stretch, as a sweep's half duty
        t0 = time.time()
        ms = timer.batch(graph.replay, n)
        stretches.append((t0, time.time(), ms))
        last = time.time() - t0
    os.write(w, repr(stretches).encode())
    os.close(w)
    os._exit(0)


def disturber(w, r):
    dev = torch.device("cuda", 0)
    from tasks.attention import reference, rel_error

    def init():
        torch.cuda.init()

    def ctx():
        torch.cuda.init()
        torch.empty(1, device=dev)

    def blas():
        for dt in (torch.bfloat16, torch.float32):
            a = torch.ones(16, 16, device=dev, dtype=dt)
            a @ a

    def acc():
        for dt in (torch.bfloat16, torch.float32):
            q = torch.ones(1, 2, 16, 16, device=dev, dtype=dt)
            for causal in (True, False):
                rel_error(q, reference(q, q, q, causal))

    for work in ((init,) if LONG else ()) + (ctx, blas, acc):
        os.read(r, 1)
        t0 = time.time()
        work()
        if work is not init:  # a sync would create the context
            torch.cuda.synchronize()
        os.write(w, f"{t0} {time.time()}\n".encode())
    os.read(r, 1)
    os._exit(0)


def run(cell, k):
    stretches, spans = beside_phases(lambda w, seconds: timer_main(cell, w, seconds), 7.5 if LONG else 6.0,
                                     disturber, k, PHASES)
    rows = {name: [] for name in ["quiet", *PHASES]}
    calls = {name: [] for name in ["quiet", *PHASES]}
    for a, b, ms in stretches:
        hit = [ph for ph, (s, e) in spans.items() if a < e and s < b]
        rows[hit[0] if hit else "quiet"].append(statistics.median(ms))
        calls[hit[0] if hit else "quiet"] += ms
    base = statistics.median(rows["quiet"])
    if LONG:
        base = statistics.median(calls["quiet"])
        line = f"{cell[0]} b{cell[1]} s{cell[2]}, {k} starting: quiet {base:.4f} ms ({len(calls['quiet'])} calls)"
        for ph in PHASES:
            v = calls[ph]
            if v:
                over = sum(x > base * 1.02 for x in v)
                line += (f" | {ph} {spans[ph][1] - spans[ph][0]:.2f} s: {len(v)} calls, worst "
                         f"{100 * (max(v) / base - 1):+.1f}%, {over} over +2%")
        print(line, flush=True)
        return
    name = f"{cell[0]} b{cell[1]} s{cell[2]}, {k} starting"
    line = f"{name:28} quiet {base:.4f} ms ({len(rows['quiet'])} stretches)"
    for ph in PHASES:
        v = rows[ph]
        if v:
            worst = max(v, key=lambda x: abs(x / base - 1))
            line += f" | {ph} {spans[ph][1] - spans[ph][0]:.2f} s: {len(v)} str, worst {100 * (worst / base - 1):+.1f}%"
    print(line, flush=True)


if __name__ == "__main__":
    for cell in CELLS:
        for k in (1, 4):
            run(cell, k)
