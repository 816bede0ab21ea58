"""The report's page and tables, checked by structure: report.html parsed with html.parser (a
table of contents whose links resolve, each group's table and figure in one section, errors
whole on demand, the environment first), the best backend per shape on a dataset built to
have known answers, significant digits, and the terminal table on a 150-column console."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from rich.console import Console
from test_report import OOM, fail, gpu_rows

from orchestrator import report, report_render, report_tables
from orchestrator.report_tables import sig

VOID = {"img", "meta", "br", "hr", "input", "link", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def find(self, tag: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag]

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Tree(HTMLParser):
    """A small DOM: every element with its attributes, children and text; fails on unclosed tags."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {})
        self.feed(page)
        self.close()
        assert self.cur is self.root, f"unclosed <{self.cur.tag}>"

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.text += data


LONG_ERROR = OOM + "\n" + "\n".join(f"  frame {i}: in attention_kernel_{i}" for i in range(12))


def dataset() -> pd.DataFrame:
    """Two shape groups of H100-like rows; one oom with a long error, one unsupported."""
    rows = gpu_rows(batch_sizes=(1, 8))
    fail(rows, "eager", 4096, "oom", LONG_ERROR)
    fail(rows, "math", 512, "unsupported", "No available kernel. Aborting execution.")
    return report.fill_platform(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("page")
    res = report.write(dataset(), out, title="H100 sweep", sweep_name="full")
    return res, Tree(res["html"].read_text())


def test_contents_links_resolve_and_each_group_has_table_and_figure(page):
    res, tree = page
    ids = {n.attrs["id"]: n for n in tree.root.walk() if "id" in n.attrs}
    nav = ids["contents"]
    targets = [a.attrs["href"][1:] for a in nav.find("a")]
    assert targets and all(t in ids for t in targets)
    groups = [n for n in tree.root.find("section") if "group" in n.attrs.get("class", "")]
    assert len(groups) == 2 and {g.attrs["id"] for g in groups} <= set(targets)
    for g in groups:
        imgs, tables = g.find("img"), g.find("table")
        assert len(imgs) == 1 and imgs[0].attrs["src"].startswith("data:image/png;base64,")
        assert tables and "median ms per call" not in tables[0].all_text()  # the pivot: seq_len x backend
        assert [th.all_text() for th in tables[0].find("th")] == ["seq_len", "eager", "math", "flash", "efficient",
                                                                  "cudnn"]
        caption = g.find("figcaption")[0].all_text()
        assert caption.startswith("Median time per call") and ".png" not in caption  # words, not a file name
        assert any(a.attrs["href"].endswith(".svg") for a in g.find("a"))


def test_environment_first_then_contents_then_best(page):
    _, tree = page
    main = tree.root.find("main")[0]
    order = [c.attrs.get("id") for c in main.children]
    assert order[:4] == ["environment", "contents", "best", "shapes"]
    env = main.children[0].all_text()
    assert "580.159.04" in env and "cuda_graph" in env and "700 TFLOP/s" in env


def test_long_errors_whole_on_demand(page):
    _, tree = page
    details = [d for d in tree.root.find("details") if "frame 11" in d.all_text() and len(d.find("details")) == 1]
    assert len(details) == 4, "in each group (two): beside its table, and in its full table"
    for d in details:
        summary = d.find("summary")[0].all_text()
        assert "torch.OutOfMemoryError: CUDA out of memory" in summary and "frame" not in summary
        assert LONG_ERROR.strip() == d.find("pre")[0].all_text().strip()
    assert details[0].attrs["class"] == "failure" and details[0].find("summary")[0].all_text().startswith(
        "eager oom at 4096: torch.OutOfMemoryError")


def test_numbers_have_fixed_significant_digits(page):
    res, tree = page
    cells = [td.all_text() for td in tree.root.find("td") if td.attrs.get("class") == "num"]
    assert cells and not [c for c in cells if re.search(r"\de[+-]\d", c)]
    md = res["summary"].read_text()
    assert not re.search(r"\|[^|\n]*\de[+-]\d", md)
    assert sig(18943.2) == "18,940" and sig(0.0095678) == "0.009568" and sig(9.99996) == "10.00"
    assert sig(2.5) == "2.500" and sig(float("nan")) == "–" and sig(None) == "–" and sig(-0.0012345, 2) == "-0.0012"
    t = report_tables.summary_tables(res["frame"], "math")[1]
    i = t.header.index("% of ceiling")
    assert t.header[i - 1] == "TFLOP/s"  # the share beside the rate
    medians = [r[t.header.index("median ms")] for r in t.rows if r[1] == "flash"]
    assert medians == ["0.1250", "0.5000", "2.000", "8.000"]


def test_summary_md_starts_with_the_best_backend_table(page):
    res, _ = page
    md = res["summary"].read_text()
    assert md.index("## Environment") < md.index("## Best backend per shape") < md.index("## Results by shape")
    assert "## Errors in full" in md and "frame 11: in attention_kernel_11" in md


def best_rows(frame) -> list[list[str]]:
    return report_tables.best_table(frame).rows


def test_best_backend_per_shape():
    """A dataset built so that flash wins short sequences by 1.25x and cudnn long ones by 1.5x,
    with one length where only one backend ran and one where none did."""
    rows = gpu_rows(backends=("flash", "cudnn", "math"), seq_lens=(128, 256, 512, 1024, 2048, 4096))
    for r in rows:
        n, ms = r["seq_len"], {"flash": 1.0, "cudnn": 1.25, "math": 9.0}[r["backend"]]
        if n >= 512:
            ms = {"flash": 1.5, "cudnn": 1.0, "math": 9.0}[r["backend"]] * (1.0 if n == 512 else 1.2)
        r |= {"median_ms": ms, "p10_ms": ms * 0.99, "p90_ms": ms * 1.01}
    fail(rows, "flash", 2048, "oom", OOM)
    fail(rows, "math", 2048, "oom", OOM)
    for b in ("flash", "cudnn", "math"):
        fail(rows, b, 4096, "oom", OOM)
    frame = report.summary_frame(report.fill_platform(pd.DataFrame(rows)), "math")
    got = best_rows(frame)
    shape = "bfloat16 D128 H16 B8"
    assert got == [
        [shape, "128–256", "flash", "1.25×", "cudnn", ""],
        ["", "512–2048", "cudnn", "1.50×", "flash", "flash → cudnn at 512"],  # 2048: cudnn alone, no margin
        ["", "4096", "none ran", "–", "–", "cudnn → none at 4096"],
    ]
    # within each other's spread: marked
    for r in rows:
        if r["seq_len"] == 128 and r["backend"] == "cudnn":
            r["p10_ms"] = 0.99  # flash's p90 is 1.01
    frame = report.summary_frame(report.fill_platform(pd.DataFrame(rows)), "math")
    assert best_rows(frame)[0][3] == "1.25× ≈"


def test_launch_bound_cells_are_noted():
    rows = gpu_rows(backends=("flash", "math"), seq_lens=(128, 4096))
    for r in rows:
        if r["seq_len"] == 128 and r["backend"] == "flash":
            r |= {"median_ms": 0.010, "host_median_ms": 0.025, "launch_overhead_ms": 0.015}
    t = report_tables.summary_tables(report.summary_frame(report.fill_platform(pd.DataFrame(rows)), "math"),
                                     "math")[0]
    notes = {(r[0], r[1]): r[-1] for r in t.rows}
    assert notes[("128", "flash")] == "launch-bound: host 0.02500 ms"
    assert notes[("4096", "flash")] == "" and notes[("128", "math")] == ""


@pytest.mark.parametrize("width", [150, 110, 80])
def test_terminal_table_keeps_numbers_whole(page, width):
    """Every number and status whole on a 150-column terminal, long error text wrapped in its
    column; on 110 columns the long texts are listed under the table instead; on 80, a group's
    table comes in parts, each led by seq_len and backend (it used to be cut at the right edge),
    and the long texts wrap in the last part, which has room for them."""
    res, _ = page
    tables = [report_tables.best_table(res["frame"]), *report_tables.summary_tables(res["frame"], "math")]
    console = Console(width=width, record=True, file=io.StringIO())
    report_render.print_tables(tables, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    narrow = width == 110
    assert bool(re.search(r"│ \[1\] +│", text)) == narrow and ("\n[1] No available kernel" in text) == narrow
    for t in tables:
        for row in t.rows:
            for i, cell in enumerate(row):
                if report_render.numeric(t, i) or cell in report_render.STATUS_WORDS or i == 1:
                    assert re.search(rf"[│ ]{re.escape(cell)}[│ ]", text), f"{cell!r} cut"
    assert "…" not in text
    flat = "".join(text.replace("│", " ").split())
    first = OOM.splitlines()[0]
    assert "".join(first.split()) in flat and len(first) > 100  # the error's first line, wrapped in its column


def test_terminal_keeps_long_backend_names_whole():
    """A 21-character backend name beside a long error on a 120-column terminal (a real faults run
    wrapped it as 'fault_segfau' / 'lt')."""
    rows = gpu_rows(backends=("math", "flash"), seq_lens=(64,))
    rows[1] |= {"backend": "fault_illegal_address"}
    fail(rows, "fault_illegal_address", 64, "error", "IndexError: index 1099511627776 is out of bounds for dimension "
                                                     "0 with size 16 (at faults.py:73)")
    frame = report.summary_frame(report.fill_platform(pd.DataFrame(rows)), "math")
    console = Console(width=120, record=True, file=io.StringIO())
    report_render.print_tables(report_tables.summary_tables(frame, "math"), console=console)
    text = console.export_text()
    assert "│ fault_illegal_address │" in text and max(map(len, text.splitlines())) <= 120
    assert "IndexError: index 1099511627776 is out of bounds" in " ".join(text.replace("│", " ").split())


def test_a_capacity_table_on_an_80_column_terminal_names_each_row_in_every_part():
    """The capacity table is 12 columns, 6 of them naming a search: on 80 columns its later parts
    are led by the last of those that fit (batch, heads x dim, backend), so every figure sits on a
    line with its backend, and nothing is cut."""
    from orchestrator import report_capacity

    results = [{"workload": "attention", "mode": "fwd", "dtype": "float16", "batch_size": 32, "num_heads": 16,
                "head_dim": 64, "backend": b, "longest_fit": fit, "at_max": False, "first_fail": fail,
                "fail_status": "oom", "trials": 7, "model": "quadratic", "limit_bytes": 85_000_000_000,
                "extrapolated": ext} for b, fit, fail, ext in [("eager", 6144, 7168, 6613),
                                                                 ("efficient", 16384, 16448, 16420)]]
    console = Console(width=80, record=True, file=io.StringIO())
    report_render.print_tables([report_capacity.terminal_table(results)], console=console)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    for backend, figures in [("eager", ["6,144", "7,168 (oom)", "6,613"]), ("efficient", ["16,384", "16,448 (oom)",
                                                                                            "16,420"])]:
        for figure in figures:
            assert any(figure in line and f" {backend} " in line for line in lines), (backend, figure)
