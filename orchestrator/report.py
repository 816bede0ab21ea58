"""Tables and plots of a dataset: at the end of every sweep, and on demand for any dataset.

    python -m orchestrator.report                                    # every row in outputs/results
    python -m orchestrator.report +sweep=seed dtype=float16          # a named sweep's rows, fp16 only
    python -m orchestrator.report store.path=/data/results sweep_name=mine report.baseline=flash
    python -m orchestrator.report +timing_method=cuda_graph          # any other dataset column: +COLUMN=VALUE

Writes summary.md, report.html (self-contained), a PNG and an SVG per figure and the plotted
numbers as CSV (csv/) into the output folder (Hydra's run folder unless ``output_dir=`` is
given), and prints the tables. Filters: conf/report.yaml. A key that is neither a setting, a
sweep file's key nor a dataset column is refused (exit code 2), as is a filter on a column the
dataset does not have.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import OmegaConf

from orchestrator import cli, report_page
from orchestrator.report_tables import GROUP, PLATFORM, SHAPE
from orchestrator.rows import COLUMNS
from orchestrator.store import Store

log = logging.getLogger("orchestrator.report")  # __name__ is __main__ under python -m
# conf/report.yaml: the report's folder (Hydra's run folder, its report.log) is output_dir when one is given, and
# Hydra then writes no .hydra/ there (output_dir may be a sweep's run folder, whose .hydra/ is the sweep's record)
OmegaConf.register_new_resolver("or_else", lambda value, default: value or default, replace=True)
OmegaConf.register_new_resolver("unless_set", lambda value, then: None if value else then, replace=True)
ROOT = Path(__file__).resolve().parents[1]
FILTERS = ["sweep_name", "run_id", *PLATFORM, *SHAPE, "backend", "status", "target"]
SETTINGS = {"store", "output_dir", "compare", "report", "hydra"}
NUMERIC = [c.name for c in COLUMNS if c.type in ("int64", "double")]
INTEGER = ["head_dim", "num_heads", "batch_size", "seq_len"]
REQUIRED = ["backend", "status", *INTEGER]  # a row without these cannot be placed in any table
MIB = 2**20


class ReportError(ValueError):
    """Nothing to report, or a bad filter: the message says why, in one line."""


def complete(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of the current schema (null where a dataset predates it), the old column
    name ``sweep`` read as ``sweep_name``, and numbers as numbers (an odd value becomes null)."""
    if "sweep" in df.columns:
        old = df["sweep"]
        df = df.drop(columns="sweep")
        df["sweep_name"] = df["sweep_name"].fillna(old) if "sweep_name" in df.columns else old
    missing = [c.name for c in COLUMNS if c.name not in df.columns]
    if missing:
        df = pd.concat([df, pd.DataFrame(None, index=df.index, columns=missing, dtype=object)], axis=1)
    num = {c: pd.to_numeric(df[c], errors="coerce") for c in NUMERIC if df[c].dtype.kind not in "iuf"}
    return df.assign(**num) if num else df


def placeable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a backend, a status and a shape; the others are counted in a warning and left out."""
    bad = df[REQUIRED].isna().any(axis=1)
    if bad.any():
        log.warning("report: %d row(s) without %s left out", int(bad.sum()), ", ".join(REQUIRED))
    df = df[~bad].copy()
    df[INTEGER] = df[INTEGER].astype("int64")
    return df


def fill_platform(df: pd.DataFrame) -> pd.DataFrame:
    """Crashed, timed-out and pre-checked rows carry no device or torch version: take them from
    the rows of the same run and node (or, for rows never scheduled, the same run and target)
    when those agree on one, so such cells land in their shape's table."""
    df = placeable(complete(df)).reset_index(drop=True)
    for where in (["run_id", "node_id"], ["run_id", "target"]):
        known = df.dropna(subset=[*where, *PLATFORM]).drop_duplicates([*where, *PLATFORM])
        known = known.drop_duplicates(where, keep=False)[[*where, *PLATFORM]]
        missing = df[PLATFORM].isna().any(axis=1)
        if not missing.any():
            break
        fill = df.loc[missing, where].merge(known, on=where, how="left")
        for c in PLATFORM:
            df.loc[missing, c] = df.loc[missing, c].fillna(pd.Series(fill[c].to_numpy(), index=df.index[missing]))
    df[PLATFORM] = df[PLATFORM].fillna("?")
    return df


