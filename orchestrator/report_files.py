"""A report's figure files: each figure as a PNG fit for slides with an SVG beside it, the
plotted numbers as wide CSVs (one column per backend, as ``triton.testing.perf_report``
writes them), and all of a report's figures drawn in parallel processes (``plotters.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from orchestrator.plotters import Plotters, count, serve
from orchestrator.report_plots import METRICS, bars, lines, order

log = logging.getLogger(__name__)
DPI = 200  # the line figure's 8 x 6.4 in: 1600 x 1280 px, sharp on a 1080p slide and in a page column


def save(fig: Figure, path: Path) -> Path:
    """The PNG at DPI (256 colours: a third of the bytes, the same look for line art) and an SVG
    beside it (text kept as text, fixed ids: diffable). The layout is computed once, for both."""
    path = Path(path)
    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, dpi=(DPI, DPI))
    fig.set_layout_engine("none")
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "attention-sweep"}):
        fig.savefig(path.with_suffix(".svg"), dpi=DPI, metadata={"Date": None, "Creator": None})
    return path


def render(job: dict) -> Path:
    """One figure file set from plain data (a process pool's task): job = {kind: lines|bars,
    frame, title, path, baseline | col}; lines also write their CSVs into path's folder/csv."""
    frame, path = job["frame"], Path(job["path"])
    if job["kind"] == "bars":
        return save(bars(frame, job["col"], job["title"]), path)
    write_csv(frame, path.parent / "csv", path.stem)
    return save(lines(frame, job["title"], baseline=job["baseline"]), path)


def render_all(jobs: list[dict], workers: int | None = None) -> list[Path]:
    """Every job, here; with several jobs and CPUs, slices of them in plotting processes started
    for it (``plotters.py``) beside this one."""
    workers = count(len(jobs)) if workers is None else workers
    if workers < 2 or len(jobs) < 3:
        return [render(j) for j in jobs]
    helpers = Plotters(workers - 1)
    try:
        pending = helpers.submit([j for i, j in enumerate(jobs) if i % workers], render)
        for job in jobs[::workers]:
            render(job)
        pending.wait()
    finally:
        helpers.close()
    return [Path(j["path"]) for j in jobs]


def wide(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    """One metric as triton's perf_report writes it: seq_len, then a column per backend (empty
    where the cell did not run); for time, also each backend's p10 and p90."""
    ok = frame[frame["status"].eq("ok")]
    cols = [col, "p10_ms", "p90_ms"] if col == "median_ms" else [col]
    t = ok.pivot_table(index="seq_len", columns="backend", values=cols, aggfunc="first", dropna=False)
    t = t.reindex(sorted(frame["seq_len"].unique()))
    out = pd.DataFrame({"seq_len": t.index.astype(int)})
    names = order(frame["backend"])
    for suffix, c in zip(["", "-p10", "-p90"], cols, strict=False):
        for b in names:
            out[f"{b}{suffix}"] = t[(c, b)].to_numpy() if (c, b) in t.columns else np.nan
    return out


def write_csv(frame: pd.DataFrame, folder: Path, stem: str) -> list[Path]:
    """A wide CSV per plotted metric: FOLDER/STEM.METRIC.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for col in METRICS:
        p = folder / f"{stem}.{col}.csv"
        wide(frame, col).to_csv(p, index=False, float_format="%.6g")
        paths.append(p)
    return paths


if __name__ == "__main__":  # a plotting process (plotters.py)
    serve(render)
