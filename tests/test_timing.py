"""The timing loop's pacing (measure.duty), on a timer that stands in for a GPU's (each timed
call takes 2 ms) and a clock of its own, so that a loaded machine cannot move the figures. What
the GPU does under this pacing (it stays out of its power cap) is shown on the GPU by
docs/h200x2/probe_power.py; here, that the loop keeps to the rule it promises."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from tasks import timing

CALL_S = 0.002


class Clock:
    """time.perf_counter, perf_counter_ns and sleep on a clock that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def perf_counter_ns(self) -> int:
        return int(self.now * 1e9)

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(timing, "time", c)
    return c


class GpuLikeTimer(timing.Timer):
    """A timer whose calls take CALL_S each, as a GPU's would, with each batch's start and end."""

    def __init__(self, clock: Clock):
        super().__init__(torch.device("cpu"), flush_l2=False)
        self.cuda = True  # paced as on a GPU
        self.clock = clock
        self.batches: list[tuple[float, float, int]] = []

    def batch(self, fn, n, wait_each=False, while_busy=None):
        t0 = self.clock.now
        self.clock.now += CALL_S * n
        self.batches.append((t0, self.clock.now, n))
        return [CALL_S * 1e3] * n


def run(clock: Clock, duty: float, est_s: float = CALL_S, **kw) -> tuple[GpuLikeTimer, list[float], str, float]:
    timer = GpuLikeTimer(clock)
    p = timing.Protocol(**{"budget_ms": 100, "precision": 0, "min_iters": 3, "max_iters": 10000, "duty": duty} | kw)
    t0 = clock.now
    ms, stop = timing.timed_loop(timer, lambda: None, est_s, p)
    return timer, ms, stop, clock.now - t0


def test_half_duty_rests_as_long_as_each_stretch_ran(clock):
    timer, ms, stop, wall = run(clock, 0.5)
    assert stop == "budget"
    assert max(n for _, _, n in timer.batches) * CALL_S <= timing._BURST_S + 1e-9, timer.batches  # <= 20 ms
    for (s0, e0, _), (start, _, _) in pairwise(timer.batches):
        assert start - e0 >= e0 - s0 - 1e-9, timer.batches  # a rest as long as the stretch before it
    busy = sum(e - s for s, e, _ in timer.batches)
    assert wall >= 2 * busy - 1e-9


def test_stretches_follow_the_timed_calls_not_the_estimate(clock):
    """The first stretch is sized by the estimate; once timed calls show their own length, so are
    the next: here the estimate is 10 times too short."""
    timer, ms, stop, wall = run(clock, 0.5, est_s=CALL_S / 10, budget_ms=400)
    assert [n for _, _, n in timer.batches][1:] and all(n * CALL_S <= timing._BURST_S + 1e-9
                                                         for _, _, n in timer.batches[1:]), timer.batches


def test_the_budget_counts_timed_calls_not_rests(clock):
    paced, back_to_back = run(clock, 0.5), run(clock, 1.0)
    assert paced[2] == back_to_back[2] == "budget"
    assert 50 <= len(paced[1]) == len(back_to_back[1]) <= 52  # 100 ms of 2 ms calls, at either duty
    assert paced[3] >= 1.9 * back_to_back[3]  # though the rests take their time


def test_full_duty_runs_back_to_back(clock):
    timer, ms, stop, wall = run(clock, 1.0)
    assert all(b[0] == a[1] for a, b in pairwise(timer.batches))  # no rests
    assert max(n for _, _, n in timer.batches) * CALL_S > timing._BURST_S  # batches grow past a stretch


def test_the_cpu_is_never_paced(clock):
    timer = timing.Timer(torch.device("cpu"), flush_l2=False)
    p = timing.Protocol(budget_ms=30, precision=0, min_iters=3, duty=0.25)
    t0 = clock.now
    ms, stop = timing.timed_loop(timer, lambda: clock.sleep(CALL_S), CALL_S, p)
    assert stop == "budget" and clock.now - t0 == pytest.approx(len(ms) * CALL_S)  # calls only, no rests
