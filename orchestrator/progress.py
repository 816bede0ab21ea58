"""Progress of a running sweep: cells done of total, by status, devices, elapsed, time left.

A live rich bar on a terminal; one plain line per finished cell otherwise, so logs read well.
"""

from __future__ import annotations

import collections
import sys
import time


def fmt_s(s: float) -> str:
    """h:mm:ss; '?' while there is nothing to estimate from."""
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, devices: int, label: str, enabled: bool = True, live: bool | None = None):
        self.total, self.devices, self.label, self.enabled = total, devices, label, enabled
        self.done = 0
        self.by_status = collections.Counter()
        self.t0 = time.perf_counter()
        self.live = sys.stdout.isatty() if live is None else live
        self._rich = None
        if enabled and self.live and total:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            # time left: the same whole-sweep average as the plain lines (rich's own estimate
            # looks at the last 30 s only, and cells can take minutes)
            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("left ~{task.fields[left]}"), TextColumn("{task.fields[tally]}"),
            )
            self._task = self._rich.add_task(f"{label} on {devices} device(s)", total=total, tally="", left="?")
            self._rich.start()

    def tally(self) -> str:
        return " ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))

    def eta(self) -> float:
        el = time.perf_counter() - self.t0
        return el / self.done * (self.total - self.done) if self.done else float("nan")

    def left(self) -> str:
        return fmt_s(self.eta()) if self.done < self.total else "0:00:00"

    def update(self, row: dict) -> None:
        self.done += 1
        self.by_status[row["status"]] += 1
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=1, tally=self.tally(), left=self.left())
            return
        el = time.perf_counter() - self.t0
        what = (f"{row['backend']} {row['dtype']} b{row['batch_size']} h{row['num_heads']}x{row['head_dim']} "
                f"n{row['seq_len']}")
        ms = row.get("median_ms")
        t = f"{ms:.3f} ms" if ms is not None and ms == ms else (row.get("error") or "")[:80]
        print(
            f"[{self.done}/{self.total}] {row['status']:<11} {what}: {t} | {self.tally()} | "
            f"{self.devices} device(s) | elapsed {fmt_s(el)} left ~{self.left()}",
            flush=True,
        )

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
