"""Processes that draw a report's figures beside the one that writes its tables.

Each is a fresh interpreter running ``python -m orchestrator.report_files --serve``: a fork of a
process that runs Ray's threads is never safe, and multiprocessing's spawn would re-run the
caller's main script. Its imports (matplotlib, pandas: 1-2 s) are most of a figure's cost, so a
sweep starts its plotters with its cluster, while nothing is measured yet, and its report only
hands them the figures (``Plotters.submit``); a report without them starts its own.

No matplotlib here: the driver imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
MOST = 8


class Pending:
    """Figures being drawn: ``wait`` returns once every one is written (a slice whose process
    failed is drawn in this process)."""

    def __init__(self, owner: Plotters, sent: list[tuple[subprocess.Popen, list[dict]]], tmp):
        self.owner, self.sent, self.tmp = owner, sent, tmp

    def wait(self) -> None:
        try:
            for proc, jobs in self.sent:
                answer = self.owner.answer(proc)
                if answer != "ok":
                    log.warning("report: a plotting process failed (%s); drawing its %d figure(s) here", answer,
                                len(jobs))
                    from orchestrator.report_files import render

                    for job in jobs:
                        render(job)
        finally:
            self.tmp.cleanup()


class Plotters:
    """``n`` plotting processes, each drawing the figures it is sent, one slice per process."""

    def __init__(self, n: int):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.procs = []
        for _ in range(max(1, min(n, MOST))):
            err = tempfile.TemporaryFile(mode="w+")
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator.report_files", "--serve"], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
            proc.err = err
            self.procs.append(proc)

    def submit(self, jobs: list[dict]) -> Pending:
        """Hand out the jobs (``report_files.render``'s), a slice per process; returns at once."""
        tmp = tempfile.TemporaryDirectory(prefix="report-plots-")
        n = min(len(self.procs), len(jobs))
        sent = []
        for i, proc in enumerate(self.procs[:n]):
            part = jobs[i::n]
            f = Path(tmp.name) / f"jobs{i}.pickle"
            f.write_bytes(pickle.dumps(part))
            try:
                proc.stdin.write(f"{f}\n")
                proc.stdin.flush()
            except OSError:  # it is gone: its answer says so
                pass
            sent.append((proc, part))
        return Pending(self, sent, tmp)

    @staticmethod
    def answer(proc: subprocess.Popen) -> str:
        """'ok', or why this process drew nothing."""
        line = proc.stdout.readline().strip()
        if line == "ok":
            return line
        if line:
            return line
        proc.wait()
        proc.err.seek(0)
        last = [ln for ln in proc.err.read().splitlines() if ln.strip()][-1:]
        return last[0] if last else f"exited with code {proc.returncode}"

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.err.close()
        self.procs = []


def serve(render) -> None:
    """A plotting process: for each line on stdin (a pickle of jobs), draw them with ``render``
    (``report_files``'), then say 'ok' or what failed on stdout."""
    for line in sys.stdin:
        try:
            for job in pickle.loads(Path(line.strip()).read_bytes()):
                render(job)
            answer = "ok"
        except Exception as exc:  # noqa: BLE001 - the report draws the slice itself
            answer = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        print(answer, flush=True)
