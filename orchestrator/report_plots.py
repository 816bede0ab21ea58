"""The report's plots: time, TFLOP/s, peak memory and speedup against sequence length, one line
per backend, and the seed notebook's bar charts.

Every backend has one colour, marker and line style in every figure of every report (STYLES;
a backend not in the table gets a stable pick from its name's hash). Lines carry their
p10-p90 spread as a band; a cell that did not run (oom, unsupported, error...) is marked at
the panel's top edge above its sequence length, joined to the line by a dotted segment.
Figures use matplotlib's object API, never pyplot; orchestrator/report_files.py writes them
(PNG, SVG) and their numbers (CSV).
"""

from __future__ import annotations

import textwrap
import zlib

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

METRICS = {
    "median_ms": "median time per call (ms)",
    "tflops": "TFLOP/s",
    "peak_mib": "peak memory above inputs (MiB)",
    "speedup": "speedup vs {baseline} (×)",
}
# backend: (colour, marker, line style, line width). Okabe-Ito colours (colour-blind safe);
# earlier backends draw wider lines underneath, so lines that coincide stay visible.
STYLES = {
    "eager": ("#D55E00", "v", (0, (1, 1.2)), 2.2),
    "math": ("#000000", "D", ":", 2.2),
    "flash": ("#0072B2", "o", "-", 3.2),
    "efficient": ("#E69F00", "^", "--", 2.2),
    "cudnn": ("#009E73", "s", "-.", 1.4),
    "flex": ("#CC79A7", "P", (0, (5, 1, 1, 1)), 1.6),
}
PLOT_COLUMNS = ["backend", "seq_len", "status", "median_ms", "p10_ms", "p90_ms", "tflops", "peak_mib", "speedup",
                "ceiling_tflops"]
_SPARE_COLORS = ["#56B4E9", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD", "#F0E442", "#1F77B4", "#AEC7E8",
                 "#FF9896", "#98DF8A", "#C5B0D5", "#C49C94", "#F7B6D2", "#DBDB8D", "#9EDAE5", "#393B79", "#637939"]
_SPARE_MARKERS = ["h", "p", "<", ">", "8", "H", "1", "2", "3", "4"]
FAILED_MARKS = {"oom": "X", "unsupported": "x", "error": "*", "crashed": "P", "timeout": "d"}  # filled, at the top
_OTHER_MARK = "*"


_PLAIN = FuncFormatter(lambda v, _: f"{v:,.10g}")


def log_axis(axis, values) -> None:
    """A log scale labelled 0.01, 100, 1,000 (no mathtext: slow to lay out), with 2 and 5 between
    the powers of ten when the values span less than two decades."""
    axis.axes.set_yscale("log") if axis.axis_name == "y" else axis.axes.set_xscale("log")
    v = np.asarray([x for x in values if x == x and x > 0], dtype=float)
    if v.size and v.max() / v.min() < 100:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(_PLAIN)
    axis.set_minor_formatter(NullFormatter())


def style(backend: str) -> dict:
    """Line keywords of a backend: the table's, or a stable pick from the name's CRC32."""
    if backend in STYLES:
        color, marker, ls, lw = STYLES[backend]
    else:
        h = zlib.crc32(backend.encode())
        color, marker = _SPARE_COLORS[h % len(_SPARE_COLORS)], _SPARE_MARKERS[(h >> 8) % len(_SPARE_MARKERS)]
        ls, lw = "-", 1.6
    return {"color": color, "marker": marker, "linestyle": ls, "linewidth": lw, "markersize": 6,
            "markerfacecolor": "white", "markeredgewidth": 1.4}


def order(backends) -> list[str]:
    """Backends in the table's order, others after them by name: the same legend everywhere."""
    known = list(STYLES)
    return sorted(set(backends), key=lambda b: (known.index(b) if b in known else len(known), b))


def backend_colors(backends) -> dict:
    """One colour per backend, the same in every figure of every report."""
    return {b: style(b)["color"] for b in set(backends)}


def _wide(values) -> bool:
    """Whether positive values span a decade or more (then a log axis reads better)."""
    v = np.asarray([x for x in values if x == x and x > 0], dtype=float)
    return v.size > 1 and v.max() / v.min() >= 10


