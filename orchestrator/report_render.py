"""How a report's tables look: markdown for summary.md, rich (or plain text) on the terminal,
and one self-contained HTML page with the plots embedded, so it can be mailed or archived."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(table: Table, level: int = 3) -> str:
    lines = [f"{'#' * level} {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(map(_md_cell, table.header)) + " |")
    lines.append("|" + "|".join("---:" if _numeric(table, i) else "---" for i in range(len(table.header))) + "|")
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _numeric(table: Table, col: int) -> bool:
    """Right-align a column whose cells are mostly numbers."""
    vals = [r[col] for r in table.rows if r[col] not in ("", "–")]
    return bool(vals) and sum(v[:1].isdigit() for v in vals) * 2 > len(vals)


def print_tables(tables: list[Table]) -> None:
    """One table after another on the terminal: rich when it is installed, markdown otherwise."""
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table as RichTable
    except ImportError:  # pragma: no cover - rich is a dependency, but the report must not need it
        print("\n".join(markdown(t) for t in tables), flush=True)
        return
    console = Console()
    if not console.is_terminal:  # a log file: wide enough that rows stay on one line
        console = Console(width=max(console.width, 200))
    for t in tables:
        rt = RichTable(title=escape(t.title), caption=escape(t.note) or None, title_justify="left")
        for i, h in enumerate(t.header):
            if _numeric(t, i):  # numbers are never cut: the text columns give way
                width = max(len(h), *(len(r[i]) for r in t.rows))
                rt.add_column(escape(h), justify="right", no_wrap=True, min_width=width)
            else:
                rt.add_column(escape(h), overflow="ellipsis", no_wrap=True, max_width=90)
        for row in t.rows:
            rt.add_row(*map(escape, row))
        console.print(rt)


def html_table(table: Table, titled: bool = True) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td{_cls(v)}>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in table.rows
    )
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    title = f"<h3>{html.escape(table.title)}</h3>" if titled else ""
    return f"{title}{note}<table><tr>{head}</tr>{body}</table>"


def _cls(value: str) -> str:
    """Mark non-ok statuses so they stand out."""
    return " class='bad'" if value in ("unsupported", "oom", "error", "crashed", "timeout") else ""


def html_image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    name = html.escape(Path(path).name)
    return f"<figure><img alt='{name}' src='data:image/png;base64,{data}'><figcaption>{name}</figcaption></figure>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:nth-child(-n+2) { text-align: left; }
td.bad { color: #b00; } .note { color: #555; }
figure { margin: 1em 0; } img { max-width: 100%; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """sections: (heading, inner html); empty sections are left out."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections if inner)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def html_pre(text: str, summary: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
