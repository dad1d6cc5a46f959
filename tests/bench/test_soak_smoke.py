"""The soak test (bench/soak.py): its memory verdict and metrics parsing on made-up figures, and a few
seconds of the real thing (--quick) against a server subprocess. No timing is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import Sample, server_codes, verdict

ROOT = Path(__file__).resolve().parents[2]


def samples(rss: list[float], interval_s: float = 10.0, errors: dict[str, int] | None = None) -> list[Sample]:
    return [Sample((i + 1) * interval_s, r, 100 * (i + 1), 10, 5, 1000 * (i + 1), errors or {}, 5.0, {"OK": 10})
            for i, r in enumerate(rss)]


def test_verdict_is_flat_for_warm_up_growth_then_a_plateau() -> None:
    v = verdict(samples([100, 140, 170, 180, 180.5, 180.2, 180.4, 180.1, 180.3, 180.2]))
    assert v.flat and abs(v.slope_mib_per_min) < 1.0 and v.final_dev < 0.01
    assert v.total_errors == 0 and v.server_non_ok == 0


def test_verdict_is_not_flat_when_memory_keeps_growing_in_the_second_half() -> None:
    v = verdict(samples([100 + 2 * i for i in range(30)]))  # +2 MiB per 10 s = +12 MiB/min
    assert not v.flat and v.slope_mib_per_min == pytest.approx(12.0)


def test_verdict_is_not_flat_when_the_final_sample_jumps() -> None:
    v = verdict(samples([200.0] * 9 + [230.0]))
    assert not v.flat and v.final_dev > 0.05


def test_verdict_counts_client_errors_and_server_non_ok_codes() -> None:
    rows = samples([100.0] * 4, errors={"GetNextStep:UNAVAILABLE": 2, "ReportOutcome:NOT_FOUND": 1})
    rows[-1] = Sample(40.0, 100.0, 400, 10, 5, 4000, rows[-1].errors, 5.0,
                      {"OK": 400, "RESOURCE_EXHAUSTED": 3, "INTERNAL": 1})
    v = verdict(rows)
    assert (v.total_errors, v.server_non_ok) == (3, 4)


def test_server_codes_sums_rpc_counts_by_code_over_methods() -> None:
    text = "\n".join([
        "# TYPE onramp_rpc_duration_seconds histogram",
        'onramp_rpc_duration_seconds_bucket{code="OK",le="0.001",method="GetNextStep"} 3.0',
        'onramp_rpc_duration_seconds_count{code="OK",method="GetNextStep"} 120.0',
        'onramp_rpc_duration_seconds_count{code="OK",method="ReportOutcome"} 30.0',
        'onramp_rpc_duration_seconds_count{code="NOT_FOUND",method="ReportOutcome"} 2.0',
        'onramp_rpc_duration_seconds_sum{code="OK",method="GetNextStep"} 0.5',
    ])
    assert server_codes(text) == {"OK": 150, "NOT_FOUND": 2}


@pytest.mark.timeout(150)
def test_quick_soak_runs_the_mixed_load_and_samples_rss_and_metrics(tmp_path: Path) -> None:
    out_json = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--quick", "--json", str(out_json)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out_json.read_text())
    rows = res["samples"]
    assert len(rows) >= 3
    assert all(r["rss_mib"] > 10 for r in rows)
    assert [r["t_s"] for r in rows] == sorted(r["t_s"] for r in rows)
    last = rows[-1]
    assert last["requests_ok"] > 0 and last["events_acked"] > 0 and last["outcomes_ok"] > 0
    assert last["server_codes"].get("OK", 0) >= last["requests_ok"]  # the server saw at least the decisions
    assert res["verdict"]["total_errors"] == 0 and res["verdict"]["server_non_ok"] == 0
    assert res["server_alive"]
    for words in ("RSS MiB", "p99 ms", "total:", "memory:", "slope", "MiB/min"):
        assert words in proc.stdout
