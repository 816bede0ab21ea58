"""The capacity search's table and plot (``+sweep=capacity``), from plain data.

``results``: one dict per search, as ``capacity.result()`` returns (workload, mode, dtype,
batch_size, num_heads, head_dim, causal, backend, longest_fit, at_max, first_fail,
fail_status, trials, model, coef, limit_bytes, extrapolated; optional limit_source:
"device" or "memory_limit_bytes"). ``points``: for each result, its trials' measured
(seq_len, bytes). Nothing here imports the search.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from orchestrator import report_plots as plots
from orchestrator.report_files import save
from orchestrator.report_render import Table, print_tables
from orchestrator.report_tables import sig

log = logging.getLogger(__name__)
GIB = 2**30
SHAPE = ("workload", "mode", "dtype", "batch_size", "num_heads", "head_dim", "causal")


def _n(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def _gib(b) -> str:
    return "-" if not b else f"{sig(b / GIB, 3)} GiB"


def rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["workload", "mode", "dtype", "batch", "heads x dim", "backend", "longest that fits", "first that fails",
              "trials", "memory model", "limit", "extrapolated longest"]
    body = []
    for r in results:
        fit_n = _n(r["longest_fit"]) + (" (max tried)" if r["at_max"] else "")
        fail = f"{_n(r['first_fail'])} ({r['fail_status']})" if r["fail_status"] else "-"
        body.append([r["workload"], r["mode"], r["dtype"], str(r["batch_size"]), f"{r['num_heads']} x {r['head_dim']}",
                     r["backend"], fit_n, fail, str(r["trials"]), r["model"], _gib(r.get("limit_bytes")),
                     _n(r["extrapolated"])])
    return header, body


def table(results: list[dict]) -> str:
    """The results as a markdown table."""
    header, body = rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if h in ("batch", "trials") or "longest" in h
                                                             or "fails" in h or "limit" in h else "---"
                                                             for h in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _shape_title(r: dict) -> str:
    return (f"{r['workload']} {r['mode']} · {r['dtype']} · batch {r['batch_size']} · "
            f"{r['num_heads']} heads × {r['head_dim']}{'' if r.get('causal', True) else ' · non-causal'}")


def _limit_label(r: dict) -> str:
    src = {"device": "device memory", "memory_limit_bytes": "capacity.memory_limit_bytes"}.get(r.get("limit_source"))
    return f"limit {sig(r['limit_bytes'] / GIB, 3)} GiB" + (f" ({src})" if src else "")


def _search(ax, r: dict, pts: list[tuple[int, float]]) -> None:
    """One backend's trials, its fitted model up to the limit, its longest fit and first failure."""
    st = plots.style(r["backend"])
    pts = sorted((int(n), float(b)) for n, b in pts if b is not None)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] / GIB for p in pts], ls="", label=r["backend"],
                gid=f"trials-{r['backend']}", **{k: v for k, v in st.items() if k not in ("linestyle", "linewidth")})
    if r.get("coef") is not None and pts:
        top = max(r["extrapolated"] or 0, pts[-1][0])
        xs = np.geomspace(pts[0][0] / 2, top, 200)
        ax.plot(xs, np.polyval(r["coef"], xs) / GIB, ls="--", lw=1.2, color=st["color"], gid=f"model-{r['backend']}")
    if r.get("extrapolated") and r.get("limit_bytes"):
        ax.plot([r["extrapolated"]], [r["limit_bytes"] / GIB], ls="", marker="|", markersize=14, color=st["color"],
                markeredgewidth=2, gid=f"extrapolated-{r['backend']}")
    if r.get("first_fail") and r.get("limit_bytes"):
        ax.plot([r["first_fail"]], [r["limit_bytes"] / GIB], ls="", marker="X", markersize=8, color=st["color"],
                gid=f"fail-{r['backend']}")


def plot(results: list[dict], points: list[list[tuple[int, float]]], path, device: str | None = None) -> Path | None:
    """capacity.png (and .svg beside it): see figure(); None when there is nothing to plot."""
    fig = figure(results, points, device)
    return None if fig is None else save(fig, Path(path))


def figure(results: list[dict], points: list[list[tuple[int, float]]], device: str | None = None) -> Figure | None:
    """Trial memory against seq_len with each backend's fitted model, a panel per searched shape;
    the memory limit labelled, the device in the title."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault(tuple(r.get(k) for k in SHAPE), []).append(i)
    if not groups:
        return None
    fig = Figure(figsize=(6.2 * len(groups), 4.8), layout="constrained")
    for ax, idx in zip(np.atleast_1d(fig.subplots(1, len(groups))), groups.values(), strict=True):
        first = results[idx[0]]
        for i in sorted(idx, key=lambda i: plots.order([r["backend"] for r in results]).index(results[i]["backend"])):
            _search(ax, results[i], points[i])
        if first.get("limit_bytes"):
            ax.axhline(first["limit_bytes"] / GIB, color="#555", lw=1, ls="-", gid="limit")
            ax.annotate(_limit_label(first), (0.01, first["limit_bytes"] / GIB), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", fontsize="small", color="#333")
        ax.set(xscale="log", title=_shape_title(first))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        gib = [b / GIB for i in idx for _, b in points[i] if b] + [(first.get("limit_bytes") or 0) / GIB]
        plots.log_axis(ax.yaxis, [g for g in gib if g])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("PyTorch peak memory, inputs included (GiB)")
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], label=b, **plots.style(b)) for b in plots.order(r["backend"] for r in results)]
    handles += [Line2D([], [], ls="--", color="#444", label="fitted memory model"),
                Line2D([], [], ls="", marker="|", markersize=12, markeredgewidth=2, color="#444",
                       label="model reaches the limit"),
                Line2D([], [], ls="", marker="X", color="#444", label="first length that failed")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3 * len(groups)),
               fontsize="small", frameon=False)
    fig.suptitle(f"Longest sequence that fits{' · ' + device if device else ''}")
    return fig


def terminal_table(results: list[dict], device: str | None = None) -> Table:
    """The terminal's table: a row per search, named by its first six columns."""
    header, body = rows(results)
    return Table(f"Longest sequence that fits{' on ' + device if device else ''}", header, body, keys=6)


def write(results: list[dict], points: list[list[tuple[int, float]]], output_dir, device: str | None = None) -> dict:
    """capacity.md, capacity.png and capacity.svg in output_dir; the table on the terminal."""
    print_tables([terminal_table(results, device)])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "capacity.md"
    md.write_text(table(results) + "\n")
    png = plot(results, points, out / "capacity.png", device)
    log.info("capacity: table and plot in %s", out)
    return {"md": md, "png": png, "svg": png.with_suffix(".svg") if png else None}
