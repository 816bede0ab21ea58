"""The report's plots: latency, TFLOP/s and peak memory against sequence length, one line
per backend, and the seed notebook's bar charts.

Figures are made with matplotlib's object API on the Agg canvas, never pyplot, so a report
needs no display and leaves the caller's matplotlib backend alone. Each function takes the
summary rows of one group (columns seq_len, backend, status, median_ms, tflops, peak_mib).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

METRICS = {
    "median_ms": "median time per call (ms)",
    "tflops": "TFLOP/s",
    "peak_mib": "peak memory above inputs (MiB)",
}


def backend_colors(backends) -> dict:
    """One color per backend, the same in every figure of a report."""
    cmap = colormaps["tab10"]
    return {b: cmap(i % 10) for i, b in enumerate(sorted(set(backends)))}


def _wide(values) -> bool:
    """Whether positive values span a decade or more (then a log axis reads better)."""
    v = np.asarray([x for x in values if x == x and x > 0], dtype=float)
    return v.size > 1 and v.max() / v.min() >= 10


def _seq_axis(ax, seqs) -> None:
    seqs = sorted(set(int(s) for s in seqs))
    if len(seqs) > 1 and seqs[-1] / seqs[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(seqs, [str(s) for s in seqs])
    ax.set_xlabel("sequence length")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777")


def _not_plotted(frame) -> str:
    """Backends with no ok cell in the group, and why."""
    bad = frame[~frame["backend"].isin(frame.loc[frame["status"].eq("ok"), "backend"])]
    parts = [f"{b}: {', '.join(sorted(set(d['status'])))}" for b, d in bad.groupby("backend")]
    return "not plotted: " + "; ".join(parts) if parts else ""


def lines(frame, title: str, colors: dict) -> Figure:
    """Three panels (time, TFLOP/s, memory) against sequence length, a line per backend."""
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ok = frame[frame["status"].eq("ok")]
    for ax, (col, label) in zip(fig.subplots(1, 3), METRICS.items(), strict=True):
        data = ok.dropna(subset=[col])
        for backend, d in data.groupby("backend"):
            d = d.sort_values("seq_len")
            ax.plot(d["seq_len"], d[col], marker="o", label=backend, color=colors.get(backend))
        if data.empty:
            _no_data(ax, "no data" if col != "peak_mib" else "no memory data (CPU rows)")
        elif _wide(data[col]):
            ax.set_yscale("log")
        _seq_axis(ax, frame["seq_len"])
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if not data.empty:
            ax.legend(fontsize="small")
    note = _not_plotted(frame)
    fig.suptitle(title + (f"\n{note}" if note else ""))
    return fig


def bars(frame, col: str, title: str, colors: dict) -> Figure:
    """The notebook's chart: a group of bars per sequence length, a bar per backend; a cell that
    did not run is marked by its status where its bar would be."""
    fig = Figure(figsize=(10, 5.4), layout="constrained")
    ax = fig.subplots()
    seqs = sorted(frame["seq_len"].unique())
    backends = sorted(frame["backend"].unique())
    width = 0.8 / len(backends)
    x = np.arange(len(seqs))
    for i, b in enumerate(backends):
        vals = frame[frame["backend"].eq(b)].set_index("seq_len")
        ys = [float(vals[col].get(s, np.nan)) for s in seqs]
        ax.bar(x + (i - (len(backends) - 1) / 2) * width, ys, width, label=b, color=colors.get(b))
    values = frame[col].dropna()
    if values.empty:
        _no_data(ax, "no memory data (CPU rows)" if col == "peak_mib" else "no data")
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


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path
