"""When the worker first looks at a job: pure logic of the per-model estimate (no broker, no edge)."""

from __future__ import annotations

import random

import pytest

from worker.jobs import FIRST_LOOK_SHARE_DOWN, FIRST_LOOK_SHARE_START, FIRST_LOOK_SHARE_UP, DurationEstimator

MODEL = ("m", "1.0")


def test_the_first_look_starts_halfway_through_the_submissions_round_trip_plus_the_duration() -> None:
    estimator = DurationEstimator(default_s=0.05)
    assert FIRST_LOOK_SHARE_START == 0.5
    assert estimator.first_look(MODEL, 10.0, 10.002) == pytest.approx(10.0 + 0.001 + 0.05)
    estimator.observe(MODEL, 0.2)
    assert estimator.first_look(MODEL, 10.0, 10.002) == pytest.approx(10.0 + 0.001 + 0.2)
    # Another model keeps its own figures.
    assert estimator.first_look(("other", "1"), 10.0, 10.002) == pytest.approx(10.051)


def test_an_early_look_moves_it_later_and_a_late_one_a_little_earlier_within_the_round_trip() -> None:
    estimator = DurationEstimator(default_s=0.0)
    estimator.observe(MODEL, 0.001)  # the floor of a duration, so only the share moves below
    base = estimator.first_look(MODEL, 0.0, 1.0) - 0.5
    estimator.first_look_was(MODEL, early=True)
    assert estimator.first_look(MODEL, 0.0, 1.0) == pytest.approx(base + 0.5 + FIRST_LOOK_SHARE_UP)
    estimator.first_look_was(MODEL, early=False)
    assert estimator.first_look(MODEL, 0.0, 1.0) == pytest.approx(
        base + 0.5 + FIRST_LOOK_SHARE_UP - FIRST_LOOK_SHARE_DOWN
    )
    for _ in range(10):
        estimator.first_look_was(MODEL, early=True)
    assert estimator.first_look(MODEL, 0.0, 1.0) == pytest.approx(base + 1.0)  # never after the receipt
    for _ in range(200):
        estimator.first_look_was(MODEL, early=False)
    assert estimator.first_look(MODEL, 0.0, 1.0) == pytest.approx(base)  # never before the sending


@pytest.mark.parametrize("edge_share", [0.1, 0.5, 0.9])
def test_on_a_steady_edge_few_first_looks_come_early_and_the_rest_come_soon_after_the_end(edge_share: float) -> None:
    """A simulated edge that starts its clock at edge_share of a 1.5 to 2.5 ms round trip and runs 50 ms.

    (A model whose durations vary more than the round trip has early looks whatever the share: the share is
    kept within the round trip, where the edge's start is known to be.)
    """
    rng = random.Random(7)
    estimator = DurationEstimator(default_s=0.05)
    early = 0
    lateness: list[float] = []
    for n in range(2000):
        sent = n * 1.0
        trip = rng.uniform(0.0015, 0.0025)
        duration = 0.05
        end = sent + edge_share * trip + duration
        look = estimator.first_look(MODEL, sent, sent + trip)
        estimator.first_look_was(MODEL, early=look < end)
        estimator.observe(MODEL, duration)
        if n >= 200:  # settled
            early += look < end
            lateness.append(max(0.0, look - end))
    assert 0.01 < early / 1800 < 0.2
    lateness.sort()
    # Looking at the receipt would be late by (1 - edge_share) of the trip, about 2 ms x that on average.
    assert lateness[len(lateness) // 2] < 0.0006
