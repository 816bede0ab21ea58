"""The driver's own cost at scale: grid expansion, bookkeeping and resume, without a GPU.

    python benchmarks/driver.py            # 10,000 cells, 100,000 stored rows

Measures the CPU time the driver spends per 1,000 cells on what it does for every cell
(expanding the grid, hashing cell ids, filtering done cells, the capability check, making
a row, progress bookkeeping) and the time to load a 100,000-row dataset for resume.
Target: well under 1 s of CPU per 1,000 cells; resume load under 1 s.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from orchestrator import capability  # noqa: E402
from orchestrator.config import Config  # noqa: E402
from orchestrator.driver import make_row  # noqa: E402
from orchestrator.grid import expand  # noqa: E402
from orchestrator.progress import Progress  # noqa: E402
from orchestrator.store import Store  # noqa: E402


def grid(n_seq: int):
    cfg = OmegaConf.structured(Config)
    cfg.grid.backends = ["eager", "math", "flash", "efficient", "cudnn"]
    cfg.grid.seq_lens = [128 * (i + 1) for i in range(n_seq)]
    cfg.grid.batch_sizes = [1, 8, 32, 64]
    cfg.grid.head_dims = [64, 128]
    cfg.grid.num_heads = [16]
    cfg.grid.dtypes = ["float16", "bfloat16"]
    cfg.grid.causal = [True, False]
    cfg.grid.accelerators = ["T4", "H100"]
    return cfg


def cpu_s(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def result(i: int) -> dict:
    t = datetime.now(timezone.utc)
    return {"status": "ok", "error": None, "median_ms": 1.0 + i % 7, "p10_ms": 1.0, "p90_ms": 2.0, "iters": 100,
            "tflops": 10.0, "rel_error": 1e-3, "started_at": t, "ended_at": t, "measure_s": 1.0, "attempts": 1}


def main() -> None:
    cfg = grid(n_seq=32)  # 5 x 32 x 4 x 2 x 2 x 2 x 2 = 10,240 cells
    cells, t_expand = cpu_s(lambda: expand(cfg))
    n = len(cells)
    done_ids = {c.cell_id for c in cells[: n // 2]}
    todo, t_filter = cpu_s(lambda: [c for c in cells if c.cell_id not in done_ids])
    _, t_cap = cpu_s(lambda: [capability.reason(c) for c in todo])
    progress = Progress(len(todo), 8, "bench", enabled=False)
    ctx = {"run_id": "r", "sweep_name": "bench", "isolation": "pool", "git_commit": "x", "measure_key": "k"}

    def book():
        rows = [make_row(c, result(i), ctx) for i, c in enumerate(todo)]
        for r in rows:
            progress.update(r)
        return rows

    rows, t_rows = cpu_s(book)
    per_k = lambda s, k: s / k * 1000  # noqa: E731
    table = [("expand grid (ids hashed)", n, t_expand), ("filter done cells", n, t_filter),
             ("capability check", len(todo), t_cap), ("make rows + progress", len(todo), t_rows)]

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        big = [make_row(cells[i % n], result(i), ctx) for i in range(100_000)]
        for k in range(0, len(big), 10_000):  # ten sweeps' worth of compacted files
            store.append(big[k:k + 10_000])
        t0 = time.perf_counter()
        done = store.done()
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.append([rows[0]])
        t_append = time.perf_counter() - t0

    print(f"\n{'step':<28} {'cells':>7} {'cpu s':>8} {'cpu s / 1000 cells':>20}")
    for name, k, s in table:
        print(f"{name:<28} {k:>7} {s:>8.3f} {per_k(s, k):>20.4f}")
    total = sum(per_k(s, k) for _, k, s in table)
    print(f"{'all driver bookkeeping':<28} {'':>7} {'':>8} {total:>20.4f}")
    print(f"\nresume: {len(done):,} done cell ids from a 100,000-row dataset (10 files) in {t_load:.3f} s")
    print(f"one row made durable (parquet part, fsync, rename): {t_append * 1e3:.1f} ms")
    print(f"driver CPU per 1000 cells: {total:.3f} s (target < 1 s); resume load {t_load:.3f} s (target < 1 s)")


if __name__ == "__main__":
    main()
