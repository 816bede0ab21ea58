"""Tables and plots of a dataset: at the end of every sweep, and on demand for any dataset.

    python -m orchestrator.report                                    # every row in outputs/results
    python -m orchestrator.report sweep=seed dtype=float16           # a named sweep's rows, fp16 only
    python -m orchestrator.report store.path=/data/results sweep_name=mine report.baseline=flash

Writes summary.md, report.html (self-contained) and PNG plots into the output folder (Hydra's
run folder unless ``output_dir=`` is given) and prints the summary. Filters: conf/report.yaml.
"""

from __future__ import annotations

import re
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import OmegaConf

from orchestrator import report_plots as plots
from orchestrator.report_render import Table, html_image, html_page, html_pre, html_table, markdown, print_tables
from orchestrator.store import SCHEMA, Store

SHAPE = ["workload", "mode", "dtype", "causal", "head_dim", "num_heads", "batch_size", "seq_len"]
PLATFORM = ["device_name", "torch_version"]
GROUP = PLATFORM + SHAPE[:-1]  # a table and a figure each; their rows and lines go by seq_len and backend
FILTERS = {"sweep_name": "sweep", **{c: c for c in ["run_id", *PLATFORM, *SHAPE, "backend", "status", "target"]}}
ENV = ["driver_version", "cuda_version", "cudnn_version", "compute_capability", "host", "git_commit"]
MIB = 2**20
NOTE = (
    "median ms: median time per call; TFLOP/s: by the row's flops convention; peak MiB: PyTorch peak allocated "
    "above the inputs (– where the row has none); speedup = {b} median / backend median; memory saving = {b} peak / "
    "backend peak; a cell that did not run shows its status instead of numbers."
)


class ReportError(ValueError):
    """Nothing to report: the message says why, in one line."""


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of the current schema, so a dataset written before a column existed still reports."""
    missing = [c for c in SCHEMA.names if c not in df.columns]
    return df.assign(**{c: None for c in missing}) if missing else df


def fill_platform(df: pd.DataFrame) -> pd.DataFrame:
    """Crashed, timed-out and pre-checked rows carry no device or torch version: take them from
    the rows of the same run and node (or, for rows never scheduled, the same run and target)
    when those agree on one, so such cells land in their shape's table."""
    df = complete(df).reset_index(drop=True)
    for where in (["run_id", "node_id"], ["run_id", "target"]):
        known = df.dropna(subset=[*where, *PLATFORM]).drop_duplicates([*where, *PLATFORM])
        known = known.drop_duplicates(where, keep=False)[[*where, *PLATFORM]]
        missing = df[PLATFORM].isna().any(axis=1)
        fill = df.loc[missing, where].merge(known, on=where, how="left")
        for c in PLATFORM:
            df.loc[missing, c] = df.loc[missing, c].fillna(pd.Series(fill[c].to_numpy(), index=df.index[missing]))
    df[PLATFORM] = df[PLATFORM].fillna("?")
    return df


def select(df: pd.DataFrame, filters: dict) -> pd.DataFrame:
    """Rows whose columns hold the given values (one value or a list; None: any)."""
    for col, want in filters.items():
        if want is None:
            continue
        values = list(want) if isinstance(want, (list, tuple)) else [want]
        if df[col].dtype == object:
            values = [str(v) for v in values]
        hit = df[col].isin(values)
        if not hit.any():
            have = ", ".join(sorted(map(str, df[col].dropna().unique()))) or "nothing"
            raise ReportError(f"no rows with {col} in {values}; the selected rows have {col}: {have}")
        df = df[hit]
    return df


def newest(df: pd.DataFrame, per_platform: bool = True) -> pd.DataFrame:
    """The newest row of each cell, or of each cell on each device and torch version (to compare them)."""
    return df.drop_duplicates(["cell_id", *PLATFORM] if per_platform else ["cell_id"], keep="last")


