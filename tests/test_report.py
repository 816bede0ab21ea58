"""Reports from real datasets: the smoke sweep's own report, datasets made from its rows, and
constructed GPU-like datasets written as real parquet part files.

The rows of the derived datasets are the smoke sweep's real rows with a few columns changed
(another GPU, a failed cell, memory figures), written with Store.append. The constructed rows
(``gpu_rows``) carry every column of orchestrator/rows.py and are written with pyarrow in the
dataset's documented schema, so that they do not depend on how the store writes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CONF, ROOT, make_cfg, stderr_lines
from hydra import compose, initialize_config_dir
from matplotlib.collections import PolyCollection
from matplotlib.image import imread

from orchestrator import report, report_capacity, report_files, report_plots, report_tables
from orchestrator.grid import expand
from orchestrator.rows import COLUMNS
from orchestrator.store import Store

PNG = b"\x89PNG\r\n\x1a\n"
H100 = "NVIDIA H100 80GB HBM3"
ARROW = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_(),
         "timestamp": pa.timestamp("us", tz="UTC")}
SCHEMA = pa.schema([(c.name, ARROW[c.type]) for c in COLUMNS])


def report_cfg(*overrides: str):
    """The real composed config of `python -m orchestrator.report OVERRIDES`."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("report", overrides=list(overrides))


def check_png(path, min_width: int = 600) -> None:
    """A real image of non-trivial size: PNG signature, IHDR size, and pixels that are not all alike."""
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= min_width and height >= 300 and len(data) > 10_000, (path, width, height, len(data))
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01


def table_rows(md: str, title_part: str) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of the markdown table under the heading that contains title_part, by (seq_len,
    backend), each a dict by column header."""
    section = md.split(title_part, 1)[1].split("\n#", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in lines]
    header = split[0]
    return {(c[0], c[1]): dict(zip(header, c, strict=True)) for c in split[2:]}


def copy_rows(store_path, **changes) -> list[dict]:
    """The dataset's rows as Python values (in the columns of rows.py), with new row ids, changed as asked."""
    df = report.complete(Store(store_path).read())[SCHEMA.names]
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    return [{**r, "row_id": uuid.uuid4().hex, **changes} for r in rows]


def write_part(store_path, rows: list[dict], schema: pa.Schema = SCHEMA) -> None:
    """Rows as one parquet part file of the dataset (keys not in the schema are an error)."""
    store_path.mkdir(parents=True, exist_ok=True)
    extra = {k for r in rows for k in r} - set(schema.names)
    assert not extra, extra
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), store_path / f"part-{uuid.uuid4().hex}.parquet")


BASE_MS = {"eager": 4.0, "math": 6.0, "flash": 0.5, "efficient": 0.9, "cudnn": 0.4, "flex": 0.7}
PEAK = {"eager": 6, "math": 8}  # bytes per seq_len² per batch x head (the others: linear)


def gpu_rows(backends=("eager", "math", "flash", "efficient", "cudnn"), seq_lens=(512, 1024, 2048, 4096),
             dtypes=("bfloat16",), batch_sizes=(8,), head_dims=(128,), device=H100, **changes) -> list[dict]:
    """Rows as an H100 sweep writes them (every column of rows.py), the time of each backend
    BASE_MS x (seq/1024)² x batch/8, with a p10-p90 spread, ceilings and memory."""
    t0, rows = datetime(2026, 11, 25, 9, tzinfo=timezone.utc), []
    for dtype in dtypes:
        for b in batch_sizes:
            for d in head_dims:
                for seq in seq_lens:
                    for be in backends:
                        rows.append(_gpu_row(be, dtype, b, d, seq, device, t0 + timedelta(seconds=len(rows))))
    return [{**r, **changes} for r in rows]


