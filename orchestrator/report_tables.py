"""The report's tables, made from the summary frame (one row per shape, platform and backend):
the best backend per shape, a table per shape group, devices side by side, kernel mismatches,
the environment. Numbers have a fixed count of significant digits per column, never exponents.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from orchestrator.grid import SHAPE
from orchestrator.report_plots import order
from orchestrator.report_render import Table

PLATFORM = ["device_name", "torch_version"]
GROUP = PLATFORM + SHAPE[:-1]  # a table and a figure each; their rows and lines go by seq_len and backend
FAILED_NOTE = ("oom", "error", "crashed", "timeout")
LAUNCH_BOUND = 0.5  # launch_overhead_ms / median_ms at or above this: the host's launches set the pace
NOISY_CI_PCT = 5.0  # median_ci_pct above this: the median is not known to better than this


def sig(x, n: int = 4) -> str:
    """x with n significant digits, positional (18,940 and 0.009568, never 1.894e+04); '–' for none."""
    if x is None or pd.isna(x) or not math.isfinite(float(x)):
        return "–"
    x = float(x)
    if x == 0:
        return "0"
    d = n - 1 - math.floor(math.log10(abs(x)))
    r = round(x, d)
    if r != 0:  # 9.9996 rounds to 10.00: count the digits again
        d = n - 1 - math.floor(math.log10(abs(r)))
        r = round(x, d)
    return f"{r:,.{max(d, 0)}f}"


def times(x) -> str:
    return "–" if x is None or pd.isna(x) else sig(x, 3) + "×"


def pct(x) -> str:
    return "–" if x is None or pd.isna(x) else sig(x, 3) + "%"


def first_line(text, n: int = 90) -> str:
    """The first line of a text, cut to n characters."""
    if text is None or (not isinstance(text, str) and pd.isna(text)):
        return ""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= n else line[: n - 1] + "…"


def group_title(key) -> str:
    k = dict(zip(GROUP, key, strict=True))
    return (
        f"{k['device_name']} · torch {k['torch_version']} · {k['workload']} {k['mode']} · {k['dtype']} · "
        f"{'causal' if k['causal'] else 'non-causal'} · head_dim {k['head_dim']} · {k['num_heads']} heads · "
        f"batch {k['batch_size']}"
    )


def shape_label(key, varying: set[str] = frozenset(GROUP)) -> str:
    """A short name for a group: dtype, head size, heads, batch, and what else varies in the report."""
    k = dict(zip(GROUP, key, strict=True))
    parts = [str(k["device_name"])] if "device_name" in varying else []
    parts += [f"torch {k['torch_version']}"] if "torch_version" in varying else []
    parts += [f"{k['workload']} {k['mode']}"] if {"workload", "mode"} & varying else []
    parts += [f"{k['dtype']} D{k['head_dim']} H{k['num_heads']} B{k['batch_size']}"]
    parts += ["causal" if k["causal"] else "non-causal"] if "causal" in varying else []
    return " · ".join(parts)


def varying(frame: pd.DataFrame) -> set[str]:
    return {c for c in GROUP if frame[c].nunique(dropna=False) > 1}


def slug(key) -> str:
    k = dict(zip(GROUP, key, strict=True))
    name = (
        f"{k['device_name']}_{k['dtype']}_d{k['head_dim']}_h{k['num_heads']}_b{k['batch_size']}_"
        f"{'causal' if k['causal'] else 'full'}_{k['mode']}_{k['workload']}_torch{k['torch_version']}"
    )
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name)


def groups(frame: pd.DataFrame):
    return frame.groupby(GROUP, sort=False, dropna=False)


def _note(r) -> tuple[str, str | None]:
    """(short note, full text or None): the error of a cell that did not run; for one that did,
    what makes its number suspect (launch-bound, a wide confidence interval, foreign kernels)."""
    if r.status != "ok":
        full = None if r.error is None or pd.isna(r.error) else str(r.error).strip()
        short = first_line(full, 240)
        return short, full if full and full != short else None
    notes = []
    over, med = r.launch_overhead_ms, r.median_ms
    if pd.notna(over) and pd.notna(med) and med > 0 and over / med >= LAUNCH_BOUND:
        notes.append(f"launch-bound: host {sig(r.host_median_ms)} ms")
    if pd.notna(r.median_ci_pct) and r.median_ci_pct > NOISY_CI_PCT:
        notes.append(f"noisy: median ±{sig(r.median_ci_pct, 2)}%")
    if r.kernels_match is not None and not pd.isna(r.kernels_match) and not bool(r.kernels_match):
        notes.append("kernels of another backend")
    share = getattr(r, "pct_of_compute_ceiling", None)
    if share is not None and pd.notna(share) and share > 100:
        notes.append("over the device's measured ceiling (its matmul timed slow, as on a busy machine, or a "
                     "kernel doing less work than the flops convention counts)")
    return "; ".join(notes), None


def _spread(r) -> str:
    """p90 - p10 in % of the median."""
    if not (pd.notna(r.p10_ms) and pd.notna(r.p90_ms) and r.median_ms):
        return "–"
    return sig((r.p90_ms - r.p10_ms) / r.median_ms * 100, 2) + "%"


def _columns(baseline: str) -> list[tuple[str, object, str | None]]:
    """(header, cell of an ok row, the column that must have a value in the group for it to show)."""
    return [("median ms", lambda r: sig(r.median_ms), None), ("p10–p90", _spread, "p10_ms"),
            ("TFLOP/s", lambda r: sig(r.tflops), None),
            ("% of ceiling", lambda r: pct(r.pct_of_compute_ceiling), "pct_of_compute_ceiling"),
            ("peak MiB", lambda r: sig(r.peak_mib), None), (f"speedup vs {baseline}", lambda r: times(r.speedup), None),
            (f"memory saving vs {baseline}", lambda r: times(r.mem_saving), None)]


def summary_tables(frame: pd.DataFrame, baseline: str) -> list[Table]:
    """A table per group: every cell with its numbers, or its status and error. Columns no row
    of the group has (spread, share of the ceiling: older datasets) are left out."""
    tables = []
    for key, g in groups(frame):
        cols = [c for c in _columns(baseline) if c[2] is None or g[c[2]].notna().any()]
        t = Table(group_title(key), ["seq_len", "backend", *[c[0] for c in cols], "note"], anchor=slug(key), keys=2)
        for r in g.itertuples():
            note, full = _note(r)
            if full:
                t.full[(len(t.rows), len(t.header) - 1)] = full
            nums = [f(r) for _, f, _ in cols] if r.status == "ok" else [r.status, *["–"] * (len(cols) - 1)]
            t.rows.append([str(r.seq_len), r.backend, *nums, note])
        tables.append(t)
    return tables


def pivot_table(g: pd.DataFrame) -> Table:
    """One group as seq_len x backend median times; the fastest of each length in bold."""
    names = order(g["backend"])
    t = Table("median ms per call", ["seq_len", *names])
    for seq, d in g.groupby("seq_len", sort=True):
        by = {r.backend: r for r in d.itertuples()}
        ok = {b: r.median_ms for b, r in by.items() if r.status == "ok" and pd.notna(r.median_ms)}
        best = min(ok, key=ok.get) if ok else None
        row = [str(seq)]
        for j, b in enumerate(names, start=1):
            r = by.get(b)
            row.append("" if r is None else sig(r.median_ms) if b in ok else r.status)
            if r is not None and r.status != "ok" and pd.notna(r.error):
                t.tips[(len(t.rows), j)] = str(r.error)
            if b == best:
                t.strong.add((len(t.rows), j))
        t.rows.append(row)
    return t


def best_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group and seq_len: the fastest ok backend, the next, the margin, whether they overlap."""
    out = []
    for key, g in frame.groupby([*GROUP, "seq_len"], sort=False, dropna=False):
        ok = g[g["status"].eq("ok") & g["median_ms"].notna()].sort_values("median_ms")
        w = ok.iloc[0] if len(ok) else None
        n = ok.iloc[1] if len(ok) > 1 else None
        out.append({**dict(zip([*GROUP, "seq_len"], key, strict=True)),
                    "winner": None if w is None else w["backend"], "runner_up": None if n is None else n["backend"],
                    "margin": None if n is None else n["median_ms"] / w["median_ms"],
                    "overlap": n is not None and bool(w["p90_ms"] >= n["p10_ms"]),
                    "failed": ", ".join(f"{b} {s}" for b, s in zip(g["backend"], g["status"], strict=True)
                                        if s != "ok")})
    return pd.DataFrame(out)


