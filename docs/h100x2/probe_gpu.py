"""GPU probe (old code): where a fresh cell process's time goes; graph capture per backend; NVML per process; ceilings."""
import json, os, subprocess, sys, time, multiprocessing as mp, statistics as st
sys.path.insert(0, os.getcwd())
OUT = os.environ.get("OUT", "/tmp")
T0 = time.perf_counter()
def log(*a): print(f"[{time.perf_counter()-T0:7.2f}]", *a, flush=True)
RES = {}

def sh(code, env=None):
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t, p.stdout.strip()[-500:], p.stderr.strip()[-800:]

def sec_imports():
    for i in range(2):
        w, o, e = sh("import time; t=time.perf_counter(); import torch; print(round(time.perf_counter()-t,2))")
        log("import torch", i, o, "wall", round(w, 2))
    w, o, e = sh("import time; t=time.perf_counter(); import triton, triton.testing; print(round(time.perf_counter()-t,2))")
    log("import triton", o, e[-200:])
    for extra in ("", ", _system_config={'enable_worker_prestart': False}"):
        w, o, e = sh("import time; t=time.perf_counter(); import ray; t1=time.perf_counter(); "
                     f"ray.init(address='local', num_cpus=2, include_dashboard=False{extra}); t2=time.perf_counter(); "
                     "ray.shutdown(); print('import', round(t1-t,2), 'init', round(t2-t1,2), 'shutdown', round(time.perf_counter()-t2,2))")
        log("ray", extra, o, e[-300:] if not o else "")