def _gpu_row(be, dtype, b, d, seq, device, t) -> dict:
    h = 2048 // d
    ms = BASE_MS[be] * (seq / 1024) ** 2 * b / 8
    flops = 4 * b * h * seq * seq * d / 2
    tflops = flops / (ms / 1e3) / 1e12
    params = dict(workload="attention", backend=be, mode="fwd", dtype=dtype, causal=True, head_dim=d, num_heads=h,
                  batch_size=b, seq_len=seq, target="H100")
    cell = hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:16]
    return {**params, "cell_id": cell, "row_id": uuid.uuid4().hex, "run_id": "20261125T090000-aaaaaa",
            "sweep_name": "full", "status": "ok", "attempts": 1, "isolation": "pool", "timing_method": "cuda_graph",
            "iters": 200, "stop_reason": "precision", "median_ci_pct": 0.4, "median_ms": ms, "p10_ms": ms * 0.97,
            "p90_ms": ms * 1.05, "mean_ms": ms, "min_ms": ms * 0.95, "host_median_ms": ms * 1.01,
            "launch_overhead_ms": ms * 0.01, "flops": flops, "tflops": tflops, "ceiling_tflops": 700.0,
            "ceiling_gbps": 3000.0, "pct_of_compute_ceiling": tflops / 700 * 100, "rel_error": 1e-3,
            "peak_allocated_bytes": b * h * seq * (PEAK[be] * seq if be in PEAK else 256),
            "kernels": f"aten::{be}", "kernels_match": True, "device_type": "cuda", "device_name": device,
            "compute_capability": "9.0", "driver_version": "580.159.04", "cuda_version": "13.0",
            "cudnn_version": "91900", "torch_version": "2.11.0+cu130", "host": "gpu-1", "node_id": "n1",
            "git_commit": "abc123", "tool_version": "0.3.0", "started_at": t, "ended_at": t + timedelta(seconds=1),
            "measure_s": 0.9, "cell_wall_s": 1.0}


def fail(rows, backend, seq, status, error, **changes) -> None:
    for r in rows:
        if r["backend"] == backend and r["seq_len"] == seq:
            r |= {"status": status, "error": error, "median_ms": None, "p10_ms": None, "p90_ms": None,
                  "tflops": None, "pct_of_compute_ceiling": None, "peak_allocated_bytes": None, **changes}


OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of "
       "79.18 GiB of which 3.10 GiB is free.\nIncluding non-PyTorch memory, this process has 76.0 GiB in use.")


@pytest.fixture(scope="module")
def smoke_df(smoke_dataset):
    return Store(smoke_dataset["store"]).latest()


def test_sweep_writes_report(smoke_dataset, smoke_df):
    out = smoke_dataset["output_dir"]
    pngs = sorted(out.glob("lines_*.png"))
    assert len(pngs) == 1  # one group (device, dtype, head size, causal, batch): one figure
    for p in pngs:
        check_png(p)
        assert p.with_suffix(".svg").is_file() and (out / "csv" / f"{p.stem}.median_ms.csv").is_file()
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
        assert float(cell["median ms"]) == pytest.approx(r["median_ms"], rel=1e-3)
        assert float(cell["TFLOP/s"]) == pytest.approx(r["tflops"], rel=1e-3)
        assert float(cell["speedup vs math"].rstrip("×")) == pytest.approx(base / r["median_ms"], rel=5e-3)
        peak, base_peak = r["peak_allocated_bytes"], ok.loc[(seq, "math"), "peak_allocated_bytes"]
        if peak != peak or base_peak != base_peak:  # no memory figures (NaN): a dash, not a number
            assert cell["peak MiB"] == "–" or cell["memory saving vs math"] == "–"
        else:
            assert float(cell["peak MiB"].replace(",", "")) == pytest.approx(peak / 2**20, rel=1e-3)
            assert float(cell["memory saving vs math"].rstrip("×")) == pytest.approx(base_peak / peak, rel=5e-3)


MEM = 8  # bytes per seq_len² of the non-flash rows in gpu_like_rows (flash: 1)


