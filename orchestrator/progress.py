"""Progress of a running sweep: cells done of total, by status, devices, elapsed, time left.

A live rich bar on a terminal; one plain line per finished cell otherwise, so logs read well.
"""

from __future__ import annotations

import collections
import sys
import time


def fmt_s(s: float) -> str:
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
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
            from rich.progress import TimeElapsedColumn, TimeRemainingColumn

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[tally]}"),
            )
            self._task = self._rich.add_task(f"{label} on {devices} device(s)", total=total, tally="")
            self._rich.start()

    def tally(self) -> str:
        return " ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))

    def eta(self) -> float:
        el = time.perf_counter() - self.t0
        return el / self.done * (self.total - self.done) if self.done else float("nan")

    def update(self, row: dict) -> None:
        self.done += 1
        self.by_status[row["status"]] += 1
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=1, tally=self.tally())
            return
        el = time.perf_counter() - self.t0
        what = f"{row['backend']} {row['dtype']} b{row['batch_size']} h{row['num_heads']}x{row['head_dim']} n{row['seq_len']}"
        t = f"{row['median_ms']:.3f} ms" if row.get("median_ms") is not None else (row.get("error") or "")[:80]
        left = fmt_s(self.eta()) if self.done < self.total else "0:00:00"
        print(
            f"[{self.done}/{self.total}] {row['status']:<11} {what}: {t} | {self.tally()} | "
            f"{self.devices} device(s) | elapsed {fmt_s(el)} left ~{left}",
            flush=True,
        )

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
