"""How a long compute-bound call's time follows the GPU's power state: graph replays of one cell
(L2 flushed before each, as the sweep times them) after 3 s idle, continuous or paced, with the
SM clock, power, clock-limit reasons and temperature sampled every millisecond beside them.
Printed per 50 ms of the timeline. Usage: python docs/h200x2/probe_power.py"""
import statistics
import threading
import time

import pynvml
import torch

from tasks.cell import Prepared, start_device
from tasks.device import CLOCK_LIMITS, nvml_handle
from tasks.timing import Protocol, Timer, capture, warm

device, env = start_device("cuda", ["bfloat16"])
h = nvml_handle(env["gpu_uuid"])
print(env["device_name"], "max SM clock", pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM), "MHz,",
      "power limit", pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000, "W")
reasons_of = (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
              or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons)


def sample(out, stop):
    while not stop.is_set():
        out.append((time.perf_counter(), pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                    pynvml.nvmlDeviceGetPowerUsage(h) / 1000, reasons_of(h),
                    pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)))
        time.sleep(0.001)


def run(replay, timer, calls_per_batch, sleep_s, total_s):
    torch.cuda.synchronize()
    time.sleep(3.0)
    samples, stop = [], threading.Event()
    th = threading.Thread(target=sample, args=(samples, stop))
    th.start()
    base = torch.cuda.Event(enable_timing=True)
    t_base = time.perf_counter()
    base.record()
    pairs = []
    while time.perf_counter() - t_base < total_s:
        for _ in range(calls_per_batch):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            timer.flush.zero_()
            s.record()
            replay()
            e.record()
            pairs.append((s, e))
        torch.cuda.synchronize()
        if sleep_s:
            time.sleep(sleep_s)
    torch.cuda.synchronize()
    stop.set()
    th.join()
    calls = [(base.elapsed_time(s) / 1e3, s.elapsed_time(e)) for s, e in pairs]
    rows = []
    for k in range(int(total_s / 0.05) + 2):
        lo, hi = k * 0.05, (k + 1) * 0.05
        ms = [c for t, c in calls if lo <= t < hi]
        sm = [x for x in samples if lo <= x[0] - t_base < hi]
        if not ms:
            continue
        bits = 0
        for x in sm:
            bits |= x[3]
        lim = ",".join(n for b, n in CLOCK_LIMITS.items() if bits & b)
        rows.append(f"  {lo * 1e3:6.0f} ms: {len(ms):3d} calls median {statistics.median(ms):8.4f} ms | "
                    f"clock {statistics.fmean(x[1] for x in sm) if sm else 0:6.0f} MHz "
                    f"power {statistics.fmean(x[2] for x in sm) if sm else 0:5.0f} W "
                    f"temp {sm[-1][4] if sm else 0} C {lim}")
    every = [c for _, c in calls]
    print(f"    all {len(every)} calls: median {statistics.median(every):.4f} ms, "
          f"first 10 {statistics.median(every[:10]):.4f}, "
          f"last 10 {statistics.median(every[-10:]):.4f}")
    print("\n".join(rows))


for backend, b, s in [("cudnn", 8, 8192), ("flash", 32, 8192)]:
    spec = {"workload": "attention", "backend": backend, "mode": "fwd", "dtype": "bfloat16", "causal": True,
            "head_dim": 128, "num_heads": 16, "batch_size": b, "seq_len": s, "device": "cuda", "seed": 0, "measure": {}}
    p = Prepared(spec, device)
    warmed, o = warm(p.work.step, device, Protocol())
    graph, out, note = capture(p.work.step, device, warmed[1])
    timer = Timer(device, True)
    per = 0.004 if backend == "cudnn" else 0.025
    stretch = max(1, int(0.02 / per))
    for name, n, sl in [("continuous", stretch, 0.0), ("paced 20 ms on / 20 ms off", stretch, 0.02),
                        ("paced 20 ms on / 60 ms off", stretch, 0.06), ("one call, 10 ms off", 1, 0.01)]:
        print(f"{backend} b{b} s{s}, {name}:", flush=True)
        run(graph.replay, timer, n, sl, 1.5)
    del graph, out, p, timer
    torch.cuda.empty_cache()