def gpu_like_rows(store_path) -> list[dict]:
    """Smoke rows dressed as GPU rows over seq 64..4096, with memory figures and one oom and one
    unsupported cell; the flash cell at the longest length ran kernels of another backend."""
    rows = []
    for r in copy_rows(store_path, device_type="cuda", device_name=H100, driver_version="550.54"):
        if r["status"] != "ok":
            continue
        for k, seq in enumerate([64, 256, 1024, 4096]):
            scale = (seq / r["seq_len"]) ** 2
            rows.append({**r, "row_id": uuid.uuid4().hex, "cell_id": f"{r['cell_id']}-{seq}", "seq_len": seq,
                         "median_ms": r["median_ms"] * scale, "p10_ms": r["p10_ms"] * scale,
                         "p90_ms": r["p90_ms"] * scale, "tflops": 100.0 * (k + 1),  # 4x: a linear axis
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
    write_part(store.path, gpu_like_rows(smoke_dataset["store"]))
    res = report.write(report.fill_platform(store.latest()), tmp_path / "out", title="t", sweep_name="x")
    md = res["summary"].read_text()
    rows = table_rows(md, "H100 80GB HBM3 · torch")
    oom = rows[("4096", "eager")]
    assert (oom["median ms"], oom["TFLOP/s"]) == ("oom", "–") and "CUDA out of memory" in oom["note"]
    assert rows[("64", "eager")]["median ms"] == "unsupported" and "No available kernel \\| reason" in md
    math_mib, flash_mib = (4096 * 4096 * MEM + 4096) / 2**20, (4096 * 4096 + 4096) / 2**20
    assert float(rows[("4096", "flash")]["peak MiB"]) == pytest.approx(flash_mib, rel=1e-3)
    assert float(rows[("4096", "flash")]["memory saving vs math"].rstrip("×")) == pytest.approx(math_mib / flash_mib,
                                                                                                 rel=5e-3)
    assert "Kernels that do not match the pinned backend" in md and "flash_fwd_kernel" in md
    assert "kernels of another backend" in rows[("4096", "flash")]["note"]
    page = res["html"].read_text()
    assert "<td class='bad'>oom</td>" in page and "550.54" in page
    fig = report_plots.lines(res["frame"], "t")
    axes = fig.axes[:4]
    assert [ax.get_yscale() for ax in axes[:3]] == ["log", "linear", "log"]  # TFLOP/s span less than 10x
    assert [ax.get_xscale() for ax in axes] == ["log"] * 4
    assert "not plotted" not in fig.get_suptitle()  # every backend has an ok cell somewhere


def test_seed_bar_charts_and_html_images(smoke_df, tmp_path):
    res = report.write(smoke_df, tmp_path, title="t", sweep_name="seed")
    bars = sorted(tmp_path.glob("bars_*.png"))
    assert [p.name.split("_")[1] for p in bars] == ["memory", "time"]
    for p in res["images"]:
        check_png(p)
        assert p.with_suffix(".svg").is_file()
    page = res["html"].read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == len(res["images"]) == 3
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in res["images"])
    assert "<img" in page and "src='lines_" not in page  # nothing outside the page


def figure_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.suffix in (".csv", ".svg", ".png")}


def test_plotters_started_ahead_draw_the_same_figures(tmp_path, caplog):
    """A sweep on GPUs starts its report's plotting processes with its cluster; the report hands
    them the figures and writes its tables meanwhile. The files are those of a report that draws
    them itself, byte for byte (SVG and CSV; the PNGs are checked as images)."""
    from orchestrator.plotters import Plotters

    df = report.complete(pd.DataFrame(gpu_rows(batch_sizes=(1, 8, 32))))
    plotters = Plotters(3)
    procs = list(plotters.procs)
    try:
        ahead = report.write(df, tmp_path / "ahead", title="t", sweep_name="full", plotters=plotters)
    finally:
        plotters.close()
    assert "a plotting process failed" not in caplog.text  # they drew them, not the report
    assert all(p.returncode == 0 for p in procs)  # and left when told
    here = report.write(df, tmp_path / "here", title="t", sweep_name="full")
    files = figure_files(tmp_path / "ahead")
    assert len([f for f in files if f.endswith(".png")]) == 3
    assert files.keys() == figure_files(tmp_path / "here").keys()
    assert {k: v for k, v in files.items() if not k.endswith(".png")} == \
        {k: v for k, v in figure_files(tmp_path / "here").items() if not k.endswith(".png")}
    for p in ahead["images"]:
        check_png(p)
    assert (tmp_path / "ahead" / "report.html").read_text().count("data:image/png;base64,") == 3
    assert ahead["summary"].read_text().replace("ahead", "here") == here["summary"].read_text()


def test_plotters_that_died_or_hang_leave_their_figures_to_the_report(tmp_path, caplog, monkeypatch):
    """A plotting process that died, or stopped answering (killed at the deadline), costs the
    report no figure: it draws that slice itself."""
    import signal

    from orchestrator import plotters as plotting

    monkeypatch.setattr(plotting, "ANSWER_S", 5.0)
    df = report.complete(pd.DataFrame(gpu_rows(batch_sizes=(1, 8))))
    plotters = plotting.Plotters(2)  # (this machine may have 2 CPUs)
    plotters.procs[0].kill()
    plotters.procs[1].send_signal(signal.SIGSTOP)  # alive, silent
    try:
        res = report.write(df, tmp_path, title="t", sweep_name="full", plotters=plotters)
    finally:
        plotters.close()
    assert len(res["images"]) == 2
    for p in res["images"]:
        check_png(p)
    assert caplog.text.count("drawing its 1 figure(s) here") == 2 and "no answer within 5 s; killed" in caplog.text


