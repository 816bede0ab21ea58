"""The sweep against the script a user would write instead, side by side in one run.

    python benchmarks/inprocess.py                  # a GPU machine: the 120 bf16 head-128 cells of +sweep=full
    python benchmarks/inprocess.py --gpus 1,2       # the sweep on 1 GPU and on 2 (cluster.num_gpus)
    python benchmarks/inprocess.py --cells cpu      # a machine without a GPU: 24 small CPU cells
    python benchmarks/inprocess.py --gpus 1,2 --cells-per-process 0,1   # also a fresh process per cell

Each contender is a command of its own, timed from its process start to its exit:

1. the yardstick, a plain in-process loop over the same cells: per cell
   ``triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")`` where triton is
   installed, else a loop of the same 25 ms warm-up and 100 ms of timed calls (CUDA events, or
   the clock on the CPU), OOM caught and the cache emptied between cells;
2. the same loop timing each cell with this project's timing function (``tasks/timing.py``:
   CUDA-graph replays, L2 flushed) in one process: what isolation costs in numbers;
3. ``python -m orchestrator`` on those cells, once per GPU count (and per
   ``run.cells_per_process`` asked for: 0, the default, one process per device that measures cell
   after cell; 1, a fresh process per cell), report included. A sweep's tag is ``g<GPUs>``, with
   ``-p<N>`` when run.cells_per_process is not the default (files before 2026-11-26 22:30 UTC
   tagged the other way round: ``g1`` a fresh process per cell, ``g1-p0`` one per device).

Prints the medians side by side, the parts of a sweep cell's time, and last, per GPU count,
``sweep vs in-process: X s vs Y s, ratio X/Y = R; N/M medians within 2%``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agreement import KEY  # noqa: E402

CELLS = {
    "full": ["+sweep=full", "grid.dtypes=[bfloat16]", "grid.head_dims=[128]"],
    "cpu": ["+sweep=smoke", "grid.backends=[math,eager,flash]", "grid.seq_lens=[64,128,256,512]",
            "grid.batch_sizes=[1,2]", "grid.head_dims=[32]", "grid.num_heads=[4]"],
}


def cells_of(name: str):
    from overhead import compose

    from orchestrator.driver import plan

    return plan(compose(CELLS[name]))


# ----------------------------------------------------------------------------- the loops (child process)


def own_bench(fn, device, warmup_ms=25.0, rep_ms=100.0) -> float:
    """do_bench's budget without triton: 25 ms of calls, then 100 ms of timed calls; the median."""
    import torch

    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    while (time.perf_counter() - t0) * 1e3 < warmup_ms:
        fn()
        if cuda:
            torch.cuda.synchronize()
    ms, t0 = [], time.perf_counter()
    while (time.perf_counter() - t0) * 1e3 < rep_ms or len(ms) < 3:
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ms.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def loop(kind: str, cells: str, out: str) -> None:
    """One process, every cell: the do_bench yardstick or this project's graph timing."""
    import torch

    from tasks import attention, timing

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    try:
        import triton.testing as tt
    except ImportError:
        tt = None
    results, t0 = {}, time.perf_counter()
    for cell in cells_of(cells):
        key = key_of(cell.params())
        try:
            work = attention.build({**cell.params(), "seed": 0}, device)
            with torch.inference_mode(), work.pinned():
                if kind == "graph":
                    results[key] = timing.time_fn(work.step, device, again=work.again)["median_ms"]
                elif tt is not None and cuda:
                    results[key] = tt.do_bench(work.step, warmup=25, rep=100, return_mode="median")
                else:
                    results[key] = own_bench(work.step, device)
            del work
        except torch.OutOfMemoryError:
            results[key] = "oom"
        except RuntimeError as exc:
            results[key] = "unsupported" if "No available kernel" in str(exc) else f"error: {exc}"[:80]
        if cuda:
            torch.cuda.empty_cache()
    Path(out).write_text(json.dumps({"cells": results, "loop_s": time.perf_counter() - t0,
                                     "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                                     "timer": "do_bench" if tt is not None and cuda and kind != "graph" else kind}))


# ----------------------------------------------------------------------------- the parent


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code:
        sys.exit(f"{' '.join(cmd[:4])}... exited {code}; see {log}:\n" + log.read_text()[-3000:])
    return wall


def sweep(cells: str, gpus: int | None, per_process: int, tmp: Path) -> dict:
    import pandas as pd

    from orchestrator.store import Store

    tag = (f"g{gpus}" if gpus else "cpu") + (f"-p{per_process}" if per_process != 0 else "")
    store, run = tmp / f"store-{tag}", tmp / f"run-{tag}"
    extra = ([f"cluster.num_gpus={gpus}"] if gpus else []) + [f"run.cells_per_process={per_process}"]
    wall = timed([sys.executable, "-m", "orchestrator", *CELLS[cells], *extra, f"store.path={store}",
                  f"hydra.run.dir={run}", "run.progress=false"], tmp / f"sweep-{tag}.log")
    df = pd.read_parquet(store)
    summary = next(iter(Store(store).runs().values()))["summary"]
    said = (tmp / f"sweep-{tag}.log").read_text().splitlines()
    parts = next((ln.split("] ", 1)[-1] for ln in reversed(said) if "the whole command:" in ln), "(none)")
    return {"wall": wall, "df": df, "summary": summary, "tag": tag, "parts": parts}


def key_of(row) -> str:
    return "|".join(str(row[k]) for k in KEY)


def medians_table(base: dict, graph: dict, sweeps: list[dict]) -> tuple[list, dict]:
    import pandas as pd

    rows, agree = [], {}
    by = {s["tag"]: {key_of(r): r for r in s["df"].to_dict("records")} for s in sweeps}
    for key, b in base.items():
        row = {"cell": key.replace("|", " "), "in-process": b, "graph loop": graph.get(key)}
        for tag, rs in by.items():
            r = rs.get(key)
            row[f"sweep {tag}"] = r["median_ms"] if r is not None and r["status"] == "ok" else (r or {}).get("status")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for tag in by:
        col = f"sweep {tag}"
        both = frame[pd.to_numeric(frame["in-process"], errors="coerce").notna()
                     & pd.to_numeric(frame[col], errors="coerce").notna()]
        rel = (both[col].astype(float) / both["in-process"].astype(float) - 1).abs()
        g = both[pd.to_numeric(both["graph loop"], errors="coerce").notna()]
        rel_g = (g[col].astype(float) / g["graph loop"].astype(float) - 1).abs()
        agree[tag] = (int((rel <= 0.02).sum()), len(both), float(rel_g.median()) if len(g) else float("nan"),
                      float(rel_g.max()) if len(g) else float("nan"), int((rel_g <= 0.03).sum()), len(g))
    return rows, agree


def parts_table(df) -> str:
    import pandas as pd

    ok = df[df.status == "ok"].copy()
    ok["calls"] = pd.cut(ok.median_ms, [0, 1, 10, float("inf")], labels=["< 1 ms", "1-10 ms", ">= 10 ms"])
    cols = ["startup_s", "startup_wait_s", "spawn_s", "setup_s", "warmup_s", "timing_s", "memory_s", "kernels_s",
            "accuracy_s", "previous_wait_s", "quiet_wait_s", "measure_s", "cell_wall_s"]
    t = ok.groupby("calls", observed=True)[cols].median()
    t.insert(0, "cells", ok.groupby("calls", observed=True).size())
    return t.to_string(float_format=lambda x: f"{x:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=None, choices=sorted(CELLS), help="full (GPU; default there) or cpu")
    ap.add_argument("--gpus", default="1", help="GPU counts for the sweep, e.g. 1,2")
    ap.add_argument("--cells-per-process", default="0", help="run.cells_per_process values for the sweep, e.g. 0,1 "
                    "(0, the default: one process per device; 1: a fresh process per cell)")
    ap.add_argument("--loop", choices=["dobench", "graph"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--keep", help="keep datasets and logs in this folder")
    args = ap.parse_args()
    if args.loop:
        return loop(args.loop, args.cells, args.out)
    import pandas as pd

    # a GPU here? (importing torch once also warms the page cache for every contender alike)
    gpu = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                         capture_output=True, text=True).stdout.strip() not in ("", "0")
    cells = args.cells or ("full" if gpu else "cpu")
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="inprocess-"))
    tmp.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--cells", cells]
    walls, loops = {}, {}
    for kind in ("dobench", "graph"):
        walls[kind] = timed([*me, "--loop", kind, "--out", str(tmp / f"{kind}.json")], tmp / f"{kind}.log")
        loops[kind] = json.loads((tmp / f"{kind}.json").read_text())
        print(f"{kind} loop: {walls[kind]:.1f} s whole command ({loops[kind]['loop_s']:.1f} s looping, "
              f"{loops[kind]['timer']})", flush=True)
    sweeps = []
    for per in [int(x) for x in args.cells_per_process.split(",")]:
        for g in ([int(x) for x in args.gpus.split(",")] if gpu else [None]):
            s = sweep(cells, g, per, tmp)
            s["per"] = per
            sweeps.append(s)
            sm = s["summary"]
            rest = s["wall"] - sm["start_s"] - sm["wall_s"]
            print(f"sweep {s['tag']}: {s['wall']:.1f} s whole command; start {sm['start_s']:.1f} s, first dispatch "
                  f"to last row {sm['wall_s']:.1f} s on {sm['devices']} device(s), the rest {rest:.1f} s "
                  "(interpreter, imports, config, compaction, report, Ray's shutdown)", flush=True)
            print(f"  its own account: {s['parts']}", flush=True)
    rows, agree = medians_table(loops["dobench"]["cells"], loops["graph"]["cells"], sweeps)
    pd.set_option("display.width", 250, "display.max_rows", 500)
    print(f"\ndevice: {loops['dobench']['device']}; cells: {cells} ({len(rows)}); medians in ms")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    for s in sweeps:
        print(f"\nwhere a sweep cell's time goes ({s['tag']}, medians in s):\n{parts_table(s['df'])}")
        small = s["df"][(s["df"].status == "ok") & (s["df"].median_ms < 1)]
        print(f"median cell wall of cells under 1 ms: {small.cell_wall_s.median():.3f} s ({len(small)} cells)")
    base_wall = walls["dobench"]
    print()
    for s in sweeps:
        n, m, med_g, max_g, n3, m3 = agree[s["tag"]]
        print(f"{s['tag']}: against the graph-timed loop: |diff| median {med_g * 100:.2f}%, max {max_g * 100:.2f}%, "
              f"{n3}/{m3} within 3%")
    for per in dict.fromkeys(s["per"] for s in sweeps):
        same = [s for s in sweeps if s["per"] == per]
        if len(same) > 1:
            a, b = same[0]["summary"]["wall_s"], same[-1]["summary"]["wall_s"]
            print(f"sweep itself (first dispatch to last row): {same[0]['tag']} {a:.1f} s, {same[-1]['tag']} "
                  f"{b:.1f} s: {a / b:.2f}x")
    for s in sweeps:
        n, m = agree[s["tag"]][:2]
        print(f"sweep vs in-process ({s['tag']}): {s['wall']:.1f} s vs {base_wall:.1f} s, ratio X/Y = "
              f"{s['wall'] / base_wall:.2f}; {n}/{m} medians within 2%")


if __name__ == "__main__":
    main()
