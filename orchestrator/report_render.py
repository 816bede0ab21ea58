"""How a report's tables look: markdown for summary.md, rich on the terminal, and one
self-contained HTML page (plots embedded, so it can be mailed or archived) with a table of
contents, each shape group's table beside its figure, and full error texts on demand."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field, replace
from pathlib import Path

STATUS_WORDS = ("unsupported", "oom", "error", "crashed", "timeout")


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    anchor: str = ""  # the HTML id of its section
    full: dict = field(default_factory=dict)  # (row, col): the whole text of a shortened cell
    tips: dict = field(default_factory=dict)  # (row, col): a tooltip (HTML title)
    strong: set = field(default_factory=set)  # (row, col): cells in bold (the fastest)
    textual: bool = False  # no number columns (the environment: versions are names)
    keys: int = 1  # the first columns, which name a row: repeated where a terminal shows the table in parts


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(table: Table, level: int = 3) -> str:
    lines = [f"{'#' * level} {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(map(_md_cell, table.header)) + " |")
    lines.append("|" + "|".join("---:" if numeric(table, i) else "---" for i in range(len(table.header))) + "|")
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _is_number(v: str) -> bool:
    return v[:1].isdigit() or (v[:1] in "-−" and v[1:2].isdigit())


def numeric(table: Table, col: int) -> bool:
    """A column whose cells are mostly numbers (right-aligned, never cut); statuses may sit in it."""
    if table.textual:
        return False
    vals = [r[col] for r in table.rows if r[col] not in ("", "–") and r[col] not in STATUS_WORDS]
    return bool(vals) and sum(map(_is_number, vals)) * 2 > len(vals)


def _short_text(table: Table, col: int) -> bool:
    """A text column of single short words (backend names, fault_illegal_address): kept whole too."""
    return all(len(r[col]) <= 24 and " " not in r[col].strip() for r in table.rows)


def _min_width(t: Table, i: int) -> int:
    return max([len(r[i]) for r in t.rows] + [max(map(len, t.header[i].split() or [""]))])


def _need(t: Table, i: int) -> int:
    """Terminal columns a column takes at the least: a kept-whole one its longest cell (or header
    word), a wrapping one 12; plus its borders and padding."""
    return (_min_width(t, i) if _whole(t, i) else 12) + 3


def _footnoted(t: Table, width: int, cols: list[int], notes: dict[str, int]) -> Table:
    """Where ``cols`` (the table, or one part of it) leave the long text columns less than about 24
    characters each beside the kept-whole ones, those columns' texts become [n] references, kept
    in ``notes`` (text: n, one numbering for the whole table) to be listed under it."""
    long = [i for i in cols if not _whole(t, i) and max((len(r[i]) for r in t.rows), default=0) > 40]
    fixed = sum(_need(t, i) for i in cols if i not in long) + 1
    if not long or width - fixed >= 24 * len(long):
        return t
    rows = [[f"[{notes.setdefault(c, len(notes) + 1)}]" if i in long and c else c for i, c in enumerate(r)]
            for r in t.rows]
    return replace(t, rows=rows)


def _whole(t: Table, i: int) -> bool:
    return numeric(t, i) or _short_text(t, i)


def _parts(t: Table, width: int) -> list[list[int]]:
    """The table's columns in parts that each fit ``width``. The first part starts with every key
    column; each later part is led by as many of the last key columns as take at most half the
    width (at least the last one: for the capacity table, batch, heads x dim and backend on 80
    columns). One part where all fit."""
    need = [_need(t, i) for i in range(len(t.header))]
    if sum(need) + 1 <= width:
        return [list(range(len(need)))]
    keys = list(range(min(t.keys, len(need))))
    lead = list(keys)
    while len(lead) > 1 and sum(need[k] for k in lead) + 1 > width // 2:
        lead.pop(0)
    parts, part = [], list(keys)
    for i in range(len(keys), len(need)):
        if part != lead and sum(need[j] for j in part) + need[i] + 1 > width:
            parts.append(part)
            part = list(lead)
        part.append(i)
    return [*parts, part]


def print_tables(tables: list[Table], console=None) -> None:
    """One table after another on the terminal: numbers and short words whole, long text wrapped
    (or, on a narrow terminal, listed under the table); a table wider than the terminal in parts,
    each led by the columns that name a row."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: wide enough that most rows stay on one line
            console = Console(width=max(console.width, 200))
    for table in tables:
        parts, notes = _parts(table, console.width), {}
        for n, cols in enumerate(parts):
            t = _footnoted(table, console.width, cols, notes)
            last = n == len(parts) - 1
            rt = RichTable(title=escape(t.title) if n == 0 else None, caption=escape(t.note) or None if last else None,
                           title_justify="left", caption_justify="left")
            whole = [i for i in cols if _whole(t, i)]
            tight = sum(max(len(t.header[i]), _min_width(t, i)) + 3 for i in whole) + 1 > console.width
            for i in cols:
                h = t.header[i]
                if i in whole:  # as wide as its longest cell; where room is short, the header wraps
                    m = _min_width(t, i)
                    rt.add_column(escape(h), justify="right" if numeric(t, i) else "left", min_width=m,
                                  max_width=m if tight else None)
                else:
                    rt.add_column(escape(h), overflow="fold", ratio=1, min_width=12)
            for row in t.rows:
                rt.add_row(*(escape(row[i]) for i in cols))
            console.print(rt)
        for text, n in notes.items():
            console.print(escape(f"[{n}] {text}"), highlight=False)


# HTML