def _runs(b: pd.DataFrame) -> list[pd.DataFrame]:
    """Consecutive seq_lens with the same winner."""
    b = b.sort_values("seq_len")
    ids = b["winner"].fillna("").ne(b["winner"].fillna("").shift()).cumsum()
    return [seg for _, seg in b.groupby(ids, sort=True)]


def _margin(seg: pd.DataFrame) -> str:
    m = seg["margin"].dropna()
    if m.empty:
        return "–"
    text = times(m.iloc[0]) if sig(m.min(), 3) == sig(m.max(), 3) else f"{sig(m.min(), 3)}–{times(m.max())}"
    return text + (" ≈" if seg["overlap"].any() else "")


def best_table(frame: pd.DataFrame) -> Table:
    """The fastest ok backend of each shape group, its margin over the next, where it changes."""
    best, vary = best_frame(frame), varying(frame)
    t = Table("Best backend per shape", ["shape", "seq_len", "fastest", "margin over next", "next", "change"],
              note="fastest: lowest median time among the cells that ran; a new row where the winner changes with "
                   "seq_len. margin = next fastest median / fastest median (the range over the row's lengths); "
                   "≈: their p10–p90 ranges overlap at some length, so the order may be noise.", anchor="best", keys=2)
    for key, b in best.groupby(GROUP, sort=False, dropna=False):
        prev = None
        for i, seg in enumerate(_runs(b)):
            lo, hi = int(seg["seq_len"].min()), int(seg["seq_len"].max())
            winner = seg["winner"].iloc[0] if seg["winner"].notna().iloc[0] else None
            nxt = ", ".join(dict.fromkeys(seg["runner_up"].dropna())) or "–"
            change = "" if i == 0 else f"{prev or 'none'} → {winner or 'none'} at {lo}"
            t.rows.append([shape_label(key, vary) if i == 0 else "", str(lo) if lo == hi else f"{lo}–{hi}",
                           winner or "none ran", _margin(seg) if winner else "–", nxt if winner else "–", change])
            prev = winner
    return t


