"""Do two ways of running a sweep measure the same numbers? Side by side, in one run.

    python benchmarks/agreement.py                          # +sweep=seed: pool, pool again, task
    python benchmarks/agreement.py --runs pool:1,pool:4     # 1 GPU against 4 GPUs (pool mode)

Each run measures the same cells into a store of its own (`run.rerun=all`). The first two
runs of the first kind give the run-to-run spread; every other run is compared with the
first. A cell agrees when its difference is within the larger of that cell's run-to-run
difference and its own p10-p90 spread. Prints one row per cell and a summary line per run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from overhead import compose  # noqa: E402


def measure(kind: str, sweep: str, extra: list[str], store: Path):
    import pandas as pd

    from orchestrator.driver import run

    mode, _, gpus = kind.partition(":")
    over = [f"+sweep={sweep}", f"run.isolation={mode}", "run.rerun=all", "report.enabled=false",
            "run.progress=false", f"store.path={store}", *extra]
    summary = run(compose(over))
    df = pd.read_parquet(store)
    df = df[df.run_id == summary.run_id].set_index(["backend", "seq_len", "batch_size", "head_dim", "dtype"])
    return summary, df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="seed")
    ap.add_argument("--runs", default="pool,pool,task", help="mode[:gpus] per run; the first twice for spread")
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args()
    import pandas as pd

    runs = args.runs.split(",")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(runs):
            gpus = kind.partition(":")[2]
            extra = [*args.overrides, *([f"cluster.num_gpus={gpus}"] if gpus else [])]
            if gpus:  # a cluster of this many GPUs: start it afresh
                import ray

                ray.shutdown()
            s, df = measure(kind, args.sweep, extra, Path(tmp) / f"run{i}")
            out[f"{i}:{kind}"] = (s, df)
    names = list(out)
    base = out[names[0]][1]
    ok = base.status == "ok"
    spread_run = None
    if len(names) > 1 and names[1].split(":", 1)[1] == names[0].split(":", 1)[1]:
        spread_run = (out[names[1]][1].median_ms - base.median_ms).abs()
    band = (base.p90_ms - base.p10_ms) / 2
    tol = band if spread_run is None else pd.concat([band, spread_run], axis=1).max(axis=1)
    table = pd.DataFrame({"base_ms": base.median_ms, "tol_ms": tol})
    for name in names[1:]:
        table[name] = out[name][1].median_ms
    print(table[ok].to_string(float_format=lambda x: f"{x:.4f}"))
    for name in names:
        s = out[name][0]
        print(f"{name}: wall {s.wall_s:.1f} s on {s.devices} device(s), efficiency {s.efficiency:.2f}")
    # Per cell, one run-to-run difference is a single sample: as likely to be the larger of
    # two as not. Across the sweep's cells the differences of two runs of one mode make a
    # distribution; another mode agrees when its differences look like that one.
    spread_max = None
    if spread_run is not None:
        r = (spread_run / base.median_ms)[ok]
        spread_max = r.max()
        print(f"run-to-run spread, {names[1]} against {names[0]}: |diff| median {r.median() * 100:.2f}%, "
              f"p90 {r.quantile(0.9) * 100:.2f}%, max {spread_max * 100:.2f}% of the median")
    for name in names[1:]:
        d = (out[name][1].median_ms - base.median_ms).abs()[ok[ok].index]
        d, t = d.align(tol, join="left")
        rel = d / base.median_ms.reindex(d.index)
        signed = ((out[name][1].median_ms - base.median_ms) / base.median_ms)[ok[ok].index]
        agree = int((d <= t * 1.0000001).sum())
        line = (f"{name} against {names[0]}: |diff| median {rel.median() * 100:.2f}%, p90 "
                f"{rel.quantile(0.9) * 100:.2f}%, max {rel.max() * 100:.2f}%; mean signed diff "
                f"{signed.mean() * 100:+.2f}%; {agree}/{int(ok.sum())} cells within their own "
                "run-to-run / p10-p90 spread")
        if spread_max is not None:
            line += f"; {int((rel <= spread_max).sum())}/{int(ok.sum())} within the largest run-to-run |diff|"
        print(line)

if __name__ == "__main__":
    main()
