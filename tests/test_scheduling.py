"""Ray scheduling across (fake) GPUs: every GPU works at once, one cell per GPU."""

import pandas as pd
import pytest
from conftest import make_cfg

from orchestrator.driver import run


def max_overlap(df: pd.DataFrame) -> int:
    """The most cells measuring at one instant (from each cell's go to its end: a cell's process
    may start and prepare while the previous cell on its device finishes, never measure)."""
    go = df.ended_at - pd.to_timedelta(df.measure_s, unit="s")
    events = sorted([(t, 1) for t in go] + [(t, -1) for t in df.ended_at])
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


# 8 like cells long enough (0.7 s each) that every device is seen measuring at once
SPREAD = ["+sweep=smoke", "grid.backends=[math]", "grid.seq_lens=[64,96,128,160,192,224,256,288]",
          "measure.warmup_ms=100", "measure.budget_ms=600", "measure.max_iters=100000", "measure.precision=0",
          "run.device=cpu"]


def fake_gpu_sweep(tmp_path, isolation, *extra):
    cfg = make_cfg(*SPREAD, f"run.isolation={isolation}", *extra, store=tmp_path / isolation)
    summary = run(cfg)
    return summary, pd.read_parquet(tmp_path / isolation)


def test_pool_uses_all_four_gpus_at_once(ray_fake_gpus, tmp_path):
    summary, df = fake_gpu_sweep(tmp_path, "pool")
    assert summary.devices == 4 and (df.status == "ok").all() and len(df) == 8
    assert sorted(df.cuda_visible_devices.unique()) == ["0", "1", "2", "3"]  # one GPU each
    assert sorted(df.groupby("cuda_visible_devices").size()) == [2, 2, 2, 2]  # 8 like cells spread evenly
    assert max_overlap(df) == 4


@pytest.mark.slow
def test_task_mode_holds_one_gpu_per_cell(ray_fake_gpus, tmp_path):
    # a task's worker starts take seconds and Ray starts two at a time here: with 0.7 s cells the
    # measuring windows met by luck (overlaps of 2, 3 and 4 in three runs); with 2.6 s, 4 each time
    summary, df = fake_gpu_sweep(tmp_path, "task", "measure.budget_ms=2500")
    assert summary.devices == 4 and (df.status == "ok").all()
    assert df.cuda_visible_devices.str.fullmatch(r"[0-3]").all()
    assert max_overlap(df) >= 3  # on 2 cores, Ray worker start-up staggers the tasks
    assert max_overlap(df) <= 4
