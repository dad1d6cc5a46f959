"""The load generator's latency figures count failed calls with their time to failure, so an overloaded
server whose slowest calls hit the deadline does not look fast; the successful-only p99 is kept apart."""
from __future__ import annotations

from bench.loadgen import latency_stats


def test_failed_calls_count_in_the_percentiles() -> None:
    ok = [0.001] * 90
    failed = [10.0] * 10  # deadline exceeded after 10 s
    s = latency_stats(ok + failed, ok=90, errors=10, elapsed=2.0, ok_lat_s=ok)
    assert s["p99_ms"] == 10_000.0 and s["p95_ms"] == 10_000.0
    assert s["ok_p99_ms"] == 1.0
    assert s["throughput"] == 45.0  # successful calls per second only


def test_without_failures_both_p99_agree() -> None:
    lat = [i / 1000 for i in range(1, 101)]
    s = latency_stats(lat, ok=100, errors=0, elapsed=1.0, ok_lat_s=lat)
    assert s["p99_ms"] == s["ok_p99_ms"] and 99.0 <= s["p99_ms"] <= 100.0
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
