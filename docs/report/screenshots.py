"""The screenshots in docs/report/: the H100 full-sweep report (docs/h100/full.parquet) in a real
headless browser at a laptop's width (1366 x 900), and one of its figures.

    apt-get install -y chromium pngquant   # Debian
    python docs/report/screenshots.py      # rewrites docs/report/*.png, *.svg

Steps: ``python -m orchestrator.report`` on a temporary store holding a copy of the parquet file;
Chromium screenshots of the page's first screen and of the whole page (a 16,000 px tall window,
which also measures the page's height); one group's section cropped from the whole page (its
bounds found by screenshotting the same page again with that section outlined); pngquant.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GROUP = "_float16_d64_h32_b32"  # the shape with the most cells that did not run
WIDTH, HEIGHT, TALL = 1366, 900, 16000


def chromium(url: str, out: Path, height: int, profile: Path) -> Image.Image:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                    "--hide-scrollbars", "--virtual-time-budget=5000", f"--window-size={WIDTH},{height}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    return Image.open(out).convert("RGB")


def section_bounds(page: Path, anchor: str, tmp: Path, profile: Path) -> tuple[int, int]:
    """Top and bottom of a section on the page: the rows of a magenta outline drawn around it."""
    marked = tmp / "marked.html"
    style = f"<style>[id='{anchor}'] {{ outline: 4px solid #ff00ff; outline-offset: 6px; }}</style></head>"
    marked.write_text(page.read_text().replace("</head>", style, 1))
    a = np.asarray(chromium(marked.as_uri(), tmp / "marked.png", TALL, profile)).astype(int)
    magenta = (a[:, :, 0] > 240) & (a[:, :, 1] < 30) & (a[:, :, 2] > 240)
    rows = np.where(magenta.sum(axis=1) > WIDTH // 2)[0]
    return int(rows.min()), int(rows.max())


def quantize(src: Path, dst: Path) -> None:
    subprocess.run(["pngquant", "--force", "--quality=60-90", "--output", str(dst), str(src)], check=True)
    print(f"{dst.relative_to(ROOT)}: {dst.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="report-shots-"))
    profile = tmp / "chromium-profile"
    store, out = tmp / "store", tmp / "report"
    store.mkdir()
    shutil.copy(ROOT / "docs" / "h100" / "full.parquet", store / "part-h100.parquet")
    subprocess.run([sys.executable, "-m", "orchestrator.report", f"store.path={store}", f"output_dir={out}",
                    f"hydra.run.dir={tmp / 'hydra'}"], cwd=ROOT, check=True, capture_output=True)
    page = out / "report.html"
    chromium(page.as_uri(), tmp / "top.png", HEIGHT, profile)
    quantize(tmp / "top.png", HERE / "report_top.png")
    whole = chromium(page.as_uri(), tmp / "whole.png", TALL, profile)
    ink = np.where(np.asarray(whole.convert("L")).min(axis=1) < 250)[0]
    print(f"page height at {WIDTH} px wide: {ink.max() + 24} px")
    anchor = re.search(rf"<section class='group' id='([^']*{GROUP}[^']*)'", page.read_text()).group(1)
    top, bottom = section_bounds(page, anchor, tmp, profile)
    whole.crop((0, top + 10, WIDTH, bottom - 6)).save(tmp / "group.png")  # inside the outline (4 px, 6 px off)
    quantize(tmp / "group.png", HERE / "report_group.png")
    figure = out / f"lines_{anchor}.png"
    quantize(figure, HERE / "lines_example.png")
    shutil.copy(figure.with_suffix(".svg"), HERE / "lines_example.svg")
    shutil.copy(out / "csv" / f"lines_{anchor}.median_ms.csv", HERE / "lines_example.median_ms.csv")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
