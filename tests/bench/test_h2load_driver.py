"""The h2load serving driver (:mod:`bench.h2load`): request bodies, h2load output parsing and the due-time
latencies always; with h2load installed, a tiny run against a real server (also that a non-OK grpc-status
behind HTTP 200 is counted as a failure) and ``python -m bench serving --driver h2load --quick``.
No timing is asserted."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import h2load
from bench.common import worker_shares
from bench.h2load import LogRow
from onramp.v1 import onramp_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
needs_h2load = pytest.mark.skipif(h2load.h2load_path() is None and not os.environ.get("CI"),  # CI installs it
                                  reason="h2load not installed (Debian/Ubuntu: apt-get install -y nghttp2-client)")

# Printed by h2load nghttp2/1.52.0 (abridged).
H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 1 total client(s). 400 total requests

finished in 2.01s, 199.28 req/s, 62.30KB/s
requests: 400 total, 398 started, 397 done, 396 succeeded, 1 failed, 2 errored, 3 timeout
status codes: 396 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_the_body_is_a_grpc_frame_holding_the_request() -> None:
    body = h2load.request_body("u7")
    assert body[0] == 0  # not compressed
    assert int.from_bytes(body[1:5], "big") == len(body) - 5
    req = pb.NextStepRequest.FromString(body[5:])
    assert req.user_id == "u7" and req.timestamp_ms == 0


def test_the_path_is_the_services_get_next_step() -> None:
    assert h2load.GET_NEXT_STEP_PATH == "/onramp.v1.Onramp/GetNextStep"


def test_h2load_summary_is_parsed() -> None:
    c = h2load.parse_counts(H2LOAD_OUTPUT)
    assert c == {"total": 400, "started": 398, "done": 397, "succeeded": 396, "failed": 1, "errored": 2,
                 "timeout": 3, "elapsed_us": 2_010_000}
    with pytest.raises(RuntimeError, match="no h2load summary"):
        h2load.parse_counts("connect: Connection refused")


def test_error_statuses_are_read_from_the_first_header_blocks_h2load_v_prints() -> None:
    out = ("Application protocol: h2c\n[stream_id=1] :status: 200\n[stream_id=1] content-type: application/grpc\n"
           "[stream_id=3] :status: 200\n[stream_id=3] content-type: application/grpc\n[stream_id=3] grpc-status: 1\n"
           "[stream_id=3] grpc-message: CANCELLED\n[stream_id=5] :status: 200\n[stream_id=5] grpc-status: 3\n"
           "[stream_id=7] :status: 200\n[stream_id=7] grpc-status: 0\nprogress: 100% done\n")
    assert h2load.trailers_only_statuses(out) == (4, {"CANCELLED": 1, "INVALID_ARGUMENT": 1})


def test_log_rows_are_read_in_start_order(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("1000300\t200\t50\n1000000\t200\t400\n1000100\t503\t20\n")
    rows = h2load.read_log(log)
    assert [r.start_us for r in rows] == [1000000, 1000100, 1000300]
    assert rows[1].status == 503 and rows[0].end_us == 1000400


def test_latency_counts_from_the_due_time_when_a_request_went_out_late() -> None:
    # 1000 req/s: due at 0, 1000, 2000 us; the third waited 3000 us in h2load for a free stream.
    rows = [LogRow(0, 200, 100), LogRow(1000, 200, 100), LogRow(5000, 200, 100)]
    assert h2load.latency_from_schedule(rows, 1000.0) == [100.0, 100.0, 3100.0]
    # sent on time or early: the measured latency stands
    assert h2load.latency_from_schedule([LogRow(0, 200, 70), LogRow(900, 200, 80)], 1000.0) == [70.0, 80.0]


def test_one_process_per_hundred_requests_per_second() -> None:
    assert [h2load.processes_for(r, 4) for r in (50, 500, 1000, 2000, 0)] == [1, 5, 10, 20, 4]


def test_a_missing_h2load_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2LOAD", "/nonexistent/h2load")
    with pytest.raises(h2load.H2loadMissing, match="apt-get install -y nghttp2-client"):
        h2load.run(quick=True)
    env = {**os.environ, "H2LOAD": "/nonexistent/h2load"}
    proc = subprocess.run([sys.executable, "-m", "bench.h2load", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nghttp2-client" in proc.stderr


@needs_h2load
@pytest.mark.timeout(120)
def test_answers_are_checked_against_the_decision_rows(tmp_path: Path) -> None:
    from bench.common import start_onramp
    db = tmp_path / "h2.db"
    srv = start_onramp(db)
    try:
        exe = h2load.require_h2load()
        good = h2load.one_load(exe, srv, db, ["visitor-1"], 100, 0.3, 32, 10.0, tmp_path)
        assert good["http_200"] == 30 and good["decisions_logged"] == 30
        assert good["errors"] == 0 and good["ok"] == 30 and good["p99_ms"] > 0
        # no user id: INVALID_ARGUMENT, sent as HTTP 200 + grpc-status 3, which h2load counts as a success
        bad = h2load.one_load(exe, srv, db, [""], 100, 0.3, 32, 10.0, tmp_path)
        assert bad["http_200"] == 30 and bad["h2load"]["succeeded"] == 30
        assert bad["decisions_logged"] == 0 and bad["grpc_failed"] == 30 and bad["errors"] == 30 and bad["ok"] == 0
        assert bad["error_codes"] == {"INVALID_ARGUMENT": 30} and good["error_codes"] == {}
        closed = h2load.one_load(exe, srv, db, ["visitor-2", "visitor-3"], 0, 0.3, 8, 10.0, tmp_path)
        assert closed["ok"] > 0 and closed["grpc_failed"] == 0
        assert 0 <= closed["decisions_logged"] - closed["http_200"] <= closed["in_flight_at_end"]
    finally:
        srv.stop()


@needs_h2load
@pytest.mark.timeout(220)
def test_bench_serving_with_the_h2load_driver_reports_every_load(tmp_path: Path) -> None:
    out_json = tmp_path / "serving.json"
    pin = ["--cpus", "1:0"] if len(os.sched_getaffinity(0)) >= 2 else []
    proc = subprocess.run([sys.executable, "-m", "bench", "serving", "--driver", "h2load", "--quick", "--workers", "1,2",
                           *pin, "--json", str(out_json)], cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr
    out, res = proc.stdout, json.loads(out_json.read_text())["serving"]
    assert "h2load nghttp2/" in out
    assert set(res["table"]) == {"500 rps", "1000 rps", "2000 rps", "closed loop"}
    for key, row in res["table"].items():
        assert re.search(rf"{key}\s+ratio\s+throughput onramp/bare \d", out), key
        for name in ("onramp", "onramp_2w", "bare"):
            assert 0 < row[f"{name}_p50_ms"]["median"] <= row[f"{name}_p95_ms"]["median"] <= row[f"{name}_p99_ms"]["median"]
            assert all(r["ok"] > 0 for r in res["raw"][key][name])
            assert row[f"{name}_server_cpu_us_per_call"]["median"] > 0
        for r in res["raw"][key]["onramp"] + res["raw"][key]["onramp_2w"]:
            assert r["grpc_failed"] == 0 and r["decisions_logged"] >= r["http_200"]
        assert row["onramp_2w_cpu_vs_onramp"]["median"] > 0
        assert re.search(rf"{key}\s+onramp_2w \(2 workers\): CPU/call onramp_2w/onramp \d.*workers' CPU split "
                         rf"worker 0 \d+%, worker 1 \d+%", out), key
    # each of the two workers served calls: h2load's many connections (one per process) reached both
    shares = worker_shares(r for by in res["raw"].values() for r in by["onramp_2w"])
    assert set(shares) == {"worker 0", "worker 1"} and min(shares.values()) > 0.1, shares
    assert set(worker_shares(r for by in res["raw"].values() for r in by["onramp"])) == set()  # one process
    assert res["workers"] == {"onramp": 1, "onramp_2w": 2}
    if pin:
        assert "CPUs: servers on CPU 1, load generator on CPU 0" in out
    checks = res["checks"]
    assert checks["onramp_nghttp_grpc_status"] in (0, None) and checks["bare_nghttp_grpc_status"] in (0, None)
    logged = sum(r["decisions_logged"] for by in res["raw"].values() for r in by["onramp"])
    assert sum(checks["onramp_reasons_under_load"].values()) == logged
