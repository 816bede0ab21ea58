"""Reports from real datasets: the smoke sweep's own report, and datasets made from its rows.

The rows of the derived datasets are the smoke sweep's real rows with a few columns changed
(another GPU, a failed cell, memory figures), written as real parquet with Store.append.
"""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from conftest import CONF, ROOT, make_cfg
from hydra import compose, initialize_config_dir
from matplotlib.image import imread

from orchestrator import report, report_plots
from orchestrator.grid import expand
from orchestrator.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def report_cfg(*overrides: str):
    """The real composed config of `python -m orchestrator.report OVERRIDES`."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("report", overrides=list(overrides))


def check_png(path) -> None:
    """A real image of non-trivial size: PNG signature, IHDR size, and pixels that are not all alike."""
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 300 and len(data) > 10_000, (path, width, height, len(data))
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01


def table_rows(md: str, title_part: str) -> dict[tuple[str, str], list[str]]:
    """The rows of the markdown table under the heading that contains title_part, by (seq_len, backend)."""
    section = md.split(title_part, 1)[1].split("\n#", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")][2:]
    cells = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    return {(c[0], c[1]): c for c in cells}


def copy_rows(store_path, **changes) -> list[dict]:
    """The dataset's rows as Python values, with new row ids, changed as asked."""
    rows = Store(store_path).read_table().to_pylist()
    return [{**r, "row_id": uuid.uuid4().hex, **changes} for r in rows]


@pytest.fixture(scope="module")
def smoke_df(smoke_dataset):
    return Store(smoke_dataset["store"]).latest()


def test_sweep_writes_report(smoke_dataset, smoke_df):
    out = smoke_dataset["output_dir"]
    pngs = sorted(out.glob("lines_*.png"))
    assert len(pngs) == 1  # one group (device, dtype, head size, causal, batch): one figure
    for p in pngs:
        check_png(p)
    md = (out / "summary.md").read_text()
    for backend in smoke_df["backend"]:
        assert f"| {backend} |" in md
    page = (out / "report.html").read_text()
    assert "sweep_name: smoke" in page and "Environment" in page
    assert not list(out.glob("bars_*.png"))  # the bar charts are for the seed sweep only


def test_summary_numbers_match_dataset(smoke_dataset, smoke_df, tmp_path):
    cfg = make_cfg("+sweep=smoke", store=smoke_dataset["store"])
    cells = expand(cfg, default_target="cpu")
    res = report.for_sweep(cfg, Store(smoke_dataset["store"]), cells, tmp_path)
    assert len(res["frame"]) == len(cells) == len(smoke_df)
    rows = table_rows(res["summary"].read_text(), "heads · batch 1")
    ok = smoke_df[smoke_df["status"].eq("ok")].set_index(["seq_len", "backend"])
    assert not ok.empty
    for (seq, backend), r in ok.iterrows():
        cell = rows[(str(seq), backend)]
        base = ok.loc[(seq, "math"), "median_ms"]
        assert float(cell[2]) == pytest.approx(r["median_ms"], rel=1e-3)
        assert float(cell[3]) == pytest.approx(r["tflops"], rel=1e-3)
        assert float(cell[5].rstrip("×")) == pytest.approx(base / r["median_ms"], rel=5e-3)
        peak, base_peak = r["peak_allocated_bytes"], ok.loc[(seq, "math"), "peak_allocated_bytes"]
        if peak != peak or base_peak != base_peak:  # no memory figures (NaN): a dash, not a number
            assert cell[4] == "–" or cell[6] == "–"
        else:
            assert float(cell[4]) == pytest.approx(peak / 2**20, rel=1e-3)
            assert float(cell[6].rstrip("×")) == pytest.approx(base_peak / peak, rel=5e-3)


MEM = 8  # bytes per seq_len² of the non-flash rows in gpu_like_rows (flash: 1)


def gpu_like_rows(store_path) -> list[dict]:
    """Smoke rows dressed as GPU rows over seq 64..4096, with memory figures and one oom and one
    unsupported cell; the flash cell at the longest length ran kernels of another backend."""
    rows = []
    for r in copy_rows(store_path, device_type="cuda", device_name="NVIDIA H100 80GB HBM3", driver_version="550.54"):
        if r["status"] != "ok":
            continue
        for k, seq in enumerate([64, 256, 1024, 4096]):
            scale = (seq / r["seq_len"]) ** 2
            rows.append({**r, "row_id": uuid.uuid4().hex, "cell_id": f"{r['cell_id']}-{seq}", "seq_len": seq,
                         "median_ms": r["median_ms"] * scale, "tflops": 100.0 * (k + 1),  # 4x: a linear axis
                         "peak_allocated_bytes": seq * seq * (MEM if r["backend"] != "flash" else 1) + 4096})
    for r in rows:
        if r["seq_len"] == 4096 and r["backend"] == "eager":
            r |= {"status": "oom", "error": "torch.OutOfMemoryError: CUDA out of memory", "median_ms": None}
        if r["seq_len"] == 64 and r["backend"] == "eager":
            r |= {"status": "unsupported", "error": "No available kernel | reason", "median_ms": None}
        if r["seq_len"] == 4096 and r["backend"] == "flash":
            r |= {"kernels_match": False, "kernels": "void pytorch_flash::flash_fwd_kernel;at::native::mem_eff"}
    return rows