def test_plotters_are_started_ahead_only_for_cells_on_gpus(tmp_path):
    """One per figure (within the CPUs); none where the cells run on this machine's CPUs, whose
    cores their start would share with cells being timed, or where no figure is wanted."""
    from orchestrator.driver import GridPlanner, report_ahead
    from orchestrator.plotters import figures

    full = make_cfg("+sweep=full", "grid.dtypes=[bfloat16]", "grid.head_dims=[64,128]")
    assert figures(expand(full, "H100")) == 6  # a figure per batch size and head size
    assert figures(expand(make_cfg("+sweep=seed"), "H100"), seed=True) == 3  # with the seed's two bar charts
    one = make_cfg("+sweep=full", "grid.dtypes=[bfloat16]", "grid.head_dims=[128]", "grid.batch_sizes=[8]")
    ahead = report_ahead(one, str(tmp_path), "H100", GridPlanner(one, "H100"))
    try:
        assert len(ahead.procs) == 1
    finally:
        ahead.close()
    for cfg, target, out in ((full, "cpu", str(tmp_path)), (make_cfg("+sweep=full", "run.device=cpu"), "H100", "x"),
                             (make_cfg("+sweep=full", "report.plots=false"), "H100", "x"), (full, "H100", None)):
        assert report_ahead(cfg, out, target, GridPlanner(cfg, target)) is None


def test_device_comparison(smoke_dataset, tmp_path):
    """The same cells on a second GPU model: the report puts them side by side."""
    store = Store(tmp_path / "two")
    first = copy_rows(smoke_dataset["store"])
    write_part(store.path, first)
    later = [{**r, "device_name": "Tesla T4", "ended_at": r["ended_at"] + timedelta(hours=1),
              "median_ms": r["median_ms"] * 2 if r["median_ms"] else None} for r in copy_rows(smoke_dataset["store"])]
    write_part(store.path, later)
    res = report.from_config(report_cfg(f"store.path={store.path}", "+sweep=smoke"), tmp_path / "out")
    md = res["summary"].read_text()
    assert "## Same cells on different devices or torch versions" in md
    section = md.split("## Same cells on different devices", 1)[1].split("\n## ", 1)[0]
    ok_rows = [ln for ln in section.splitlines() if ln.startswith("| attention")]
    assert all(ln.rstrip(" |").endswith(("0.500×", "–")) for ln in ok_rows)  # "–": a cell that did not run
    assert sum(ln.rstrip(" |").endswith("0.500×") for ln in ok_rows) >= 4
    cpu = first[0]["device_name"]  # this machine's CPU, as the smoke sweep recorded it
    assert f"| {cpu} ms | Tesla T4 ms | speedup Tesla T4 vs {cpu} |" in md
    assert len(res["frame"]) == 2 * len(later)  # both devices' tables
    latest_only = report.from_config(report_cfg(f"store.path={store.path}", "compare=false"), tmp_path / "one")
    assert set(latest_only["frame"]["device_name"]) == {"Tesla T4"}


