"""The captured terminal in docs/report/: a real live run of ``+sweep=faults`` (cells that
raise, run out of memory, segfault, abort, exit and hang) on a 120 x 40 pseudo-terminal.

    python docs/report/terminal.py          # about a minute; rewrites docs/report/live_faults.*

``script -T`` records the run's bytes with their timing; a small terminal (carriage return,
newline, erase line, cursor up, wrapping at the right edge: all a rich live view uses) replays them to the screen as it
stood AT seconds into the run, and at its end. rich renders each screen to SVG (colours are
not kept: the replay drops them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AT = 45.0  # seconds into the run: the hanging cell's second attempt, past its estimate
COLS, ROWS = 120, 40


def record(tmp: Path) -> tuple[Path, Path]:
    ts, timing = tmp / "run.typescript", tmp / "run.timing"
    cmd = (f"stty cols {COLS} rows {ROWS}; {sys.executable} -m orchestrator +sweep=faults "
           f"store.path={tmp / 'store'} hydra.run.dir={tmp / 'run'}")
    subprocess.run(["script", "-q", "-e", "-T", str(timing), "-c", cmd, str(ts)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    return ts, timing


def screen(ts: Path, timing: Path, at: float | None) -> str:
    """The terminal's text at `at` seconds (None: the end)."""
    data = ts.read_bytes()
    data = data[data.index(b"\n") + 1:]  # script's own first line
    t, upto = 0.0, len(data)
    if at is not None:
        upto = 0
        for line in timing.read_text().splitlines():
            delay, n = line.split()[:2]
            t += float(delay)
            if t > at:
                break
            upto += int(n)
    lines, row, col = [""], 0, 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", data[:upto].decode("utf-8", "replace"))
    for tok in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", text):
        if tok == "\r":
            col = 0
        elif tok == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif tok.startswith("\x1b"):
            m = re.fullmatch(r"\x1b\[(\d*)([AK])", tok)
            if m and m.group(2) == "A":
                row = max(row - int(m.group(1) or 1), 0)
            elif m:
                lines[row] = ""
        else:
            while tok:  # the terminal wraps at its right edge
                if col == COLS:
                    row, col = row + 1, 0
                    lines += [""] * (row + 1 - len(lines))
                part, tok = tok[: COLS - col], tok[COLS - col:]
                cur = lines[row].ljust(col)
                lines[row], col = cur[:col] + part + cur[col + len(part):], col + len(part)
    lines = [ln.rstrip() for ln in lines if not ln.startswith("Script done")]
    return "\n".join(lines).rstrip() + "\n"


def save(text: str, name: str, title: str) -> None:
    from rich.console import Console
    from rich.text import Text

    (HERE / f"{name}.txt").write_text(text)
    c = Console(record=True, width=COLS, file=open("/dev/null", "w"))  # noqa: SIM115
    c.print(Text(text), soft_wrap=True)
    c.save_svg(str(HERE / f"{name}.svg"), title=title)
    print(f"docs/report/{name}.txt, .svg: {len(text.splitlines())} lines")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="live-faults-") as tmp:
        ts, timing = record(Path(tmp))
        save(screen(ts, timing, AT), "live_faults", f"python -m orchestrator +sweep=faults, {AT:.0f} s in")
        save(screen(ts, timing, None), "live_faults_end", "python -m orchestrator +sweep=faults, at its end")


if __name__ == "__main__":
    main()
