"""How finely do CUDA events time an 11 us graph replay? Unique sample values and counts."""
import collections, statistics, torch
from tasks import attention, timing
dev = torch.device("cuda", 0)
for be, seq in (("efficient", 128), ("flash", 128), ("cudnn", 128), ("flash", 1024)):
    spec = {"workload": "attention", "backend": be, "mode": "fwd", "dtype": "bfloat16", "causal": True, "head_dim": 128,
            "num_heads": 16, "batch_size": 1, "seq_len": seq, "seed": 0}
    work = attention.build(spec, dev)
    with torch.inference_mode(), work.pinned():
        p = timing.Protocol()
        warmed, out = timing.warm(work.step, dev, p)
        timer = timing.Timer(dev, True)
        graph, out, note = timing.capture(work.step, dev, warmed[1])
        for rep in range(3):
            ms = timer.batch(graph.replay, 400)
            c = collections.Counter(round(x * 1e6) for x in ms)  # ns
            top = sorted(c.items(), key=lambda kv: -kv[1])[:8]
            print(be, seq, rep, "median", round(statistics.median(ms) * 1e3, 3), "us; mean", round(statistics.fmean(ms) * 1e3, 3),
                  "; values ns:count", top, "distinct", len(c))
