"""The learner-lag bench's arithmetic: which snapshot first includes an outcome, and when every probe
connection had it."""
from __future__ import annotations

import doctest

import bench.learner_lag
from bench.learner_lag import SnapshotWatch, lag_ms


def test_docstring_examples_run() -> None:
    assert doctest.testmod(bench.learner_lag).failed == 0


def test_first_snapshot_including_an_outcome_is_the_first_whose_position_reaches_it() -> None:
    watch = SnapshotWatch(":memory:")
    watch.versions, watch.outcome_pos = [4, 5, 7], [10, 10, 25]
    assert watch.first_including(1) == 4
    assert watch.first_including(10) == 4
    assert watch.first_including(11) == 7
    assert watch.first_including(26) is None


def test_lag_waits_for_the_slowest_probe_connection_and_ignores_answers_before_the_report() -> None:
    probes = [[(0.5, 9), (2.0, 3)], [(1.5, 3)]]
    assert lag_ms(1.0, 3, probes) == 1000.0  # the first connection's answer at 0.5 came before the report
    assert lag_ms(1.0, 4, probes) is None  # one connection never saw version 4
    assert lag_ms(1.0, None, probes) is None  # no snapshot includes the outcome