def test_failures_memory_and_kernels(smoke_dataset, tmp_path):
    store = Store(tmp_path / "gpu")
    store.append(gpu_like_rows(smoke_dataset["store"]))
    res = report.write(report.fill_platform(store.latest()), tmp_path / "out", title="t", sweep_name="x")
    md = res["summary"].read_text()
    rows = table_rows(md, "H100 80GB HBM3 · torch")
    assert rows[("4096", "eager")][2:4] == ["oom", "–"] and "CUDA out of memory" in rows[("4096", "eager")][-1]
    assert rows[("64", "eager")][2] == "unsupported" and "No available kernel \\| reason" in md
    math_mib, flash_mib = (4096 * 4096 * MEM + 4096) / 2**20, (4096 * 4096 + 4096) / 2**20
    assert float(rows[("4096", "flash")][4]) == pytest.approx(flash_mib, rel=1e-3)
    assert float(rows[("4096", "flash")][6].rstrip("×")) == pytest.approx(math_mib / flash_mib, rel=5e-3)
    assert "Kernels that do not match the pinned backend" in md and "flash_fwd_kernel" in md
    page = res["html"].read_text()
    assert "<td class='bad'>oom</td>" in page and "550.54" in page
    fig = report_plots.lines(res["frame"], "t", report_plots.backend_colors(res["frame"]["backend"]))
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear", "log"]  # TFLOP/s span less than 10x
    assert [ax.get_xscale() for ax in fig.axes] == ["log"] * 3
    assert "not plotted" not in fig.get_suptitle()  # every backend has an ok cell somewhere


def test_seed_bar_charts_and_html_images(smoke_df, tmp_path):
    res = report.write(smoke_df, tmp_path, title="t", sweep_name="seed")
    bars = sorted(tmp_path.glob("bars_*.png"))
    assert [p.name.split("_")[1] for p in bars] == ["memory", "time"]
    for p in res["images"]:
        check_png(p)
    page = res["html"].read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == len(res["images"]) == 3
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in res["images"])
    assert "<img" in page and "src='lines_" not in page  # nothing outside the page


def test_device_comparison(smoke_dataset, tmp_path):
    """The same cells on a second GPU model: the report puts them side by side."""
    store = Store(tmp_path / "two")
    store.append(copy_rows(smoke_dataset["store"]))
    later = [{**r, "device_name": "Tesla T4", "ended_at": r["ended_at"] + timedelta(hours=1),
              "median_ms": r["median_ms"] * 2 if r["median_ms"] else None} for r in copy_rows(smoke_dataset["store"])]
    store.append(later)
    res = report.from_config(report_cfg(f"store.path={store.path}", "sweep=smoke"), tmp_path / "out")
    md = res["summary"].read_text()
    assert "## Same cells on different devices or torch versions" in md
    section = md.split("## Same cells on different devices", 1)[1]
    ok_rows = [ln for ln in section.splitlines() if ln.startswith("| attention")]
    assert all(ln.rstrip(" |").endswith(("0.5×", "–")) for ln in ok_rows)  # "–": a cell that did not run
    assert sum(ln.rstrip(" |").endswith("0.5×") for ln in ok_rows) >= 4
    assert "| AMD EPYC ms | Tesla T4 ms | speedup Tesla T4 vs AMD EPYC |" in md
    assert len(res["frame"]) == 2 * len(later)  # both devices' tables
    latest_only = report.from_config(report_cfg(f"store.path={store.path}", "compare=false"), tmp_path / "one")
    assert set(latest_only["frame"]["device_name"]) == {"Tesla T4"}


def test_fill_platform_for_crashed_rows(smoke_dataset, tmp_path):
    rows = copy_rows(smoke_dataset["store"])
    rows[0] |= {"status": "crashed", "error": "cell process killed by signal SIGSEGV (11)", "device_name": None,
                "torch_version": None, "median_ms": None}
    store = Store(tmp_path / "rows")
    store.append(rows)
    df = report.fill_platform(store.latest())
    assert df["device_name"].notna().all() and df["device_name"].nunique() == 1
    md = report.write(df, tmp_path / "out", title="t", sweep_name="x")["summary"].read_text()
    assert md.count("\n### ") == 1 and "| crashed |" in md and "SIGSEGV" in md


def test_filters(smoke_dataset, tmp_path):
    path = f"store.path={smoke_dataset['store']}"
    res = report.from_config(report_cfg(path, "backend=[math,flash]", "seq_len=64"), tmp_path / "a")
    assert sorted(res["frame"]["backend"]) == ["flash", "math"]
    flash = report.from_config(report_cfg(path, "backend=flash"), tmp_path / "c")
    assert "baseline math has no rows here" in flash["summary"].read_text()
    with pytest.raises(report.ReportError, match="dtype.*float32"):
        report.from_config(report_cfg(path, "dtype=float16"), tmp_path / "b")


def test_cli(smoke_dataset, tmp_path):
    out = tmp_path / "cli"
    args = [f"store.path={smoke_dataset['store']}", "sweep=smoke", "dtype=float32", f"output_dir={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    done = subprocess.run([sys.executable, "-m", "orchestrator.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "speedup vs math" in done.stdout and "report:" in done.stdout
    assert (out / "summary.md").is_file() and (out / "report.html").is_file()
    for p in out.glob("*.png"):
        check_png(p)
    args = [*args[:-2], "dtype=float16", f"hydra.run.dir={tmp_path / 'hydra2'}"]
    bad = subprocess.run([sys.executable, "-m", "orchestrator.report", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "no rows with dtype" in bad.stderr
