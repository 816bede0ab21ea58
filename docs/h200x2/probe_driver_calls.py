"""Do a measuring cell's own driver calls slow down while other processes start on its GPU?

With the driver's start (``torch.cuda.init``) outside the GPU's lock (6419e09), sweeps of the
120 bf16 head-128 cells spent 5.6-7.0 s of their cells' ``measure_s`` outside every named part,
against 3.5 s before (``sweeps_context_turns.txt``): the flush buffer's allocation, the cache
emptied, the graph captured and freed. This probe times those calls in one process, round
after round, while this process forks k others that go through a start one phase at a time
(the driver's start, then the context), and puts each call with the phase it overlapped.
Usage: python docs/h200x2/probe_driver_calls.py   (needs a GPU; probe_driver_calls.txt)"""
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from probe_disturb import spec  # noqa: E402  (this script's folder is on sys.path)
from probe_lifecycle import beside_phases  # noqa: E402

import tasks.preload  # noqa: E402,F401  (what the fork server imports)

CALLS = ["flush_buffer", "empty_cache", "capture", "graph_reset"]
PHASES = ["init", "context", "exit"]


def measurer(w, seconds):
    from tasks import cell as cellrun
    from tasks import timing

    device, _ = cellrun.start_device("cuda", ["bfloat16"])
    p = cellrun.Prepared(spec("flash", 1, 256), device)
    warmed, out = timing.warm(p.work.step, device, timing.Protocol())
    del out
    os.write(w, b"r")
    records = []
    end = time.time() + seconds
    while time.time() < end:
        t = {}
        t0 = time.time()
        timer = timing.Timer(device, True)
        torch.cuda.synchronize(device)
        t["flush_buffer"] = time.time() - t0
        t1 = time.time()
        timer.close()
        torch.cuda.empty_cache()
        t["empty_cache"] = time.time() - t1
        t2 = time.time()
        graph, out, note = timing.capture(p.work.step, device, warmed[1])
        torch.cuda.synchronize(device)
        t["capture"] = time.time() - t2
        t3 = time.time()
        graph.reset()
        del graph, out
        t["graph_reset"] = time.time() - t3
        records.append((t0, time.time(), t))
        time.sleep(0.005)
    os.write(w, repr(records).encode())
    os.close(w)
    os._exit(0)


def starter(w, r):
    os.read(r, 1)
    t0 = time.time()
    torch.cuda.init()
    os.write(w, f"{t0} {time.time()}\n".encode())
    os.read(r, 1)
    t0 = time.time()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    os.write(w, f"{t0} {time.time()}\n".encode())
    os.read(r, 1)
    os._exit(0)


def run(k):
    records, spans = beside_phases(measurer, 5.0, starter, k, PHASES)
    by = {name: {c: [] for c in CALLS} for name in ["quiet", *PHASES]}
    for a, b, t in records:
        hit = [ph for ph, (s, e) in spans.items() if a < e and s < b]
        for c in CALLS:
            by[hit[0] if hit else "quiet"][c].append(t[c] * 1e3)
    line = f"{k} starting:"
    for name in ["quiet", *PHASES]:
        v = by[name]
        if v[CALLS[0]]:
            line += f" | {name} ({len(v[CALLS[0]])} rounds) " + " ".join(
                f"{c} {statistics.median(v[c]):.2f}/{max(v[c]):.2f}" for c in CALLS)
    print(line + "   (ms, median/worst)", flush=True)


if __name__ == "__main__":
    for k in (1, 2, 4):
        run(k)
