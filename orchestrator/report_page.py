"""A report's files from its summary frame: the figures (PNG, SVG, CSV), summary.md and report.html,
and the tables on the terminal. ``write`` is called by ``orchestrator.report.write``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from orchestrator import report_files as files
from orchestrator import report_plots as plots
from orchestrator import report_render as render
from orchestrator import report_tables as tables
from orchestrator.report_render import Section

NOTE = (
    "median ms: median time per call; p10–p90: the spread of the calls (p90 − p10) in % of the median; "
    "TFLOP/s: by the row's flops convention; % of ceiling: TFLOP/s as a share of the device's measured matmul "
    "rate; peak MiB: PyTorch peak allocated above the inputs; speedup = {b} median / backend median; memory "
    "saving = {b} peak / backend peak; – where a row has no such figure; a cell that did not run shows its "
    "status and error instead of numbers."
)


def _failures(g: pd.DataFrame) -> str:
    """'eager oom at 8192, 16384; math unsupported at 64'."""
    bad = g[g["status"].ne("ok")]
    parts = [f"{b} {s} at {', '.join(str(n) for n in sorted(d['seq_len']))}"
             for (b, s), d in bad.groupby(["backend", "status"], sort=False)]
    return "; ".join(parts)


def caption(g: pd.DataFrame, key, baseline: str) -> str:
    """What the figure shows, in words."""
    names = ", ".join(plots.order(g["backend"]))
    text = (f"Median time per call (band: p10–p90), TFLOP/s (right axis: % of the measured matmul ceiling, where "
            f"known), PyTorch peak memory above the inputs and speedup over {baseline}, against sequence length, "
            f"for {names}: {tables.group_title(key)}.")
    bad = _failures(g)
    return text + (f" Marks at the top edge are cells that did not run: {bad}." if bad else "")


def draw(frame: pd.DataFrame, out: Path, seed: bool, baseline: str, plotters=None) -> tuple[dict, object]:
    """(per group: its figures as {"png", "svg", "csv", "caption"}; for the seed sweep also the
    notebook's time and memory bar charts, what to wait for). The figures are drawn in parallel:
    by ``plotters`` (started ahead: ``plotters.Plotters``) while the caller goes on, or by
    ``render_all`` before this returns."""
    figs: dict[str, list[dict]] = {}
    jobs = []
    for key, g in tables.groups(frame):
        title, name = tables.group_title(key), tables.slug(key)
        two_lines = title.replace(" · attention", "\nattention").replace(" · encoder", "\nencoder")
        data = g[plots.PLOT_COLUMNS]
        png = out / f"lines_{name}.png"
        jobs.append({"kind": "lines", "frame": data, "title": two_lines, "path": png, "baseline": baseline})
        csv = [out / "csv" / f"lines_{name}.{col}.csv" for col in plots.METRICS]
        figs[name] = [{"png": png, "svg": png.with_suffix(".svg"), "csv": csv, "caption": caption(g, key, baseline)}]
        for col, what in (("median_ms", "time"), ("peak_mib", "memory")) if seed else ():
            p = out / f"bars_{what}_{name}.png"
            jobs.append({"kind": "bars", "frame": data, "col": col, "path": p,
                         "title": f"{what} by sequence length\n{two_lines}"})
            figs[name].append({"png": p, "svg": p.with_suffix(".svg"), "csv": [],
                               "caption": f"The seed notebook's {what} chart: {title}."})
    if plotters is not None and jobs:
        return figs, plotters.submit(jobs, files.render)
    files.render_all(jobs)
    return figs, None


def _about(frame: pd.DataFrame, baseline: str, source: str) -> str:
    tally = ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().sort_index().items())
    about = (f"{len(frame)} cells ({tally}) from {source or 'the dataset'}; baseline {baseline}; "
             f"made {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.")
    if not frame["backend"].eq(baseline).any():
        about += f" The baseline {baseline} has no rows here: speedups are blank (set report.baseline)."
    return about


def _errors_md(frame: pd.DataFrame) -> str:
    """Every distinct error text in full, with the cells that gave it."""
    bad = frame[frame["status"].ne("ok") & frame["error"].notna()]
    if bad.empty:
        return ""
    parts = ["## Errors in full", ""]
    for text, d in bad.groupby("error", sort=False):
        cells = "; ".join(f"{r.backend} {r.status} {r.dtype} D{r.head_dim} H{r.num_heads} B{r.batch_size} "
                          f"N{r.seq_len}" for r in d.itertuples())
        parts += [f"- {cells}:", "", "  ```text", *[f"  {ln}" for ln in str(text).splitlines()], "  ```", ""]
    return "\n".join(parts)


def _figures_md(figs: list[dict], out: Path) -> str:
    lines = []
    for f in figs:
        links = [f"[SVG]({f['svg'].name})", *[f"[{p.name.split('.')[-2]} CSV]({p.relative_to(out)})" for p in f["csv"]]]
        lines += [f"![{f['caption']}]({f['png'].name})", "", f"*{f['caption']}* " + " · ".join(links), ""]
    return "\n".join(lines)


def markdown_page(title, about, env, best, groups_, extra, figs, frame, out, baseline) -> str:
    md = [f"# {title}", "", about, "", render.markdown(env, 2), render.markdown(best, 2), "## Results by shape", "",
          NOTE.format(b=baseline), ""]
    for t in groups_:
        md += [render.markdown(t), _figures_md(figs.get(t.anchor, []), out)]
    md += [render.markdown(t, 2) for t in extra]
    md.append(_errors_md(frame))
    return "\n".join(md)


def _figures_html(figs: list[dict], out: Path) -> str:
    return "".join(render.html_figure(f["png"], f["caption"], [f["svg"].relative_to(out),
                                                             *[p.relative_to(out) for p in f["csv"]]])
                   for f in figs)


def _failures_html(g: pd.DataFrame) -> str:
    """The cells of a group that did not run, by backend and status, each error whole on demand."""
    bad = g[g["status"].ne("ok")].sort_values("seq_len")
    items = []
    for (b, s), d in bad.groupby(["backend", "status"], sort=False):
        errors = d["error"].fillna("").astype(str)
        at = ", ".join(str(n) for n in d["seq_len"])
        text = errors.iloc[0] if errors.nunique() == 1 else "\n\n".join(
            f"seq_len {n}:\n{e}" for n, e in zip(d["seq_len"], errors, strict=True))
        first = tables.first_line(errors.iloc[0], 120)
        items.append((f"{b} {s} at {at}" + (f": {first}" if first else ""), text))
    return "".join(render.html_details(summary, text, cls="failure") for summary, text in items)


def _group_sections(frame, groups_, figs, out) -> list[Section]:
    vary = tables.varying(frame)
    sections = []
    for (key, g), t in zip(tables.groups(frame), groups_, strict=True):
        pivot = render.html_table(tables.pivot_table(g), titled=False, cls="pivot") + _failures_html(g)
        body = render.html_group(pivot, _figures_html(figs.get(t.anchor, []), out),
                                 render.html_table(t, titled=False))
        sections.append(Section(t.anchor, t.title, body, level=3, toc=tables.shape_label(key, vary)))
    return sections


def html_page(title, about, env, best, groups_, extra, figs, frame, out, baseline, configs) -> str:
    intro = f"<p class='about'>{about}</p>"
    sections = [
        Section("environment", "Environment", render.html_table(env, titled=False)),
        Section("best", best.title, render.html_table(best, titled=False)),
        Section("shapes", "Results by shape", f"<p class='note'>{NOTE.format(b=baseline)} Bold: the fastest at that "
                                              "length. Hover a status for its error; “every column” opens the full "
                                              "table with the errors.</p>"),
        *_group_sections(frame, groups_, figs, out),
        *[Section(t.anchor, t.title, render.html_table(t, titled=False)) for t in extra],
        Section("config", "Config", "".join(render.html_pre(text, name) for name, text in configs.items())),
    ]
    return render.html_page(title, intro, sections)


def write(frame: pd.DataFrame, out: Path, *, title: str, seed: bool, baseline: str, plots: bool, configs: dict,
          source: str, plotters=None) -> dict:
    """The report's files; the figures are drawn (by ``plotters``, if given) while the tables are made."""
    figs, drawing = draw(frame, out, seed, baseline, plotters) if plots else ({}, None)
    best = tables.best_table(frame)
    groups_ = tables.summary_tables(frame, baseline)
    extra = [t for t in (tables.comparison_table(frame), tables.mismatch_table(frame)) if t is not None]
    env = tables.environment_table(frame)
    render.print_tables([best, *groups_, *extra])
    if drawing is not None:
        drawing.wait()
    about = _about(frame, baseline, source)
    md = markdown_page(title, about, env, best, groups_, extra, figs, frame, out, baseline)
    (out / "summary.md").write_text(md)
    page = html_page(title, about, env, best, groups_, extra, figs, frame, out, baseline, configs)
    (out / "report.html").write_text(page)
    images = [f["png"] for fs in figs.values() for f in fs]
    return {"summary": out / "summary.md", "html": out / "report.html", "images": images, "frame": frame,
            "figures": figs, "best": best, "about": about}