def _seq_axis(ax, seqs) -> None:
    seqs = sorted(set(int(s) for s in seqs))
    if len(seqs) > 1 and seqs[-1] / seqs[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    labels = [f"{s // 1024}k" if s >= 4096 and s % 1024 == 0 else str(s) for s in seqs]
    ax.set_xticks(seqs, labels, fontsize="small")
    ax.set_xlabel("sequence length", fontsize="small")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777")


def _not_plotted(frame) -> str:
    """Backends with no ok cell in the group, and why."""
    bad = frame[~frame["backend"].isin(frame.loc[frame["status"].eq("ok"), "backend"])]
    parts = [f"{b}: {', '.join(sorted(set(d['status'])))}" for b, d in bad.groupby("backend")]
    return "not plotted: " + "; ".join(parts) if parts else ""


def _band(col: str, d: pd.DataFrame):
    """The p10-p90 spread of a metric, where it has one: (low, high) arrays or None."""
    if col == "median_ms":
        return d["p10_ms"].to_numpy(float), d["p90_ms"].to_numpy(float)
    if col == "tflops":  # a slow call (p90) is a low rate
        return (d["tflops"] * d["median_ms"] / d["p90_ms"]).to_numpy(float), \
               (d["tflops"] * d["median_ms"] / d["p10_ms"]).to_numpy(float)
    if col == "speedup":
        return (d["speedup"] * d["median_ms"] / d["p90_ms"]).to_numpy(float), \
               (d["speedup"] * d["median_ms"] / d["p10_ms"]).to_numpy(float)
    return None


def _panel(ax, frame: pd.DataFrame, col: str, label: str) -> dict:
    """One metric: a line and a band per backend; returns {backend: (seq_lens, values)} plotted."""
    data = frame[frame["status"].eq("ok") & frame[col].notna()]
    lines_ = {}
    for backend in order(data["backend"]):
        d = data[data["backend"].eq(backend)].sort_values("seq_len")
        st, x = style(backend), d["seq_len"].to_numpy()
        lines_[backend] = (x, d[col].to_numpy(float))
        ax.plot(x, lines_[backend][1], label=backend, gid=f"line-{col}-{backend}", zorder=3, **st)
        band = _band(col, d)
        if band is not None and np.isfinite(band[0]).any():
            ax.fill_between(x, *band, color=st["color"], alpha=0.22, lw=0, zorder=2, gid=f"band-{col}-{backend}")
    if data.empty:
        _no_data(ax, "no memory data" if col == "peak_mib" else "no data")
    elif _wide(data[col]) or (col == "speedup" and _wide([*data[col], 1.0])):
        log_axis(ax.yaxis, data[col])
    _seq_axis(ax, frame["seq_len"])
    ax.set_ylabel(label, fontsize="small")
    ax.tick_params(labelsize="small")
    ax.grid(True, which="major", alpha=0.3)
    return lines_


def _make_room(ax, levels: int) -> float:
    """Raise the top of the y axis so that the data end below a strip for `levels` rows of marks;
    returns the strip's lowest row (axes fraction)."""
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    top = 0.96 - _step(levels) * levels  # the data's top, as a fraction of the axis
    if ax.get_yscale() == "log":
        hi = lo * (hi / lo) ** (1 / top)
    else:
        hi = lo + (hi - lo) / top
    ax.set_ylim(lo, hi)
    return top + 0.04


def _step(levels: int) -> float:
    """Height of a row of marks (axis fraction): the strip takes at most about a third of the panel."""
    return min(0.065, 0.34 / max(levels, 1))


def _mark_failures(ax, bad: list[tuple[str, int, str]], lines_: dict, col: str) -> None:
    """Cells that did not run, (backend, seq_len, status) in legend order: a status mark in the
    backend's colour in a strip along the top edge, above the cell's length (stacked when several
    backends fail there); for time and memory, which grow with length, a dotted line to it from
    the backend's nearest point, where its line would continue."""
    if not bad:
        return
    stack: dict[int, int] = {}
    for _, seq, _ in bad:
        stack[seq] = stack.get(seq, 0) + 1
    row0, step = _make_room(ax, max(stack.values())), _step(max(stack.values()))
    to_data, stack = ax.transData.inverted(), {}
    for backend, seq, status in bad:
        n = stack[seq] = stack.get(seq, -1) + 1
        y = to_data.transform(ax.transAxes.transform((0.5, row0 + step * n)))[1]
        color = style(backend)["color"]
        ax.plot([seq], [y], ls="", marker=FAILED_MARKS.get(status, _OTHER_MARK), markersize=8, color=color,
                zorder=4, clip_on=False, gid=f"{status}-{col}-{backend}-{seq}")
        if backend in lines_ and col in ("median_ms", "peak_mib"):
            xs, ys = lines_[backend]
            i = int(np.abs(xs - seq).argmin())
            lo, hi = sorted((xs[i], seq))
            if not any(b == backend and lo < s < hi for b, s, _ in bad):  # only the mark next to the line
                ax.plot([xs[i], seq], [ys[i], y], ls=":", lw=1, color=color, zorder=2)


def _ceiling_axis(ax, frame: pd.DataFrame) -> None:
    """A right-hand axis in % of the device's measured matmul rate, when the group has one."""
    ceil = pd.to_numeric(frame["ceiling_tflops"], errors="coerce").dropna().round(1).unique()
    if len(ceil) != 1 or not ceil[0] > 0:
        return
    c = float(ceil[0])
    sec = ax.secondary_yaxis("right", functions=(lambda t: t / c * 100, lambda p: p * c / 100))
    sec.set_ylabel(f"% of measured ceiling ({c:.4g} TFLOP/s)", fontsize="small")
    sec.tick_params(labelsize="small")


def _legend(fig: Figure, frame: pd.DataFrame) -> None:
    handles = [Line2D([], [], label=b, **style(b)) for b in order(frame["backend"])]
    handles.append(Patch(color="#888", alpha=0.3, label="p10–p90"))
    for status in sorted(set(frame["status"]) - {"ok"}):
        handles.append(Line2D([], [], ls="", color="#444", markersize=8,
                              marker=FAILED_MARKS.get(status, _OTHER_MARK), label=f"{status} (did not run)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize="small",
               frameon=False)


def lines(frame, title: str, colors: dict | None = None, baseline: str = "math") -> Figure:
    """Four panels (time, TFLOP/s, memory, speedup) against sequence length, a line per backend.
    ``colors`` is accepted for compatibility; colours come from STYLES."""
    fig = Figure(figsize=(8, 6.4), layout="constrained")
    frame = frame[PLOT_COLUMNS]
    rank = {b: i for i, b in enumerate(order(frame["backend"]))}
    bad = sorted(((r.backend, int(r.seq_len), r.status) for r in frame[frame["status"].ne("ok")].itertuples()),
                 key=lambda t: (rank[t[0]], t[1]))
    for ax, (col, label) in zip(fig.subplots(2, 2).flat, METRICS.items(), strict=True):
        lines_ = _panel(ax, frame, col, label.format(baseline=baseline))
        _mark_failures(ax, bad, lines_, col)
        if col == "tflops" and lines_:
            _ceiling_axis(ax, frame)
        if col == "speedup" and lines_:
            ax.axhline(1.0, color="#999", lw=0.8, zorder=1)
    note = textwrap.fill(_not_plotted(frame), 100)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize="medium")
    _legend(fig, frame)
    return fig


def bars(frame, col: str, title: str, colors: dict | None = None) -> Figure:
    """The notebook's chart: a group of bars per sequence length, a bar per backend (time bars
    with p10-p90 error bars); a cell that did not run shows its status where its bar would be."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    seqs, backends = sorted(frame["seq_len"].unique()), order(frame["backend"])
    width, x = 0.8 / len(backends), np.arange(len(seqs))
    for i, b in enumerate(backends):
        vals = frame[frame["backend"].eq(b) & frame["status"].eq("ok")].set_index("seq_len")
        ys = np.array([float(vals[col].get(s, np.nan)) for s in seqs])
        err = None
        if col == "median_ms":
            lo = np.array([float(vals["p10_ms"].get(s, np.nan)) for s in seqs])
            hi = np.array([float(vals["p90_ms"].get(s, np.nan)) for s in seqs])
            err = np.nan_to_num(np.vstack([ys - lo, hi - ys]).clip(min=0))
        ax.bar(x + (i - (len(backends) - 1) / 2) * width, ys, width, label=b, color=style(b)["color"],
               yerr=err, ecolor="#333", capsize=2, gid=f"bars-{b}")
    values = frame[col].dropna()
    if values.empty:
        _no_data(ax, "no memory data" if col == "peak_mib" else "no data")
    elif _wide(values):
        ax.set_yscale("log")
    for i, b in enumerate(backends):
        bad = frame[frame["backend"].eq(b) & frame["status"].ne("ok")]
        for s, status in zip(bad["seq_len"], bad["status"], strict=True):
            pos = seqs.index(s) + (i - (len(backends) - 1) / 2) * width
            ax.text(pos, 0.02, status, transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="bottom",
                    fontsize="small", color="#b00")
    ax.set_xticks(x, [str(s) for s in seqs])
    ax.set_xlabel("sequence length")
    ax.set_ylabel(METRICS[col])
    ax.legend(fontsize="small")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    return fig
