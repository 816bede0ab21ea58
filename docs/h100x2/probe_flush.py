"""Why do 11-17 us graph replays differ by 3-4% between processes and not within one?
Each of N fresh processes (one after the other, nothing else on the GPU) times the same small
cells as the sweep does (a CUDA graph of the call, replays between events, the L2 flushed before
each), with several ways to flush and on several copies of the inputs (other addresses):
  zero       buf.zero_() of 256 MB (the sweep's flush, as triton's do_bench): the L2 is left
             full of the buffer's dirty lines, which the timed call's misses must write back
  read       a read of 256 MB (a sum): the L2 is left holding clean lines
  zero+read  the sweep's flush, then a read of another 64 MB: clean lines at the end
  zero_rot4  the sweep's flush over four 256 MB buffers in turn (four placements of it)
  none       no flush (a control: the inputs stay in the L2)
If one way repeats across processes where the sweep's does not, the flush decides; if the copies
of the inputs move the median as much as a new process does, where the inputs lie decides, and a
median over several copies repeats better.
Usage: python docs/probe_flush.py [N] [--gpu G] [--replays R]
Prints, per cell and way: each process's median (first copy of the inputs), the spread of those
over processes, the spread of the mean over copies, and the spread between copies within a process."""
import argparse
import json
import os
import statistics
import subprocess
import sys

CELLS = [("efficient", 1, 128), ("cudnn", 1, 128), ("flash", 1, 128), ("flash", 1, 256), ("efficient", 1, 256),
         ("cudnn", 8, 256), ("flash", 1, 1024)]
WAYS = ["zero", "read", "zero+read", "zero_rot4", "none"]
COPIES = 3

CHILD = r"""
import json, statistics, sys, torch
from tasks import attention, timing
gpu, replays = int(sys.argv[1]), int(sys.argv[2])
dev = torch.device("cuda", gpu)
torch.cuda.set_device(dev)
bufs = [torch.empty(256 << 20, dtype=torch.uint8, device=dev) for _ in range(4)]
extra = torch.empty(64 << 20, dtype=torch.uint8, device=dev)
i32 = [b.view(torch.int32) for b in bufs]
x32 = extra.view(torch.int32)
turn = [0]
def rot():
    turn[0] = (turn[0] + 1) % 4
    bufs[turn[0]].zero_()
flush = {"zero": lambda: bufs[0].zero_(), "read": lambda: i32[1].sum(), "zero+read": lambda: (bufs[0].zero_(), x32.sum()),
         "zero_rot4": rot, "none": lambda: None}
ways, cells, copies = json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
for backend, b, s in cells:
    spec = {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "seed": 0}
    work = attention.build(spec, dev)
    with torch.inference_mode(), work.pinned():
        warmed, out = timing.warm(work.step, dev, timing.Protocol())
        stream = warmed[1]
        graphs = []
        steps = [work.step] + [work.again() for _ in range(copies - 1)]
        for st in steps:
            timing.on_stream(stream, dev, st)
            torch.cuda.synchronize(dev)
            g, _, note = timing.capture(st, dev, stream)
            assert g is not None, note
            graphs.append(g)
        ms = {(w, c): [] for w in ways for c in range(copies)}
        for rnd in range(3):  # rounds, each way and copy in turn, so that a drift touches all alike
            for w in ways:
                for c, g in enumerate(graphs):
                    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
                    for a, z in ev:
                        flush[w]()
                        a.record(); g.replay(); z.record()
                    torch.cuda.synchronize(dev)
                    ms[(w, c)] += [a.elapsed_time(z) for a, z in ev]
        for (w, c), v in ms.items():
            print(json.dumps({"cell": f"{backend} b{b} s{s}", "way": w, "copy": c, "median": statistics.median(v),
                              "mean": statistics.fmean(v), "n": len(v)}), flush=True)
        for g in graphs:
            g.reset()
"""


def spread(v):
    return (max(v) - min(v)) / min(v) * 100


def args():
    """The probes' command line: N processes, the GPU, replays per batch."""
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=8)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--replays", type=int, default=150)
    return ap.parse_args()


def children(n: int, code: str, *argv) -> list[tuple[int, dict]]:
    """code in n fresh processes, one after another: the JSON lines each printed, as (process, record);
    the first one that fails ends the probe with its stderr."""
    res = []
    for proc in range(n):
        out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                             env=os.environ | {"PYTHONPATH": os.getcwd()})
        if out.returncode:
            print(out.stderr[-3000:])
            sys.exit(1)
        res += [(proc, json.loads(line)) for line in out.stdout.splitlines() if line.startswith("{")]
        print(f"process {proc} done", file=sys.stderr, flush=True)
    return res


def per_process(res, cell: str, way: str) -> dict[int, dict[int, float]]:
    """{process: {copy: median in us}} of one cell timed one way."""
    per = {}
    for proc, r in res:
        if r["cell"] == cell and r["way"] == way:
            per.setdefault(proc, {})[r["copy"]] = r["median"] * 1e3
    return per


def main():
    a = args()
    res = children(a.n, CHILD, a.gpu, a.replays, json.dumps(WAYS), json.dumps(CELLS), COPIES)
    print(f"# {a.n} processes on GPU {a.gpu}, {3 * a.replays} replays per way and copy; medians in us")
    print(f"{'cell':18s} {'way':10s} {'first copy, each process':>60s}  over processes: first copy / mean of {COPIES} copies;"
          " within a process: copies (median)")
    for backend, b, s in CELLS:
        cell = f"{backend} b{b} s{s}"
        for w in WAYS:
            per = per_process(res, cell, w)
            first = [per[p][0] for p in sorted(per)]
            means = [statistics.fmean(per[p].values()) for p in sorted(per)]
            within = statistics.median(spread(list(per[p].values())) for p in per)
            print(f"{cell:18s} {w:10s} {' '.join(f'{x:6.2f}' for x in first):>60s}  {spread(first):5.2f}% / {spread(means):5.2f}%;"
                  f" {within:5.2f}%")


if __name__ == "__main__":
    main()
