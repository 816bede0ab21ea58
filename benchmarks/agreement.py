"""Do two ways of running a sweep measure the same numbers? Side by side, in one run.

    python benchmarks/agreement.py                               # +sweep=seed: new, new again, old
    python benchmarks/agreement.py --runs new,new,old,noprewarm +sweep=full grid.dtypes=[bfloat16] grid.head_dims=[128]
    python benchmarks/agreement.py --runs new:1,new:2               # 1 GPU against 2 (cluster.num_gpus)
    python benchmarks/agreement.py --runs new,new,fresh,fresh ...     # the default against a fresh process per cell
    python benchmarks/agreement.py --keep outputs/agreement ...      # keep each run's dataset
    python benchmarks/agreement.py --runs reuse,reuse_sets4,reuse,reuse_sets4 ...  # two settings, interleaved

A run is a kind of settings (``KINDS``), optionally ``:N`` GPUs; each measures the same cells
into a store of its own (``run.rerun=all``). The first two runs of the first kind give the
run-to-run spread of the reported median (targets: max 3%, p90 1% over the ok cells); every
other run is compared with the first: how far its medians are, how many of the cells of
50 us and more agree within 2%, and how many cells read the same memory figures. ``old`` is
the protocol before this one (each call between events, a fixed 500 ms budget); against it the
new ``host_median_ms`` (each call between events, as old) is compared too, since the new
``median_ms`` is a CUDA-graph replay. Last, every pair of runs of one kind, run to run, with its
worst cells.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from overhead import compose  # noqa: E402

KINDS = {
    "new": [],
    "old": ["measure.method=events", "measure.precision=0", "measure.budget_ms=500", "measure.warmup_ms=100",
            "measure.warmup_iters=3", "measure.min_iters=10", "measure.max_iters=1000"],
    "fresh": ["run.cells_per_process=1"],  # a fresh process and CUDA context per cell
    "noprewarm": ["run.cells_per_process=1", "run.prewarm=0"],  # fresh processes, none started ahead
    "prewarm3": ["run.cells_per_process=1", "run.prewarm=3"],
    "backtoback": ["measure.duty=1"],  # timed calls unpaced, as before measure.duty
    "task": ["run.isolation=task"],
    "reuse": ["run.cells_per_process=0"],  # one process per device, cell after cell (the default, said explicitly)
    "sets4": ["measure.input_sets=4"],  # short calls timed over 4 copies of their inputs
    "sets8": ["measure.input_sets=8"],  # the default, said explicitly
    "sets1": ["measure.input_sets=1"],  # every call timed on its own inputs alone (the default before 2026-11-27)
    "fresh_sets1": ["run.cells_per_process=1", "measure.input_sets=1"],
    "fresh_sets4": ["run.cells_per_process=1", "measure.input_sets=4"],
    "reuse_sets4": ["run.cells_per_process=0", "measure.input_sets=4"],
}
KEY = ["backend", "mode", "dtype", "causal", "head_dim", "num_heads", "batch_size", "seq_len"]


def measure(kind: str, overrides: list[str], store: Path):
    import pandas as pd

    from orchestrator import cluster
    from orchestrator.driver import run

    name, _, gpus = kind.partition(":")
    extra = [f"cluster.num_gpus={gpus}"] if gpus else []
    cluster.shutdown()  # each run starts its own cluster (and its own device count)
    summary = run(compose([*overrides, *KINDS[name], *extra, "run.rerun=all", "report.enabled=false",
                           "run.progress=false", f"store.path={store}"]))
    df = pd.read_parquet(store)
    return summary, df[df.run_id == summary.run_id].set_index(KEY)


def rel(base, other):
    """|other - base| / base, cell by cell."""
    return (other - base).abs() / base


def spread(base, other, ok) -> str:
    r = rel(base, other)[ok]
    return f"|diff| median {r.median() * 100:.2f}%, p90 {r.quantile(0.9) * 100:.2f}%, max {r.max() * 100:.2f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="new,new,old", help="kind[:gpus] per run, comma-separated; kinds: "
                    + ", ".join(KINDS))
    ap.add_argument("--keep", type=Path, help="keep each run's dataset in this folder (run0, run1, ...)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (default: +sweep=seed)")
    args = ap.parse_args()
    import pandas as pd

    overrides = args.overrides or ["+sweep=seed"]
    runs = args.runs.split(",")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(runs):
            s, df = measure(kind, overrides, (args.keep or Path(tmp)) / f"run{i}")
            out[f"{i}:{kind}"] = (s, df)
            gpus = sorted(df.gpu_uuid.dropna().unique()) if "gpu_uuid" in df else []
            print(f"{i}:{kind}: {len(df)} cells in {s.wall_s:.1f} s on {s.devices} device(s), efficiency "
                  f"{s.efficiency:.2f}" + (f"; GPUs {', '.join(g[:12] for g in gpus)}" if gpus else ""), flush=True)
    names = list(out)
    base = out[names[0]][1]
    ok = base.status.eq("ok")
    table = pd.DataFrame({"base_ms": base.median_ms, "base_host_ms": base.host_median_ms,
                          "method": base.timing_method})
    for name in names[1:]:
        table[name] = out[name][1].median_ms.reindex(base.index)
    pd.set_option("display.width", 250, "display.max_rows", 600)
    print(table[ok].to_string(float_format=lambda x: f"{x:.4f}"))
    big = ok & (base.median_ms >= 0.05)
    for name in names[1:]:
        other = out[name][1].reindex(base.index)
        both = ok & other.status.eq("ok")
        line = f"{name} against {names[0]}: {spread(base.median_ms, other.median_ms, both)}"
        if name.split(":")[1] == names[0].split(":")[1] and name == names[1]:
            line = "run-to-run spread of the reported median, " + line
        moved = rel(base.median_ms, other.median_ms)
        close = int((moved[both & big] <= 0.02).sum())
        line += f"; cells of 50 us and more: {close}/{int((both & big).sum())} within 2%"
        if name.split(":")[1].startswith("old"):
            host = rel(base.host_median_ms, other.median_ms)[both & big]
            line += (f"; old median against new host_median_ms (both per call between events): "
                     f"{int((host <= 0.02).sum())}/{int((both & big).sum())} within 2%, |diff| median "
                     f"{host.median() * 100:.2f}%")
        print(line)
        memory = memory_agreement(base, other, both)
        if memory:
            print(f"  memory, {name} against {names[0]}: {memory}")
        if "sm_clock_mhz" in base and base.sm_clock_mhz.notna().any() and "sm_clock_mhz" in other:
            over = both & big & (moved > 0.03)
            cyc_b, cyc_o = base.median_ms * base.sm_clock_mhz, other.median_ms * other.sm_clock_mhz
            print(f"  {name}: SM clock (MHz) median {base.sm_clock_mhz[ok].median():.0f} vs "
                  f"{other.sm_clock_mhz[both].median():.0f}; the same spread in clock cycles "
                  f"(median_ms x sm_clock_mhz): {spread(cyc_b, cyc_o, both)}")
            if over.any():
                cols = pd.DataFrame({"base_ms": base.median_ms, "ms": other.median_ms,
                                     "base_mhz": base.sm_clock_mhz, "mhz": other.sm_clock_mhz,
                                     "base_limits": base.clock_limits, "limits": other.clock_limits})[over]
                print(f"  cells of 50 us and more that moved over 3% ({int(over.sum())}), and their clocks:")
                print(cols.to_string(float_format=lambda x: f"{x:.4f}"))

    pairs_of_each_kind(out)


MEMORY = ["peak_allocated_bytes", "peak_reserved_bytes", "nvml_process_peak_bytes"]


def memory_agreement(base, other, both) -> str:
    """Each memory column of the cells ok in both runs: how many read the same, and how far the
    others are (a cell's figures should be its own: ``reuse`` against ``new`` shows whether a
    reused process leaves anything behind)."""
    parts = []
    for col in MEMORY:
        if col not in base or col not in other:
            continue
        d = (other[col] - base[col])[both].dropna()
        if d.empty:
            continue
        parts.append(f"{col} equal in {int((d == 0).sum())}/{len(d)}, {d.min() / 1e6:+.1f} to {d.max() / 1e6:+.1f} MB "
                     f"(median {d.median() / 1e6:+.1f})")
    return "; ".join(parts)


def pairs_of_each_kind(out: dict) -> None:
    """Run to run, every pair of runs of one kind (``--runs reuse,reuse_sets4,reuse,reuse_sets4``
    compares settings on the same machine, interleaved): the targets' figures and the worst cells."""
    import itertools

    kinds: dict[str, list[str]] = {}
    for name in out:
        kinds.setdefault(name.split(":", 1)[1], []).append(name)
    for kind, names in kinds.items():
        for a, b in itertools.combinations(names, 2):
            da, db = out[a][1], out[b][1].reindex(out[a][1].index)
            both = da.status.eq("ok") & db.status.eq("ok")
            moved = rel(da.median_ms, db.median_ms)[both].sort_values(ascending=False)
            worst = ", ".join(f"{' '.join(map(str, k[:1] + k[6:]))} {v * 100:.2f}%" for k, v in moved.head(3).items())
            print(f"run to run, {kind}: {a} / {b}: {spread(da.median_ms, db.median_ms, both)}; "
                  f"{int((moved <= 0.03).sum())}/{len(moved)} within 3%; worst: {worst}")


if __name__ == "__main__":
    main()