def _values(col: str, want) -> list:
    values = list(want) if isinstance(want, (list, tuple)) else [want]
    if col in NUMERIC:
        return [pd.to_numeric(v, errors="coerce") for v in values]
    return [v if isinstance(v, bool) else str(v) for v in values]


def _sorted(values) -> list:
    """In their own order (64 before 128), or as text where they cannot be compared."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def select(df: pd.DataFrame, filters: dict) -> pd.DataFrame:
    """Rows whose columns hold the given values (one value or a list; None: any)."""
    for col, want in filters.items():
        if want is None:
            continue
        values = _values(col, want)
        hit = df[col].isin(values)
        if not hit.any():
            have = ", ".join(map(str, _sorted(df[col].dropna().unique()))) or "nothing"
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
    for c in ("median_ms", "p10_ms", "p90_ms", "tflops", "pct_of_compute_ceiling", "launch_overhead_ms"):
        d[c] = d[c].where(ok)
    d["peak_mib"] = (d["peak_allocated_bytes"].astype(float) / MIB).where(ok)
    base = d.loc[ok & d["backend"].eq(baseline), [*PLATFORM, *SHAPE, "median_ms", "peak_mib"]]
    base = base.rename(columns={"median_ms": "base_ms", "peak_mib": "base_mib"})
    d = d.merge(base, on=[*PLATFORM, *SHAPE], how="left")
    d["speedup"] = d["base_ms"] / d["median_ms"]
    d["mem_saving"] = d["base_mib"] / d["peak_mib"].where(d["peak_mib"] > 0)
    from orchestrator.report_plots import order

    rank = {b: i for i, b in enumerate([baseline, *order(d["backend"])])}
    d["_rank"] = d["backend"].map(rank)  # the baseline first, then the plots' legend order
    return d.sort_values([*GROUP, "seq_len", "_rank"], ignore_index=True).drop(columns="_rank")


def write(df: pd.DataFrame, out, *, title: str, sweep_name: str | None, baseline: str = "math",
          plots: bool = True, configs: dict | None = None, source: str = "", plotters=None) -> dict:
    """Everything a report holds, made from the selected rows, into the folder out (the figures
    by ``plotters``, processes started ahead, if given)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = report_page.write(summary_frame(df, baseline), out, title=title, seed=sweep_name == "seed",
                            baseline=baseline, plots=plots, configs=configs or {}, source=source, plotters=plotters)
    log.info("report: %s -> %s", res["about"], res["html"])
    return res


def for_sweep(cfg, store: Store, cells, output_dir, plotters=None) -> dict | None:
    """The report at the end of a sweep, of the newest row of each of its cells. A failure here is
    logged, not raised: the rows are saved, and `python -m orchestrator.report` can try again."""
    try:
        df = store.latest()
        df = fill_platform(df[df["cell_id"].isin({c.cell_id for c in cells})])
        if df.empty:
            log.info("report: no rows for this sweep's cells")
            return None
        return write(df, output_dir, title=f"Sweep {cfg.sweep_name}", sweep_name=cfg.sweep_name,
                     baseline=cfg.report.baseline, plots=cfg.report.plots, source=str(store.path),
                     configs={"sweep config": OmegaConf.to_yaml(cfg, resolve=True)}, plotters=plotters)
    except Exception:
        log.exception("report failed (the rows are saved); try: %s", cli.report_command(cfg, output_dir))
        return None


def run_configs(store: Store, run_ids) -> dict[str, str]:
    """The saved config of each run behind the rows; identical configs shown once."""
    by_text: dict[str, list[str]] = {}
    for rid, info in store.runs().items():
        if rid in run_ids and info.get("config"):
            by_text.setdefault(OmegaConf.to_yaml(info["config"]), []).append(rid)
    return {f"run {', '.join(ids)}": text for text, ids in by_text.items()}