def _cell(t: Table, i: int, j: int, value: str, num: bool) -> str:
    cls = "bad" if value in STATUS_WORDS else "num" if num else ""  # a status: right-aligned too (CSS)
    attr = f" class='{cls}'" if cls else ""
    if (i, j) in t.tips:
        attr += f" title='{html.escape(t.tips[(i, j)])}'"
    text = html.escape(str(value))
    if (i, j) in t.strong:
        text = f"<strong>{text}</strong>"
    if (i, j) in t.full:
        text = (f"<details><summary>{text}</summary><pre class='full'>{html.escape(t.full[(i, j)])}</pre>"
                "</details>")
    return f"<td{attr}>{text}</td>"


def html_table(table: Table, titled: bool = True, cls: str = "") -> str:
    nums = [numeric(table, j) for j in range(len(table.header))]
    head = "".join(f"<th{' class=num' if n else ''}>{html.escape(h)}</th>" for h, n in zip(table.header, nums,
                                                                                           strict=True))
    body = "".join("<tr>" + "".join(_cell(table, i, j, v, nums[j]) for j, v in enumerate(row)) + "</tr>"
                   for i, row in enumerate(table.rows))
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    title = f"<h3>{html.escape(table.title)}</h3>" if titled else ""
    klass = f" class='{cls}'" if cls else ""
    return f"{title}{note}<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figure(path: Path, caption: str, links: list[Path] = ()) -> str:
    """The PNG embedded; links to its SVG and CSV files (beside report.html)."""
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode()
    more = " · ".join(f"<a href='{html.escape(str(p))}'>{html.escape(_link_name(Path(p)))}</a>" for p in links)
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}{' · ' + more if more else ''}</figcaption></figure>")


def _link_name(p: Path) -> str:
    """'SVG', or for lines_X.median_ms.csv 'median_ms CSV'."""
    parts = p.name.split(".")
    return f"{parts[-2]} CSV" if p.suffix == ".csv" and len(parts) > 2 else p.suffix[1:].upper()


def html_image(path: Path) -> str:
    return html_figure(path, Path(path).name)


def html_group(table_html: str, figure_html: str, details_html: str = "") -> str:
    """A shape group: its table (and the full table on demand) beside its figure."""
    more = f"<details class='all'><summary>every column</summary>{details_html}</details>" if details_html else ""
    return f"<div class='pair'><div class='tables'>{table_html}{more}</div>{figure_html}</div>"


@dataclass
class Section:
    anchor: str
    heading: str
    body: str
    level: int = 2
    toc: str = ""  # the entry in the table of contents ("" = the heading)


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
header, main { max-width: 1500px; margin: 0 auto; padding: 0 24px; }
h1 { font-size: 1.5em; margin: 0.8em 0 0.2em; } h2 { font-size: 1.25em; margin-top: 1.6em;
  border-bottom: 1px solid #ddd; } h3 { font-size: 1.02em; margin: 1.4em 0 0.4em; }
section.group { border-top: 1px solid #eee; }
nav#contents ol { margin: 0.3em 0; padding-left: 1.6em; }
nav#contents ol ol { columns: 4 230px; }
table { border-collapse: collapse; margin-bottom: 0.8em; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: 2px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; font-weight: 600; } .num { text-align: right; white-space: nowrap; }
td.bad { color: #b00; text-align: right; } strong { color: #000; } .note { color: #555; max-width: 100ch; }
.pair { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.pair > .tables { flex: 0 1 auto; max-width: 46%; overflow-x: auto; }
.pair > figure { flex: 1 1 560px; max-width: 900px; min-width: 420px; margin: 0; }
@media (max-width: 1000px) { .pair > .tables { max-width: 100%; } }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12.5px; color: #444; margin-top: 4px; }
details > summary { cursor: pointer; } details.all { margin: 0.6em 0 1em; }
details.failure > summary { color: #b00; font-size: 13px; max-width: 90ch; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
pre.full { white-space: pre-wrap; max-width: 70ch; margin: 0.3em 0; padding: 0.4em; font-size: 12px; }
"""


def _link(s: Section) -> str:
    return f"<a href='#{html.escape(s.anchor)}'>{html.escape(s.toc or s.heading)}</a>"


def html_toc(sections: list[Section]) -> str:
    """Level-2 sections as a list, the level-3 sections after each nested under it."""
    tree: list[tuple[Section, list[Section]]] = []
    for s in sections:
        if s.level <= 2 or not tree:
            tree.append((s, []))
        else:
            tree[-1][1].append(s)
    items = "".join(f"<li>{_link(s)}" + (f"<ol>{''.join(f'<li>{_link(k)}</li>' for k in kids)}</ol>" if kids else "")
                    + "</li>" for s, kids in tree)
    return f"<nav id='contents'><h2>Contents</h2><ol>{items}</ol></nav>"


def html_page(title: str, intro: str, sections: list[Section], toc_after: int = 1) -> str:
    """The page: title, intro, the first toc_after sections (the environment), the table of
    contents, then the rest; empty sections are left out."""
    sections = [s for s in sections if s.body]
    body = []
    for i, s in enumerate(sections):
        if i == toc_after:
            body.append(html_toc(sections))
        tag = "section class='group'" if s.level > 2 else "section"
        body.append(f"<{tag} id='{html.escape(s.anchor)}'><h{s.level}>{html.escape(s.heading)}</h{s.level}>"
                    f"{s.body}</section>")
    if len(sections) <= toc_after:
        body.append(html_toc(sections))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1>{intro}</header><main>{''.join(body)}</main></body></html>\n"
    )


def html_details(summary: str, text: str, cls: str = "") -> str:
    """A one-line summary that opens on the whole text."""
    klass = f" class='{cls}'" if cls else ""
    body = f"<pre class='full'>{html.escape(text)}</pre>" if text else ""
    return f"<details{klass}><summary>{html.escape(summary)}</summary>{body}</details>"


def html_pre(text: str, summary: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
