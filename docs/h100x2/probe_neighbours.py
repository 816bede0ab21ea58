"""GPU probe 2: per-process init breakdown (host vs GPU) and whether a neighbour process disturbs graph timing."""
import os, sys, time, json, multiprocessing as mp, statistics as st, ctypes
sys.path.insert(0, os.getcwd())
OUT = os.environ.get("OUT", "/tmp")
T0 = time.perf_counter()
def log(*a): print(f"[{time.perf_counter()-T0:7.2f}]", *a, flush=True)

def steps(conn, which):
    """Fresh child: time each init step, wall and CPU."""
    r = {}
    def step(name, f):
        t, c = time.perf_counter(), time.process_time(); out = f(); r[name] = (round(time.perf_counter() - t, 4), round(time.process_time() - c, 4)); return out
    import torch
    step("cuInit", lambda: ctypes.CDLL("libcuda.so.1").cuInit(0))
    step("torch.cuda.init", torch.cuda.init)
    step("empty(1)", lambda: torch.empty(1, device="cuda"))
    step("blas_handle", torch.cuda.current_blas_handle)
    dev = torch.device("cuda", 0)
    for dt in (torch.bfloat16, torch.float32):
        a = torch.empty(16, 16, device=dev, dtype=dt)
        step(f"tiny_gemm_{dt}", lambda: (a @ a, torch.cuda.synchronize()))
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    def sdpa(b, n, bs, dt=torch.bfloat16, d=128, h=16):
        q = torch.randn(bs, h, n, d, device=dev, dtype=dt)
        with torch.inference_mode(), sdpa_kernel([b]):
            F.scaled_dot_product_attention(q, q, q, is_causal=True); torch.cuda.synchronize()
    if which == "all":
        step("math_fp32_tiny", lambda: sdpa(SDPBackend.MATH, 64, 1, torch.float32, 16, 2))
        step("flash_256", lambda: sdpa(SDPBackend.FLASH_ATTENTION, 256, 1))
        step("eff_256", lambda: sdpa(SDPBackend.EFFICIENT_ATTENTION, 256, 1))
        step("cudnn_tiny64", lambda: sdpa(SDPBackend.CUDNN_ATTENTION, 64, 1))
        step("cudnn_256", lambda: sdpa(SDPBackend.CUDNN_ATTENTION, 256, 1))
        step("cudnn_512", lambda: sdpa(SDPBackend.CUDNN_ATTENTION, 512, 1))
        step("cudnn_4096b8", lambda: sdpa(SDPBackend.CUDNN_ATTENTION, 4096, 8))
        step("math_bf16_256", lambda: sdpa(SDPBackend.MATH, 256, 1))
    elif which == "cudnn_first":
        step("cudnn_256", lambda: sdpa(SDPBackend.CUDNN_ATTENTION, 256, 1))
        step("cudnn_256_fwdagain", lambda: sdpa(SDPBackend.CUDNN_ATTENTION, 256, 1))
    step("empty_cache", torch.cuda.empty_cache)
    conn.send(r)
    conn.close()
    t = time.perf_counter(); os._exit(0)

def victim(conn):
    """Time graph replays of two cells in blocks, on the parent's signal."""
    import torch, torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    dev = torch.device("cuda", 0)
    cells = {"flash1024b1": (SDPBackend.FLASH_ATTENTION, 1024, 1), "cudnn4096b8": (SDPBackend.CUDNN_ATTENTION, 4096, 8), "eager_like_math512": (SDPBackend.MATH, 512, 1)}
    graphs = {}
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    for k, (b, n, bs) in cells.items():
        q = torch.randn(bs, 16, n, 128, device=dev, dtype=torch.bfloat16)
        with torch.inference_mode(), sdpa_kernel([b]):
            s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3): F.scaled_dot_product_attention(q, q, q, is_causal=True)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                o = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        graphs[k] = (g, q, o)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "stop": break
        k, n = msg
        g = graphs[k][0]
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for a, b in ev:
            flush.zero_(); a.record(); g.replay(); b.record()
        torch.cuda.synchronize()
        conn.send([a.elapsed_time(b) for a, b in ev])
    os._exit(0)

def neighbour(kind):
    import torch
    torch.empty(1, device="cuda")
    if kind == "ctx":
        pass
    elif kind == "tiny":
        torch.cuda.current_blas_handle()
        for dt in (torch.bfloat16, torch.float32):
            a = torch.randn(16, 16, device="cuda", dtype=dt); a @ a
        torch.cuda.synchronize()
    elif kind == "heavy":
        q = torch.randn(8, 16, 4096, 128, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            s = (q @ q.transpose(-1, -2)).softmax(-1) @ q
        torch.cuda.synchronize()
    os._exit(0)

def stats(ms):
    ms = sorted(ms); n = len(ms)
    return dict(n=n, med=round(ms[n // 2], 5), p10=round(ms[n // 10], 5), p90=round(ms[9 * n // 10], 5), max=round(ms[-1], 4))

if __name__ == "__main__":
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch"])
    t = time.perf_counter(); p = ctx.Process(target=time.sleep, args=(0,)); p.start(); p.join(); log("forkserver(torch only) start", round(time.perf_counter() - t, 2))
    for which in ("all", "all", "cudnn_first"):
        a, b = ctx.Pipe(duplex=False)
        t = time.perf_counter(); p = ctx.Process(target=steps, args=(b, which)); p.start(); b.close()
        r = a.recv(); t1 = time.perf_counter(); p.join(); log("steps", which, r, "exit", round(time.perf_counter() - t1, 3), "total", round(time.perf_counter() - t, 3))
    # disturbance
    a, b = ctx.Pipe(); v = ctx.Process(target=victim, args=(b,)); v.start(); assert a.recv() == "ready"
    res = {}
    for cell, n in (("flash1024b1", 3000), ("cudnn4096b8", 400), ("eager_like_math512", 3000)):
        for kind in ("idle", "ctx", "idle", "tiny", "idle", "heavy", "idle"):
            a.send((cell, n))
            ps = []
            if kind != "idle":
                for _ in range(4):
                    q = ctx.Process(target=neighbour, args=(kind,)); q.start(); ps.append(q)
            ms = a.recv()
            for q in ps: q.join()
            s = stats(ms); res.setdefault(cell, []).append((kind, s)); log("disturb", cell, kind, s, "block s", round(sum(ms) / 1e3, 3))
    a.send("stop"); v.join()
    json.dump(res, open(f"{OUT}/probe2.json", "w"), indent=1)
    log("done")