def summary_frame(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per shape, platform and backend, with the numbers the tables and plots show."""
    d = complete(df).drop_duplicates([*PLATFORM, *SHAPE, "backend"], keep="last").copy()
    ok = d["status"].eq("ok")
    d["median_ms"] = d["median_ms"].where(ok)
    d["tflops"] = d["tflops"].where(ok)
    d["peak_mib"] = (d["peak_allocated_bytes"].astype(float) / MIB).where(ok)
    base = d.loc[ok & d["backend"].eq(baseline), [*PLATFORM, *SHAPE, "median_ms", "peak_mib"]]
    base = base.rename(columns={"median_ms": "base_ms", "peak_mib": "base_mib"})
    d = d.merge(base, on=[*PLATFORM, *SHAPE], how="left")
    d["speedup"] = d["base_ms"] / d["median_ms"]
    d["mem_saving"] = d["base_mib"] / d["peak_mib"].where(d["peak_mib"] > 0)
    d["_rank"] = d["backend"].ne(baseline)  # the baseline first in each shape
    return d.sort_values([*GROUP, "seq_len", "_rank", "backend"], ignore_index=True).drop(columns="_rank")


def _num(x, fmt: str) -> str:
    return "–" if pd.isna(x) else format(x, fmt)


def _x(x) -> str:
    return "–" if pd.isna(x) else f"{x:.3g}×"


def _short(text, n: int = 90) -> str:
    text = "" if pd.isna(text) else " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def group_title(key) -> str:
    k = dict(zip(GROUP, key, strict=True))
    return (
        f"{k['device_name']} · torch {k['torch_version']} · {k['workload']} {k['mode']} · {k['dtype']} · "
        f"{'causal' if k['causal'] else 'non-causal'} · head_dim {k['head_dim']} · {k['num_heads']} heads · "
        f"batch {k['batch_size']}"
    )


def slug(key) -> str:
    k = dict(zip(GROUP, key, strict=True))
    name = (
        f"{k['device_name']}_{k['dtype']}_d{k['head_dim']}_h{k['num_heads']}_b{k['batch_size']}_"
        f"{'causal' if k['causal'] else 'full'}_{k['mode']}_{k['workload']}_torch{k['torch_version']}"
    )
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name)


def summary_tables(frame: pd.DataFrame, baseline: str) -> list[Table]:
    header = ["seq_len", "backend", "median ms", "TFLOP/s", "peak MiB", f"speedup vs {baseline}",
              f"memory saving vs {baseline}", "note"]
    return [Table(group_title(key), header, [_summary_row(r) for r in g.itertuples()])
            for key, g in frame.groupby(GROUP, sort=False, dropna=False)]


def _summary_row(r) -> list[str]:
    if r.status != "ok":
        return [str(r.seq_len), r.backend, r.status, "–", "–", "–", "–", _short(r.error)]
    return [str(r.seq_len), r.backend, _num(r.median_ms, ".4g"), _num(r.tflops, ".4g"), _num(r.peak_mib, ".4g"),
            _x(r.speedup), _x(r.mem_saving), ""]


def _platform_labels(frame: pd.DataFrame) -> pd.Series:
    """Name platforms by what differs between them: device, torch version, or both."""
    dev, ver = frame["device_name"].astype(str), "torch " + frame["torch_version"].astype(str)
    if frame["torch_version"].nunique() == 1:
        return dev
    return ver if frame["device_name"].nunique() == 1 else dev + " · " + ver


def comparison_table(frame: pd.DataFrame) -> Table | None:
    """The same cells measured on different devices or torch versions, side by side."""
    keys = [*SHAPE, "backend"]
    f = frame.assign(platform=_platform_labels(frame))
    f = f[f.groupby(keys, dropna=False)["platform"].transform("nunique") > 1]
    if f.empty:
        return None
    plats = sorted(f["platform"].unique())
    rows = []
    for key, g in f.groupby(keys, dropna=False):
        by = {r.platform: r for r in g.itertuples()}
        cells = [(by[p].status if by[p].status != "ok" else _num(by[p].median_ms, ".4g")) if p in by else "–"
                 for p in plats]
        first = by[plats[0]].median_ms if plats[0] in by else float("nan")
        ratios = [_x(first / by[p].median_ms) if p in by else "–" for p in plats[1:]]
        rows.append([_shape_label(dict(zip(keys, key, strict=True))), key[-1], *cells, *ratios])
    header = ["shape", "backend", *[f"{p} ms" for p in plats], *[f"speedup {p} vs {plats[0]}" for p in plats[1:]]]
    note = f"speedup = median on {plats[0]} / median on the other platform (above 1: faster there)."
    return Table("Same cells on different devices or torch versions", header, rows, note)


def _shape_label(k: dict) -> str:
    return (f"{k['workload']} {k['mode']} {k['dtype']} {'causal' if k['causal'] else 'full'} "
            f"D{k['head_dim']} H{k['num_heads']} B{k['batch_size']} N{k['seq_len']}")


def mismatch_table(frame: pd.DataFrame) -> Table | None:
    """Cells whose GPU kernels do not belong to the pinned backend: their numbers measure something else."""
    bad = frame[frame["kernels_match"].eq(False)]
    if bad.empty:
        return None
    rows = [[r.device_name, _shape_label(r._asdict()), r.backend, _short(r.kernels, 160)] for r in bad.itertuples()]
    return Table("Kernels that do not match the pinned backend", ["device", "shape", "backend", "kernels"], rows)


def _distinct(s: pd.Series) -> str:
    return ", ".join(sorted(set(map(str, s.dropna())))) or "–"


def environment_table(frame: pd.DataFrame) -> Table:
    rows = [[*map(str, key), *[_distinct(g[c]) for c in ENV], str(len(g)), _distinct(g["run_id"])]
            for key, g in frame.groupby(PLATFORM, dropna=False)]
    return Table("Environment", ["device", "torch", "driver", "CUDA", "cuDNN", "compute capability", "host",
                                 "git commit", "cells", "runs"], rows)


def draw(frame: pd.DataFrame, out: Path, seed: bool) -> list[Path]:
    """A line figure per group; for the seed sweep also the notebook's time and memory bar charts."""
    colors = plots.backend_colors(frame["backend"])
    paths = []
    for key, g in frame.groupby(GROUP, sort=False, dropna=False):
        title, name = group_title(key), slug(key)
        paths.append(plots.save(plots.lines(g, title, colors), out / f"lines_{name}.png"))
        if seed:
            for col, what in (("median_ms", "time"), ("peak_mib", "memory")):
                fig = plots.bars(g, col, f"{what} by sequence length\n{title}", colors)
                paths.append(plots.save(fig, out / f"bars_{what}_{name}.png"))
    return paths


def write(df: pd.DataFrame, out, *, title: str, sweep_name: str | None, baseline: str = "math",
          plots: bool = True, configs: dict | None = None, source: str = "") -> dict:
    """Everything a report holds, made from the selected rows, into the folder out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = summary_frame(df, baseline)
    tables = summary_tables(frame, baseline)
    extra = [t for t in (comparison_table(frame), mismatch_table(frame)) if t is not None]
    env = environment_table(frame)
    images = draw(frame, out, seed=sweep_name == "seed") if plots else []
    tally = ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().sort_index().items())
    about = (f"{len(frame)} cells ({tally}) from {source or 'the dataset'}; baseline {baseline}; "
             f"made {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.")
    note = NOTE.format(b=baseline)
    if not frame["backend"].eq(baseline).any():
        about += f" The baseline {baseline} has no rows here: speedups are blank (set report.baseline)."
    md = [f"# {title}", "", about, "", markdown(env, 2), "## Summary", "", note, "",
          *map(markdown, tables), *[markdown(t, 2) for t in extra], "## Plots", "",
          *[f"![{p.name}]({p.name})\n" for p in images]]
    (out / "summary.md").write_text("\n".join(md))
    page = html_page(title, [
        ("About", f"<p>{about}</p>"), ("Environment", html_table(env, titled=False)),
        ("Summary", f"<p class='note'>{note}</p>" + "".join(map(html_table, tables))),
        ("Plots", "".join(html_image(p) for p in images)), *[(t.title, html_table(t, titled=False)) for t in extra],
        ("Config", "".join(html_pre(text, name) for name, text in (configs or {}).items())),
    ])
    (out / "report.html").write_text(page)
    print_tables(tables + extra)
    print(f"report: {about} -> {out / 'report.html'}", flush=True)
    return {"summary": out / "summary.md", "html": out / "report.html", "images": images, "frame": frame}


def for_sweep(cfg, store: Store, cells, output_dir) -> dict | None:
    """The report at the end of a sweep, of the newest row of each of its cells. A failure here is
    printed, not raised: the rows are saved, and `python -m orchestrator.report` can try again."""
    try:
        df = store.latest()
        df = fill_platform(df[df["cell_id"].isin({c.cell_id for c in cells})])
        if df.empty:
            print("report: no rows for this sweep's cells", flush=True)
            return None
        return write(df, output_dir, title=f"Sweep {cfg.sweep_name}", sweep_name=cfg.sweep_name,
                     baseline=cfg.report.baseline, plots=cfg.report.plots, source=str(store.path),
                     configs={"sweep config": OmegaConf.to_yaml(cfg, resolve=True)})
    except Exception:
        traceback.print_exc()
        print(f"report failed (the rows are saved); try: python -m orchestrator.report store.path={store.path} "
              f"sweep_name={cfg.sweep_name}", file=sys.stderr, flush=True)
        return None


def run_configs(store: Store, run_ids) -> dict[str, str]:
    """The saved config of each run behind the rows; identical configs shown once."""
    by_text: dict[str, list[str]] = {}
    for rid, info in store.runs().items():
        if rid in run_ids and info.get("config"):
            by_text.setdefault(OmegaConf.to_yaml(info["config"]), []).append(rid)
    return {f"run {', '.join(ids)}": text for text, ids in by_text.items()}


def from_config(cfg, output_dir) -> dict:
    """`python -m orchestrator.report` as a plain function: select rows by the filters, then write."""
    opts = OmegaConf.to_container(cfg, resolve=True)
    filters = {col: opts.get(key) for key, col in FILTERS.items()}
    store = Store(opts["store"]["path"])
    df = store.read()
    if df.empty:
        raise ReportError(f"no rows in {store.path}")
    df = newest(select(fill_platform(df), filters), per_platform=opts.get("compare", True))
    active = {k: v for k, v in filters.items() if v is not None}
    chosen = ", ".join(f"{k}={v}" for k, v in active.items())
    rep = opts.get("report", {})
    shown = {"store": opts["store"], "compare": opts.get("compare"), "report": rep, "filters": active}
    configs = {**run_configs(store, set(df["run_id"])), "report config": OmegaConf.to_yaml(shown)}
    return write(df, output_dir, title=f"Attention sweep report: {chosen or 'all rows'}",
                 sweep_name=opts.get("sweep_name"), baseline=rep.get("baseline", "math"),
                 plots=rep.get("plots", True), configs=configs, source=str(store.path))


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        from_config(cfg, cfg.get("output_dir") or HydraConfig.get().runtime.output_dir)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