def _platform_labels(frame: pd.DataFrame) -> pd.Series:
    """Name platforms by what differs between them: device, torch version, or both."""
    dev, ver = frame["device_name"].astype(str), "torch " + frame["torch_version"].astype(str)
    if frame["torch_version"].nunique() == 1:
        return dev
    return ver if frame["device_name"].nunique() == 1 else dev + " · " + ver


def _shape_text(k: dict) -> str:
    return (f"{k['workload']} {k['mode']} {k['dtype']} {'causal' if k['causal'] else 'full'} "
            f"D{k['head_dim']} H{k['num_heads']} B{k['batch_size']} N{k['seq_len']}")


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
        cells = [(by[p].status if by[p].status != "ok" else sig(by[p].median_ms)) if p in by else "–" for p in plats]
        first = by[plats[0]].median_ms if plats[0] in by else float("nan")
        ratios = [times(first / by[p].median_ms) if p in by else "–" for p in plats[1:]]
        rows.append([_shape_text(dict(zip(keys, key, strict=True))), key[-1], *cells, *ratios])
    header = ["shape", "backend", *[f"{p} ms" for p in plats], *[f"speedup {p} vs {plats[0]}" for p in plats[1:]]]
    note = f"speedup = median on {plats[0]} / median on the other platform (above 1: faster there)."
    return Table("Same cells on different devices or torch versions", header, rows, note, anchor="compare", keys=2)


def mismatch_table(frame: pd.DataFrame) -> Table | None:
    """Cells whose kernels do not belong to the pinned backend: their numbers measure something else."""
    bad = frame[frame["kernels_match"].eq(False)]
    if bad.empty:
        return None
    t = Table("Kernels that do not match the pinned backend", ["device", "shape", "backend", "kernels"],
              anchor="kernels", keys=3)
    for r in bad.itertuples():
        t.full[(len(t.rows), 3)] = str(r.kernels)
        t.rows.append([r.device_name, _shape_text(r._asdict()), r.backend, first_line(r.kernels, 160)])
    return t


def _distinct(s: pd.Series) -> str:
    return ", ".join(sorted(set(map(str, s.dropna())))) or "–"


def _ceilings(g: pd.DataFrame) -> str:
    rates = g.dropna(subset=["ceiling_tflops"]).groupby("dtype")["ceiling_tflops"].median()
    parts = [f"{d} {sig(v, 3)} TFLOP/s" for d, v in rates.items()]
    bw = pd.to_numeric(g["ceiling_gbps"], errors="coerce").median()
    return "; ".join(parts + ([f"{sig(bw, 3)} GB/s"] if pd.notna(bw) else [])) or "–"


ENV = [("driver", "driver_version"), ("CUDA", "cuda_version"), ("cuDNN", "cudnn_version"),
       ("compute capability", "compute_capability"), ("host", "host"), ("git commit", "git_commit"),
       ("tool version", "tool_version"), ("timing", "timing_method")]


def environment_table(frame: pd.DataFrame) -> Table:
    """A row per device and torch version; columns no row has are left out."""
    header = ["device", "torch", *[h for h, _ in ENV], "measured ceilings", "cells", "runs"]
    rows = [[*map(str, key), *[_distinct(g[c]) for _, c in ENV], _ceilings(g), str(len(g)), _distinct(g["run_id"])]
            for key, g in frame.groupby(PLATFORM, dropna=False)]
    keep = [i for i in range(len(header)) if any(r[i] != "–" for r in rows)]
    return Table("Environment", [header[i] for i in keep], [[r[i] for i in keep] for r in rows], anchor="environment",
                 textual=True)
