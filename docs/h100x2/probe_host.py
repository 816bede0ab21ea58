"""Why host_median_ms of a long cell reads far above its device time: each eager call of a few
long cells timed between CUDA events after an L2 flush (as the warm-up does), against graph
replays of the same call. Usage: python docs/h100x2/probe_host.py"""
import torch

from tasks.attention import build
from tasks.timing import Timer, capture

dev = torch.device("cuda", 0)
for backend, b, s in [("math", 1, 16384), ("math", 8, 8192), ("eager", 1, 8192), ("flash", 32, 16384), ("cudnn", 32, 8192)]:
    spec = {"workload": "attention", "backend": backend, "batch_size": b, "seq_len": s, "num_heads": 16, "head_dim": 128,
            "dtype": "bfloat16", "causal": True, "mode": "fwd", "measure": {}}
    try:
        work = build(spec, dev)
    except Exception as exc:
        print(backend, b, s, "build failed", type(exc).__name__)
        continue
    timer = Timer(dev, True)
    stream = torch.cuda.Stream(dev)
    with torch.inference_mode(), work.pinned():
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            eager = timer.batch(work.step, 1, wait_each=True) + timer.batch(work.step, 1, wait_each=True) \
                + timer.batch(work.step, 1, wait_each=True) + timer.batch(work.step, 1, wait_each=True) \
                + timer.batch(work.step, 1, wait_each=True) + timer.batch(work.step, 1, wait_each=True)
        torch.cuda.current_stream(dev).wait_stream(stream)
        queued = timer.batch(work.step, 4)  # eager, queued back to back (not waited for one by one)
        graph, out, note = capture(work.step, dev, stream)
        replays = timer.batch(graph.replay, 4) if graph is not None else []
    print(f"{backend:6} b{b:<3} s{s:<6} eager waited each: {' '.join(f'{x:8.2f}' for x in eager)} | "
          f"eager queued: {' '.join(f'{x:8.2f}' for x in queued)} | graph: {' '.join(f'{x:8.2f}' for x in replays)} {note or ''}")
    del work, graph, out, timer
    torch.cuda.empty_cache()
