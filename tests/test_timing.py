"""The timing loop's pacing (measure.duty), on a timer that stands in for a GPU's: each timed call
sleeps 2 ms. What the GPU does under this pacing (it stays out of its power cap) is shown on the
GPU by docs/h200x2/probe_power.py; here, that the loop keeps to the rule it promises."""

from __future__ import annotations

import time

import torch

from tasks import timing

CALL_S = 0.002


class SleepingTimer(timing.Timer):
    """A timer whose calls take CALL_S each, as a GPU's would, with each batch's start and end."""

    def __init__(self):
        super().__init__(torch.device("cpu"), flush_l2=False)
        self.cuda = True  # paced as on a GPU
        self.batches: list[tuple[float, float, int]] = []

    def batch(self, fn, n, wait_each=False, while_busy=None):
        t0 = time.perf_counter()
        time.sleep(CALL_S * n)
        self.batches.append((t0, time.perf_counter(), n))
        return [CALL_S * 1e3] * n


def run(duty: float) -> tuple[SleepingTimer, list[float], str, float]:
    timer = SleepingTimer()
    p = timing.Protocol(budget_ms=100, precision=0, min_iters=3, max_iters=10000, duty=duty)
    t0 = time.perf_counter()
    ms, stop = timing.timed_loop(timer, lambda: None, CALL_S, p)
    return timer, ms, stop, time.perf_counter() - t0


def test_half_duty_rests_as_long_as_each_stretch_ran():
    timer, ms, stop, wall = run(0.5)
    assert stop == "budget"
    longest = max(n for _, _, n in timer.batches)
    assert longest * CALL_S <= timing._BURST_S + 1e-9, timer.batches  # no stretch over 20 ms
    for (_, end, _), (start, _, _), (s0, e0, _) in zip(timer.batches, timer.batches[1:], timer.batches):
        assert start - end >= 0.95 * (e0 - s0), timer.batches  # a rest as long as the stretch before it
    busy = sum(e - s for s, e, _ in timer.batches)
    assert wall >= 1.9 * busy


def test_the_budget_counts_timed_calls_not_rests():
    paced, back_to_back = run(0.5), run(1.0)
    assert paced[2] == back_to_back[2] == "budget"
    assert len(back_to_back[1]) <= 55  # ~100 ms of 2 ms calls
    assert len(paced[1]) >= 0.75 * len(back_to_back[1])  # not half as many: the rests are not counted
    assert paced[3] >= 1.6 * back_to_back[3]  # though they take their time


def test_full_duty_runs_back_to_back():
    timer, ms, stop, wall = run(1.0)
    gaps = sorted(b[0] - a[1] for a, b in zip(timer.batches, timer.batches[1:]))
    assert gaps[len(gaps) // 2] < 0.005, gaps  # no rests between batches
    assert max(n for _, _, n in timer.batches) * CALL_S > timing._BURST_S  # batches grow past a stretch


def test_the_cpu_is_never_paced():
    timer = timing.Timer(torch.device("cpu"), flush_l2=False)
    p = timing.Protocol(budget_ms=30, precision=0, min_iters=3, duty=0.25)
    t0 = time.perf_counter()
    ms, stop = timing.timed_loop(timer, lambda: time.sleep(CALL_S), CALL_S, p)
    assert time.perf_counter() - t0 < 0.08  # 30 ms of calls, no rests three times as long
