"""After probe_flush.py: no way of flushing the L2 made 11-17 us replays repeat across processes,
and three copies of the inputs helped little. Two more candidates, in N fresh processes:
  copies   the mean over copies of the inputs: 3 made one after the other (``again()``, the
           sweep's input sets) against 4 spread over memory (each after a spacer of 8-200 MB, at a
           random offset in a segment of its own)
  prime    after the flush, one untimed replay of the call on another copy of its inputs, then the
           timed replay: the timed call's data come from memory as before, but its code, the
           constants and the page-table entries its kernels need are in the caches. Where a
           process's own state (the kernels' code lies where the process loaded it) sets the
           cold call's time, priming removes it.
Usage: python docs/h100x2/probe_prime.py [N] [--gpu G] [--replays R]"""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from probe_flush import args, children, per_process, spread  # noqa: E402

CELLS = [("efficient", 1, 128), ("cudnn", 1, 128), ("flash", 1, 128), ("flash", 1, 256), ("efficient", 1, 256),
         ("cudnn", 8, 256), ("flash", 1, 1024)]
WAYS = ["zero", "prime"]
ADJ, SPREAD = 4, 4  # the first copy is the cell's own inputs, the first of the adjacent ones

CHILD = r"""
import json, random, statistics, sys, torch
from tasks import attention, backends, timing
gpu, replays, cells, adj, spread = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dev = torch.device("cuda", gpu)
torch.cuda.set_device(dev)
rng = random.Random()
buf = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
keep = []
def spread_copy(q, k, v, backend):
    keep.append(torch.empty(rng.randint(8, 200) << 20, dtype=torch.uint8, device=dev))
    n = q.numel()
    off = rng.randint(0, 1023) * 128  # elements: 256 B steps
    seg = torch.empty(off + 3 * n + (24 << 20) // q.element_size(), dtype=q.dtype, device=dev)  # > 20 MB: a segment of its own
    keep.append(seg)
    c = [seg[off + i * n: off + (i + 1) * n].view_as(q).copy_(t) for i, t in enumerate((q, k, v))]
    return backends.get(backend).fn(*c, True)
for backend, b, s in cells:
    spec = {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "seed": 0}
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, 16, s, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    work = attention.build(spec, dev)
    with torch.inference_mode(), work.pinned():
        warmed, out = timing.warm(work.step, dev, timing.Protocol())
        stream = warmed[1]
        steps = [work.step] + [work.again() for _ in range(adj - 1)] + [spread_copy(q, k, v, backend) for _ in range(spread)]
        primer = work.again()
        graphs = []
        for st in steps + [primer]:
            timing.on_stream(stream, dev, st)
            torch.cuda.synchronize(dev)
            g, _, note = timing.capture(st, dev, stream)
            assert g is not None, note
            graphs.append(g)
        pg = graphs.pop()
        ms = {("zero", c): [] for c in range(len(graphs))} | {("prime", c): [] for c in range(len(graphs))}
        for rnd in range(3):
            for w in ("zero", "prime"):
                for c, g in enumerate(graphs):
                    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
                    for a, z in ev:
                        buf.zero_()
                        if w == "prime":
                            pg.replay()
                        a.record(); g.replay(); z.record()
                    torch.cuda.synchronize(dev)
                    ms[(w, c)] += [a.elapsed_time(z) for a, z in ev]
        for (w, c), v in ms.items():
            print(json.dumps({"cell": f"{backend} b{b} s{s}", "way": w, "copy": c, "median": statistics.median(v)}), flush=True)
        for g in graphs + [pg]:
            g.reset()
    keep.clear()
"""


def main():
    a = args()
    res = children(a.n, CHILD, a.gpu, a.replays, json.dumps(CELLS), ADJ, SPREAD)
    print(f"# {a.n} processes on GPU {a.gpu}, {3 * a.replays} replays per way and copy; medians in us")
    print(f"# spread over processes of: the first copy | the mean of {ADJ} adjacent copies | the mean of {SPREAD} spread"
          f" copies | the mean of all {ADJ + SPREAD}; then the median spread between copies within a process")
    for backend, b, s in CELLS:
        cell = f"{backend} b{b} s{s}"
        for w in WAYS:
            per = per_process(res, cell, w)
            procs = sorted(per)
            first = [per[p][0] for p in procs]
            adj = [statistics.fmean(per[p][c] for c in range(ADJ)) for p in procs]
            spr = [statistics.fmean(per[p][c] for c in range(ADJ, ADJ + SPREAD)) for p in procs]
            both = [statistics.fmean(per[p].values()) for p in procs]
            within = statistics.median(spread(list(per[p].values())) for p in procs)
            print(f"{cell:18s} {w:6s} {' '.join(f'{x:6.2f}' for x in first)} | first {spread(first):5.2f}%  adjacent"
                  f" {spread(adj):5.2f}%  spread {spread(spr):5.2f}%  all {spread(both):5.2f}% | within {within:5.2f}%")


if __name__ == "__main__":
    main()
