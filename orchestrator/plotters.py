"""Processes that draw a report's figures beside the one that writes its tables.

Each is a fresh interpreter running ``python -m orchestrator.report_files --serve``: a fork of a
process that runs Ray's threads is never safe, and multiprocessing's spawn would re-run the
caller's main script. Its imports (matplotlib, pandas: 1-2 s) are most of a figure's cost, so a
sweep starts its plotters with its cluster, while nothing is measured yet, and its report only
hands them the figures (``Plotters.submit``); a report without them starts its own.

A plotter answers each slice of jobs on a pipe of its own ('ok' or what failed), never on the
stdout that the drawing libraries share. A slice whose plotter failed, died or did not answer
within ``ANSWER_S`` (it is killed) is drawn by the report itself.

No matplotlib here: the driver imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.grid import SHAPE

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
MOST = 8
ANSWER_S = 300.0  # a slice of figures takes seconds; beyond this its plotter is stuck


def figures(cells, seed: bool = False) -> int:
    """The figures a report of these cells draws: one per device type and shape but the length
    (``report_tables.GROUP``), three for the seed sweep (its bar charts)."""
    groups = {(c.target, *(getattr(c, k) for k in SHAPE[:-1])) for c in cells}
    return len(groups) * (3 if seed else 1)


def count(n: int) -> int:
    """Plotting processes for n figures: one each, within this machine's CPUs and MOST."""
    return max(1, min(n, MOST, os.cpu_count() or 1))


class Pending:
    """Figures being drawn: ``wait`` returns once every one is written (a slice whose process
    failed is drawn in this process)."""

    def __init__(self, owner: Plotters, sent: list[tuple[subprocess.Popen, list[dict]]], tmp, render):
        self.owner, self.sent, self.tmp, self.render = owner, sent, tmp, render

    def wait(self) -> None:
        try:
            deadline = time.monotonic() + ANSWER_S
            for proc, jobs in self.sent:
                answer = self.owner.answer(proc, deadline)
                if answer != "ok":
                    log.warning("report: a plotting process failed (%s); drawing its %d figure(s) here", answer,
                                len(jobs))
                    for job in jobs:
                        self.render(job)
        finally:
            self.tmp.cleanup()


class Plotters:
    """``n`` plotting processes (``count``), each drawing the figures it is sent."""

    def __init__(self, n: int):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.procs, self.given = [], set()
        for _ in range(count(n)):
            err = tempfile.TemporaryFile(mode="w+")
            answers_r, answers_w = os.pipe()
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator.report_files", "--serve", str(answers_w)],
                                    env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                    pass_fds=(answers_w,))
            os.close(answers_w)
            proc.err, proc.answers, proc.said = err, answers_r, b""
            self.procs.append(proc)

    def submit(self, jobs: list[dict], render) -> Pending:
        """Hand out the jobs, a slice per process; returns at once. ``render`` (``report_files``')
        draws here what a process could not."""
        tmp = tempfile.TemporaryDirectory(prefix="report-plots-")
        n = min(len(self.procs), len(jobs))
        sent = []
        for i, proc in enumerate(self.procs[:n]):
            part = jobs[i::n]
            f = Path(tmp.name) / f"jobs{i}.pickle"
            f.write_bytes(pickle.dumps(part))
            with contextlib.suppress(OSError):  # gone: its answer says so
                proc.stdin.write(f"{f}\n".encode())
                proc.stdin.flush()
            self.given.add(proc.pid)
            sent.append((proc, part))
        return Pending(self, sent, tmp, render)

    @staticmethod
    def answer(proc: subprocess.Popen, deadline: float) -> str:
        """'ok', or why this process drew nothing (it failed, died, or is killed at the deadline)."""
        while b"\n" not in proc.said:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.answers], [], [], left)[0]:
                proc.kill()
                return f"no answer within {ANSWER_S:g} s; killed"
            got = os.read(proc.answers, 4096)
            if not got:
                proc.wait()
                proc.err.seek(0)
                last = [ln for ln in proc.err.read().splitlines() if ln.strip()][-1:]
                return last[0] if last else f"exited with code {proc.returncode}"
            proc.said += got
        line, proc.said = proc.said.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def close(self) -> None:
        """Every process gone: those that drew leave when their stdin closes; those never given
        figures (no report, nothing to plot) are still importing what they will not use: killed."""
        for proc in self.procs:
            if proc.pid not in self.given:
                proc.kill()
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.err.close()
            os.close(proc.answers)
        self.procs = []


def serve(render) -> None:
    """A plotting process (``--serve FD``): for each line on stdin (a pickle of jobs), draw them
    with ``render`` (``report_files``'), then write 'ok' or what failed to FD. What the libraries
    print goes to stderr."""
    answers = os.fdopen(int(sys.argv[sys.argv.index("--serve") + 1]), "w", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        try:
            for job in pickle.loads(Path(line.strip()).read_bytes()):
                render(job)
            answer = "ok"
        except Exception as exc:  # noqa: BLE001 - the report draws the slice itself
            answer = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        answers.write(answer.replace("\n", " ") + "\n")