def phases(spec, ctx_note=""):
    """Run inside a fresh child: time each part of the old measurement path."""
    import torch, importlib
    from tasks import timing, kernels
    from tasks.device import environment, nvml_handle
    import pynvml
    r = {}
    t = time.perf_counter(); torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); r["cuda_ctx"] = time.perf_counter() - t
    dev = torch.device("cuda", 0)
    t = time.perf_counter(); env = environment(dev); h = nvml_handle(env["gpu_uuid"]); r["env_nvml"] = time.perf_counter() - t
    def proc_used():
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            if p.pid == os.getpid():
                return p.usedGpuMemory
        return None
    r["proc_ctx_bytes"] = proc_used()
    r["pids_seen"] = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
    r["mypid"] = os.getpid()
    for rnd in (1, 2):  # second round: same cell again in the same process
        t = time.perf_counter(); work = importlib.import_module(f"tasks.{spec['workload']}").build(spec, dev); torch.cuda.synchronize(); r[f"build{rnd}"] = time.perf_counter() - t
        import contextlib
        gm = contextlib.nullcontext() if work.train else torch.inference_mode()
        with gm, work.pinned():
            t = time.perf_counter(); work.step(); torch.cuda.synchronize(); r[f"first{rnd}"] = time.perf_counter() - t
            t = time.perf_counter(); n = 0
            while n < 3 or time.perf_counter() - t < 0.1:
                work.step(); torch.cuda.synchronize(); n += 1
            r[f"warm{rnd}"] = time.perf_counter() - t; r["warm_n"] = n; est = r[f"warm{rnd}"] / n
            t = time.perf_counter(); m = timing.measure_memory(work.step, dev); r[f"memory{rnd}"] = time.perf_counter() - t
            r["proc_after_mem"] = proc_used(); r["reserved"] = m["peak_reserved_bytes"]
            t = time.perf_counter(); k = kernels.record(work.step, dev, spec["backend"], "ops", work.compiled); r[f"kernels{rnd}"] = time.perf_counter() - t
            t = time.perf_counter(); err = work.check(); torch.cuda.synchronize(); r[f"check{rnd}"] = time.perf_counter() - t
            t = time.perf_counter(); flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev); flush.zero_(); torch.cuda.synchronize(); r[f"flushalloc{rnd}"] = time.perf_counter() - t
            # events, old protocol core (n from est, cap 1000, budget 500)
            n = max(10, min(1000, int(0.5 / max(est, 1e-7))))
            t = time.perf_counter(); ms = timing._time_cuda(work.step, dev, n, True); r[f"events500{rnd}"] = time.perf_counter() - t
            r["events_med"] = st.median(ms); r["events_n"] = n
            # graph
            try:
                t = time.perf_counter()
                s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    work.step()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = work.step()
                torch.cuda.synchronize(); r[f"capture{rnd}"] = time.perf_counter() - t
                ng = max(10, min(200, int(0.1 / max(est, 1e-7))))
                st_ = [torch.cuda.Event(enable_timing=True) for _ in range(ng)]; en = [torch.cuda.Event(enable_timing=True) for _ in range(ng)]
                t = time.perf_counter()
                for i in range(ng):
                    flush.zero_(); st_[i].record(); g.replay(); en[i].record()
                torch.cuda.synchronize(); r[f"graph{rnd}"] = time.perf_counter() - t
                gm_ = sorted(a.elapsed_time(b) for a, b in zip(st_, en)); r["graph_med"] = gm_[len(gm_)//2]; r["graph_p10"] = gm_[len(gm_)//10]; r["graph_p90"] = gm_[9*len(gm_)//10]; r["graph_n"] = ng
                del g, out
            except Exception as exc:
                r["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                try:
                    torch.cuda.synchronize(); r["ctx_ok_after_fail"] = True
                except Exception as e2:
                    r["ctx_ok_after_fail"] = f"{e2}"[:200]
            del work, flush
            torch.cuda.empty_cache()
    return r

def _child(conn, spec):
    try:
        conn.send(("ok", phases(spec)))
    except Exception as exc:
        import traceback; conn.send(("err", traceback.format_exc()[-1500:]))
    os._exit(0)

def sec_phases():
    ctx = mp.get_context("forkserver"); ctx.set_forkserver_preload(["tasks.preload"])
    t = time.perf_counter(); p = ctx.Process(target=time.sleep, args=(0,)); p.start(); p.join(); log("forkserver start", round(time.perf_counter() - t, 2))
    base = dict(workload="attention", mode="fwd", dtype="bfloat16", causal=True, head_dim=128, num_heads=16, seed=0, device="cuda", target="any")
    cells = [(b, n, bs) for b in ("eager", "math", "flash", "efficient", "cudnn") for n, bs in ((256, 1), (4096, 8))]
    cells += [("flash", 1024, 1, "fwd_bwd"), ("cudnn", 1024, 1, "fwd_bwd"), ("efficient", 16384, 1), ("flash", 16384, 1), ("cudnn", 16384, 1), ("eager", 16384, 1)]
    out = []
    for c in cells:
        spec = {**base, "backend": c[0], "seq_len": c[1], "batch_size": c[2], "mode": c[3] if len(c) > 3 else "fwd"}
        a, b = ctx.Pipe(duplex=False)
        t = time.perf_counter(); p = ctx.Process(target=_child, args=(b, spec)); p.start(); b.close()
        kind, r = a.recv(); t_res = time.perf_counter() - t
        p.join(); t_gone = time.perf_counter() - t
        if kind == "err":
            log("ERR", c, r); continue
        r["cell"] = c; r["wall_to_result"] = t_res; r["exit_after_result"] = t_gone - t_res
        out.append(r)
        log(c, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k not in ("cell",)})
    RES["phases"] = out

def sec_capture():
    import torch
    from tasks.cell import run_cell
    import importlib, contextlib
    dev = torch.device("cuda", 0)
    res = {}
    for wl, b, mode in [(w, b, m) for w in ("attention", "encoder") for b in ("eager", "math", "flash", "efficient", "cudnn", "flex") for m in ("fwd", "fwd_bwd")]:
        if b == "flex" and (mode == "fwd_bwd" or wl == "encoder"):
            continue
        spec = dict(workload=wl, backend=b, mode=mode, dtype="bfloat16", causal=True, head_dim=64, num_heads=8, batch_size=2, seq_len=512, seed=0)
        try:
            work = importlib.import_module(f"tasks.{wl}").build(spec, dev)
            gm = contextlib.nullcontext() if work.train else torch.inference_mode()
            with gm, work.pinned():
                for _ in range(3): work.step()
                torch.cuda.synchronize()
                s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    work.step()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    o = work.step()
                g.replay(); torch.cuda.synchronize()
                res[f"{wl}/{b}/{mode}"] = "ok"
        except Exception as exc:
            res[f"{wl}/{b}/{mode}"] = f"{type(exc).__name__}: {str(exc)[:160]}"
            try:
                torch.cuda.synchronize(); x = torch.ones(4, device=dev).sum().item()
            except Exception as e2:
                res[f"{wl}/{b}/{mode}"] += f" | CONTEXT BROKEN: {e2}"[:200]
        log("capture", wl, b, mode, res[f"{wl}/{b}/{mode}"])
    RES["capture"] = res

def sec_ceilings():
    import torch
    dev = torch.device("cuda", 0)
    for dt, n in ((torch.bfloat16, 8192), (torch.float16, 8192), (torch.float32, 4096)):
        a = torch.randn(n, n, device=dev, dtype=dt); b = torch.randn(n, n, device=dev, dtype=dt)
        t = time.perf_counter()
        for _ in range(2): a @ b
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(10)]
        for s, e in ev:
            s.record(); a @ b; e.record()
        torch.cuda.synchronize()
        ms = sorted(s.elapsed_time(e) for s, e in ev)
        log("matmul", dt, n, "TFLOP/s median", round(2 * n**3 / (ms[5] / 1e3) / 1e12, 1), "max", round(2 * n**3 / (ms[0] / 1e3) / 1e12, 1), "took", round(time.perf_counter() - t, 3))
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev); dst = torch.empty_like(src)
    t = time.perf_counter(); dst.copy_(src); torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(10)]
    for s, e in ev:
        s.record(); dst.copy_(src); e.record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in ev)
    log("copy 1 GiB GB/s (r+w) median", round(2 * (1 << 30) / (ms[5] / 1e3) / 1e9, 1), "took", round(time.perf_counter() - t, 3))

def sec_dobench():
    import torch, triton.testing as tt, importlib, contextlib
    dev = torch.device("cuda", 0)
    for b, n, bs in (("flash", 256, 1), ("eager", 256, 1), ("cudnn", 4096, 8), ("math", 4096, 8)):
        spec = dict(workload="attention", backend=b, mode="fwd", dtype="bfloat16", causal=True, head_dim=128, num_heads=16, batch_size=bs, seq_len=n, seed=0)
        work = importlib.import_module("tasks.attention").build(spec, dev)
        with torch.inference_mode(), work.pinned():
            t = time.perf_counter(); m = tt.do_bench(work.step, warmup=25, rep=100, return_mode="median"); w = time.perf_counter() - t
            t = time.perf_counter(); mg = tt.do_bench_cudagraph(work.step, rep=100, return_mode="median"); wg = time.perf_counter() - t
        log("do_bench", b, n, bs, round(m, 4), "ms in", round(w, 3), "s; cudagraph", round(mg, 4), "in", round(wg, 3))

if __name__ == "__main__":
    log(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], capture_output=True, text=True).stdout)
    for name in sys.argv[1:] or ["imports", "phases", "capture", "ceilings", "dobench"]:
        try:
            globals()[f"sec_{name}"]()
        except Exception:
            import traceback; log("SECTION FAILED", name, traceback.format_exc()[-2000:])
    json.dump(RES, open(f"{OUT}/probe.json", "w"), default=str, indent=1)
    log("done")