def test_fill_platform_for_crashed_rows(smoke_dataset, tmp_path):
    rows = copy_rows(smoke_dataset["store"])
    rows[0] |= {"status": "crashed", "error": "cell process killed by signal SIGSEGV (11)", "device_name": None,
                "torch_version": None, "median_ms": None}
    store = Store(tmp_path / "rows")
    write_part(store.path, rows)
    df = report.fill_platform(store.latest())
    assert df["device_name"].notna().all() and df["device_name"].nunique() == 1
    md = report.write(df, tmp_path / "out", title="t", sweep_name="x")["summary"].read_text()
    results = md.split("## Results by shape", 1)[1].split("\n## ", 1)[0]
    assert results.count("\n### ") == 1 and "| crashed |" in md and "SIGSEGV" in md


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
    args = [f"store.path={smoke_dataset['store']}", "+sweep=smoke", "dtype=float32", f"output_dir={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    done = subprocess.run([sys.executable, "-m", "orchestrator.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "speedup vs math" in done.stdout and "report:" in done.stdout
    assert (out / "summary.md").is_file() and (out / "report.html").is_file()
    for p in out.glob("*.png"):
        check_png(p)
    log_file = tmp_path / "hydra" / "report.log"  # Hydra's job log holds the messages
    assert "report:" in log_file.read_text()
    for bad_args, why in ((["dtype=float16"], "no rows with dtype"), (["+backendd=flash"], "unknown report key")):
        args = [*args[:-2], *bad_args, f"hydra.run.dir={tmp_path / 'hydra2'}"]
        bad = subprocess.run([sys.executable, "-m", "orchestrator.report", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert bad.returncode == 2 and why in bad.stderr and "Traceback" not in bad.stderr


def test_the_report_command_keeps_its_log_with_its_files_and_explains_itself(smoke_dataset, tmp_path):
    """output_dir= is the report's folder, its report.log included (the log went to a new folder
    under outputs/reports/ of wherever the command ran), and a sweep's record there is left as it
    is (no .hydra/ of the report's); --help is the report's own page; a
    store.path that does not exist is named as such (it read "no rows")."""
    def report_cli(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator.report", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "mine"  # a sweep's run folder, say, as the sweep's own hints suggest
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("the sweep's config\n")
    done = report_cli(f"store.path={smoke_dataset['store']}", f"output_dir={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "report.html").is_file() and "report:" in (out / "report.log").read_text()
    assert (out / ".hydra" / "config.yaml").read_text() == "the sweep's config\n"  # the sweep's record kept
    assert not (tmp_path / "outputs").exists()  # nothing of this report elsewhere
    page = report_cli("--help")
    assert page.returncode == 0 and "powered by Hydra" not in page.stdout
    for words in ("attn-report", "output_dir", "+COLUMN=VALUE", "report.baseline", "sweep_name", "store.path"):
        assert words in page.stdout, words
    typo = report_cli(f"store.path={tmp_path / 'reslts'}", f"output_dir={tmp_path / 'typo'}")
    assert typo.returncode == 2 and stderr_lines(typo) == [
        f"error: store.path = '{tmp_path / 'reslts'}': no such folder ({tmp_path / 'reslts'})"], typo.stderr


# constructed datasets: the figures


def test_backend_styles_are_fixed_across_figures():
    """A backend has one colour and marker whatever else is in the figure (not its sorted position)."""
    a = report.summary_frame(report.complete(pd.DataFrame(gpu_rows(backends=("flash", "math")))), "math")
    b = report.summary_frame(report.complete(pd.DataFrame(gpu_rows(backends=("cudnn", "eager", "flash")))), "math")
    seen = {}
    for frame in (a, b):
        for line in report_plots.lines(frame, "t").axes[0].get_lines():
            if line.get_label() in report_plots.STYLES:
                st = (line.get_color(), line.get_marker(), line.get_linestyle())
                assert seen.setdefault(line.get_label(), st) == st
                assert line.get_color() == report_plots.STYLES[line.get_label()][0]
    assert set(seen) == {"flash", "math", "cudnn", "eager"}
    assert len({s[0] for s in seen.values()}) == 4  # four colours
    mine = report_plots.style("my_kernel")
    assert mine == report_plots.style("my_kernel") and mine["color"] not in {s[0] for s in seen.values()}


def test_bands_and_marks_for_cells_that_did_not_run(tmp_path):
    rows = gpu_rows()
    fail(rows, "eager", 4096, "oom", OOM)
    fail(rows, "math", 512, "unsupported", "No available kernel. Aborting execution.")
    frame = report.summary_frame(report.complete(pd.DataFrame(rows)), "flash")
    fig = report_plots.lines(frame, "t", baseline="flash")
    time_ax = fig.axes[0]
    bands = {c.get_gid() for c in time_ax.collections if isinstance(c, PolyCollection)}
    assert {f"band-median_ms-{b}" for b in ("eager", "math", "flash", "efficient", "cudnn")} <= bands
    marks = {line.get_gid(): line for line in time_ax.get_lines() if line.get_gid()}
    oom = marks["oom-median_ms-eager-4096"]
    assert list(oom.get_xdata()) == [4096] and oom.get_color() == report_plots.STYLES["eager"][0]
    assert oom.get_marker() == report_plots.FAILED_MARKS["oom"]
    assert oom.get_ydata()[0] >= max(line.get_ydata().max() for g, line in marks.items() if g.startswith("line-"))
    assert "unsupported-median_ms-math-512" in marks
    for ax in fig.axes[:4]:  # every panel marks them
        assert {"oom-", "unsupported-"} <= {g[: g.index("-") + 1] for line in ax.get_lines()
                                            if (g := line.get_gid()) and not g.startswith("line-")}
    png = report_files.save(fig, tmp_path / "f.png")
    svg = png.with_suffix(".svg").read_text()
    assert 'id="oom-median_ms-eager-4096"' in svg and 'id="band-median_ms-flash"' in svg
    check_png(png, min_width=1500)  # 200 dpi: a slide's width


def test_a_share_over_the_ceiling_is_flagged_in_the_table():
    """A ceiling measured on a busy machine can read low: the share is shown as it is, with a
    note saying what it means, not as a plausible number."""
    rows = gpu_rows(backends=("flash", "math"), seq_lens=(1024,))
    rows[0] |= {"pct_of_compute_ceiling": 19800.0}
    frame = report.summary_frame(report.complete(pd.DataFrame(rows)), "math")
    (table,) = report_tables.summary_tables(frame, "math")
    notes = {r[1]: r[-1] for r in table.rows}
    assert "over the device's measured ceiling" in notes["flash"] and "ceiling" not in notes["math"]


def test_figure_files_and_wide_csv(tmp_path):
    rows = gpu_rows(batch_sizes=(1, 8))
    fail(rows, "eager", 4096, "oom", OOM)
    res = report.write(report.fill_platform(pd.DataFrame(rows)), tmp_path, title="t", sweep_name="full")
    assert len(res["images"]) == 2
    for png in res["images"]:
        check_png(png, min_width=1500)
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        med = pd.read_csv(tmp_path / "csv" / f"{png.stem}.median_ms.csv")
        assert list(med.columns) == ["seq_len", "eager", "math", "flash", "efficient", "cudnn",
                                     *[f"{b}-p{q}" for q in (10, 90) for b in ("eager", "math", "flash", "efficient",
                                                                               "cudnn")]]
        assert list(med["seq_len"]) == [512, 1024, 2048, 4096]
        batch = 1 if "_b1_" in png.stem else 8
        assert med["flash"].tolist() == pytest.approx([0.5 * (n / 1024) ** 2 * batch / 8 for n in med["seq_len"]],
                                                      rel=1e-5)
        assert pd.isna(med.loc[3, "eager"]) and med.loc[2, "eager"] > 0  # oom: an empty cell
        for metric in ("tflops", "peak_mib", "speedup"):
            wide = pd.read_csv(tmp_path / "csv" / f"{png.stem}.{metric}.csv")
            assert list(wide.columns) == ["seq_len", "eager", "math", "flash", "efficient", "cudnn"]


# constructed datasets: what the command accepts


def test_old_dataset_with_the_sweep_column():
    """docs/h100/full.parquet predates the sweep_name column and the timing columns: it reports,
    +sweep=full selects it, and a filter on a column it lacks is refused."""
    df = report.complete(pq.read_table(ROOT / "docs" / "h100" / "full.parquet").to_pandas())
    assert "sweep" not in df.columns and set(df["sweep_name"]) == {"full"} and df["timing_method"].isna().all()
    frame = report.summary_frame(report.fill_platform(df), "math")
    t = report_tables.summary_tables(frame, "math")[0]
    assert "% of ceiling" not in t.header and "p10–p90" in t.header  # no row has a share: no empty column


def test_filter_refusals_and_column_filters(tmp_path):
    store = tmp_path / "old"
    store.mkdir()
    (store / "part-h100.parquet").write_bytes((ROOT / "docs" / "h100" / "full.parquet").read_bytes())
    path = f"store.path={store}"
    with pytest.raises(report.ReportError, match=r"unknown report key 'backendd'.*filters: sweep_name, .*backend"):
        report.from_config(report_cfg(path, "+backendd=flash"), tmp_path / "a")
    with pytest.raises(report.ReportError, match="has no timing_method column"):
        report.from_config(report_cfg(path, "+timing_method=cuda_graph"), tmp_path / "b")
    with pytest.raises(report.ReportError, match="sweep_name in \\['seed'\\]; the selected rows have sweep_name: full"):
        report.from_config(report_cfg(path, "+sweep=seed"), tmp_path / "c")
    with pytest.raises(report.ReportError, match="the selected rows have seq_len: 128, 256, 512, 1024, 2048"):
        report.from_config(report_cfg(path, "seq_len=999"), tmp_path / "e")  # in their order, not as text
    res = report.from_config(report_cfg(path, "+sweep=full", "+host=vm", "dtype=float16", "batch_size=32",
                                        "head_dim=64", "report.plots=false"), tmp_path / "d")
    assert len(res["frame"]) == 40 and set(res["frame"]["host"]) == {"vm"}


def test_odd_values_and_foreign_parts(tmp_path, caplog):
    """Rows a report cannot place (a foreign file's, a seq_len that is not a number) are left out
    with a warning; numbers stored as text are read as numbers."""
    rows = gpu_rows()
    df = pd.DataFrame(rows).astype({"seq_len": object, "median_ms": object})
    df.loc[0, "seq_len"], df.loc[1, "median_ms"] = "not a number", "0.25"
    foreign = pd.DataFrame({"foo": [1, 2], "bar": ["x", "y"]})
    with caplog.at_level("WARNING", logger="orchestrator.report"):
        out = report.fill_platform(pd.concat([df, foreign], ignore_index=True))
    assert len(out) == len(rows) - 1 and "3 row(s) without" in caplog.text
    assert out["seq_len"].dtype == "int64" and out.loc[0, "median_ms"] == 0.25
    store = tmp_path / "mixed"  # the same on disk: the report command survives what a sweep survives
    write_part(store, gpu_rows(backends=("flash", "math")))
    write_part(store, [{"foo": 1}], pa.schema([("foo", pa.int64())]))
    write_part(store, [{**r, "seq_len": str(r["seq_len"])} for r in gpu_rows(backends=("cudnn",))],
               pa.schema([f if f.name != "seq_len" else pa.field("seq_len", pa.string()) for f in SCHEMA]))
    res = report.from_config(report_cfg(f"store.path={store}", "report.plots=false"), tmp_path / "out")
    assert {"flash", "math"} <= set(res["frame"]["backend"])


# the capacity search's table and plot


def capacity_results():
    key = dict(workload="attention", mode="fwd", dtype="float16", batch_size=32, num_heads=16, head_dim=64,
               causal=True)
    limit = 80 * 2**30
    flash = {**key, "backend": "flash", "longest_fit": 131072, "at_max": True, "first_fail": None,
             "fail_status": None, "trials": 2, "model": "linear", "coef": [2.0**18, 2.0**30], "limit_bytes": limit,
             "extrapolated": 323_584, "limit_source": "device"}
    math = {**key, "backend": "math", "longest_fit": 4096, "at_max": False, "first_fail": 5120, "fail_status": "oom",
            "trials": 10, "model": "quadratic", "coef": [4096.0, 0.0, 2.0**30], "limit_bytes": limit,
            "extrapolated": 4_527}
    points = [[(65536, 2.0**18 * 65536 + 2**30), (131072, 2.0**18 * 131072 + 2**30)],
              [(n, 4096.0 * n * n + 2**30) for n in (1024, 2048, 4096)]]
    return [flash, math], points


def test_capacity_table_and_plot(tmp_path):
    results, points = capacity_results()
    files = report_capacity.write(results, points, tmp_path, device=H100)
    md = files["md"].read_text()
    assert "| flash |" in md and "131,072 (max tried)" in md and "5,120 (oom)" in md and "80.0 GiB" in md
    check_png(files["png"])
    svg = files["svg"].read_text()
    assert 'id="limit"' in svg and 'id="fail-math"' in svg and 'id="extrapolated-flash"' in svg
    fig = report_capacity.figure(results, points, H100)
    ax = fig.axes[0]
    assert H100 in fig.get_suptitle() and "GiB" in ax.get_ylabel() and "sequence length" in ax.get_xlabel()
    assert any(t.get_text() == "limit 80.0 GiB (device memory)" for t in ax.texts)
    colors = {line.get_gid(): line.get_color() for line in ax.get_lines() if line.get_gid()}
    assert colors["trials-flash"] == report_plots.STYLES["flash"][0] == colors["model-flash"]
