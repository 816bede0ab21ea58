"""Per-cell overhead of the two isolation modes, measured side by side in one run.

    python benchmarks/overhead.py                  # whatever device is present
    python benchmarks/overhead.py --cells 48       # more cells, steadier figures

Runs the same sweep of tiny cells with run.isolation=pool and run.isolation=task on the
same Ray cluster and prints, per mode: cells, wall time, the sum of in-cell measuring
time, the per-cell overhead over the whole run ((wall x devices - measuring) / cells,
one-time start-up of the pool's actors and forkservers included), the steady per-cell
overhead (median of a cell's wall time minus its measuring time), the median start-up
figures of a cell, and last the line the overhead target is read from (whole-run figures).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def tiny_grid(cells: int, gpu: bool) -> list[str]:
    """About `cells` tiny cells: 2 backends x 4 lengths x as many batch sizes as needed."""
    batches = list(range(1, max(1, cells // 8) + 1))
    return [
        "grid.backends=[math,flash]",
        "grid.seq_lens=[64,128,192,256]",
        f"grid.batch_sizes=[{','.join(map(str, batches))}]",
        "grid.num_heads=[4]",
        "grid.head_dims=[32]",
        f"grid.dtypes=[{'float16' if gpu else 'float32'}]",
        "measure.warmup_ms=10",
        "measure.budget_ms=50",
        "report.enabled=false",
        "run.progress=false",
        "run.rerun=all",
    ]


def run_mode(mode: str, base: list[str], store: Path):
    import pandas as pd

    from orchestrator.driver import run

    summary = run(compose([*base, f"run.isolation={mode}", f"store.path={store}"]))
    df = pd.read_parquet(store)
    df = df[df.run_id == summary.run_id]
    return summary, df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=32)
    ap.add_argument("--modes", default="pool,task")
    ap.add_argument("--num-gpus", type=int, default=None, help="limit a local cluster to this many GPUs")
    args = ap.parse_args()

    import torch

    from orchestrator import cluster

    gpu = torch.cuda.is_available()
    base = tiny_grid(args.cells, gpu)
    if args.num_gpus is not None:
        base.append(f"cluster.num_gpus={args.num_gpus}")
    cluster.connect(compose(base).cluster)
    rows, overhead = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            s, df = run_mode(mode, base, Path(tmp) / mode)
            n = len(df)
            per_cell = (s.wall_s * s.devices - df.measure_s.sum()) / n
            steady = (df.cell_wall_s - df.measure_s).median()
            overhead[mode] = (per_cell, steady)
            rows.append({
                "mode": mode, "cells": n, "devices": s.devices, "ok": int((df.status == "ok").sum()),
                "wall_s": s.wall_s, "measure_s": df.measure_s.sum(), "overhead_per_cell_s": per_cell,
                "steady_overhead_s": steady,
                "cell_wall_med_s": df.cell_wall_s.median(), "spawn_med_s": df.spawn_s.median(),
                "startup_med_s": df.startup_s.median(),
                "efficiency": s.efficiency,
            })
            print(f"{mode}: {n} cells in {s.wall_s:.1f} s, {per_cell:.3f} s overhead per cell "
                  f"(steady {steady:.3f} s)", flush=True)  # kept if a later mode is cut short
    import pandas as pd

    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    print(f"\ndevice: {device}; {args.cells} requested cells per mode, measure.budget_ms=50")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if "pool" in overhead and "task" in overhead:
        (p, ps), (t, ts) = overhead["pool"], overhead["task"]
        print(f"steady per-cell overhead: pool {ps:.3f} s, task {ts:.3f} s, ratio {ts / ps:.1f}")
        print(f"per-cell overhead: pool {p:.3f} s, task {t:.3f} s, ratio Y/X = {t / p:.1f}")


if __name__ == "__main__":
    main()