def sweep_keys() -> set[str]:
    """Top-level keys a sweep file (conf/sweep/*.yaml, appended with +sweep=NAME) or the sweep
    config may set: the report ignores them."""
    conf = next((d for d in (Path(__file__).resolve().parent / "conf", ROOT / "conf") if d.is_dir()), ROOT / "conf")
    files = [conf / "config.yaml", *(conf / "sweep").glob("*.yaml")]  # a checkout's, or the copy a wheel carries
    keys = {"workload", "measure", "run", "cluster", "capacity", "grid", "sweep_name"}
    for f in files:
        if not f.is_file():
            continue
        node = OmegaConf.load(f)
        keys |= set(node.keys()) if OmegaConf.is_dict(node) else set()
    return keys - {"defaults", "hydra"}


def filters_of(opts: dict) -> dict:
    """The filters asked for: the declared ones (conf/report.yaml) and +COLUMN=VALUE for any other
    dataset column; an unknown key is refused, naming the filters."""
    names = {c.name for c in COLUMNS}
    extra = set(opts) - SETTINGS - set(FILTERS) - sweep_keys()
    unknown = sorted(k for k in extra if k not in names)
    if unknown:
        raise ReportError(f"unknown report key {', '.join(map(repr, unknown))}: not a setting or a dataset column; "
                          f"filters: {', '.join(FILTERS)} (or +COLUMN=VALUE for any column of the dataset)")
    return {k: opts.get(k) for k in [*FILTERS, *sorted(extra)] if opts.get(k) is not None}


def from_config(cfg, output_dir) -> dict:
    """`python -m orchestrator.report` as a plain function: select rows by the filters, then write."""
    opts = OmegaConf.to_container(cfg, resolve=True)
    active = filters_of(opts)
    store = Store(opts["store"]["path"])
    if not Path(store.path).exists():
        raise ReportError(f"store.path = {opts['store']['path']!r}: no such folder ({Path(store.path).resolve()})")
    raw = store.read(set_aside=False)  # a file that is not rows is skipped and named, never moved
    if raw.empty:
        raise ReportError(f"no rows in {store.path}")
    raw = complete(raw)  # a column the store's files lack is all null here, as one written before it existed
    absent = sorted(c for c in active if raw[c].isna().all())
    if absent:
        raise ReportError(f"the dataset in {store.path} has no {', '.join(absent)} column (no row has a value "
                          "there: written before it existed?); drop that filter")
    df = newest(select(fill_platform(raw), active), per_platform=opts.get("compare", True))
    chosen = ", ".join(f"{k}={v}" for k, v in active.items())
    rep = opts.get("report", {})
    import tasks.faults  # noqa: F401  (every backend name, for the baseline; no torch)
    from tasks.backends import names

    if rep.get("baseline", "math") not in names():
        raise ReportError(f"report.baseline = {rep.get('baseline')!r}: not a backend; choose from {', '.join(names())}")
    shown = {"store": opts["store"], "compare": opts.get("compare"), "report": rep, "filters": active}
    configs = {**run_configs(store, set(df["run_id"])), "report config": OmegaConf.to_yaml(shown)}
    return write(df, output_dir, title=f"Attention sweep report: {chosen or 'all rows'}",
                 sweep_name=opts.get("sweep_name"), baseline=rep.get("baseline", "math"),
                 plots=rep.get("plots", True), configs=configs, source=str(store.path))


@hydra.main(version_base="1.3", config_path=cli.CONF, config_name="report")
def app(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    cli.console()
    try:
        from_config(cfg, cfg.get("output_dir") or HydraConfig.get().runtime.output_dir)
    except ReportError as exc:
        log.error("error: %s", exc)
        sys.exit(2)


def main() -> None:
    """``python -m orchestrator.report`` (``attn-report``)."""
    cli.run(app)


if __name__ == "__main__":
    main()
