"""Smoke test of ``python -m bench``: every part runs with tiny sizes (--quick) and prints its figures.
No timing is asserted; only that the figures are there and are sane numbers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(part: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    """Run one part with --quick (and ``extra`` arguments) in a subprocess; return its stdout and the JSON
    results."""
    out_json = tmp_path / f"{part}.json"
    proc = subprocess.run([sys.executable, "-m", "bench", part, "--quick", *extra, "--json", str(out_json)], cwd=ROOT,
                          capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("machine: nproc="), proc.stdout
    return proc.stdout, json.loads(out_json.read_text())[part]


@pytest.mark.timeout(240)
def test_serving_reports_throughput_latency_and_ratios_for_every_load(tmp_path: Path) -> None:
    out, res = run_bench("serving", tmp_path, "--floor", "--workers", "1,2")
    assert set(res["table"]) == {"500 rps", "1000 rps", "2000 rps", "closed loop"}
    for key, row in res["table"].items():
        assert re.search(rf"{key}\s+ratio\s+throughput onramp/bare \d", out), key
        for name in ("fresh", "nolog", "floor"):
            assert re.search(rf"{key}\s+ratio\s+throughput {name}/bare \d", out), (key, name)
            assert row[f"{name}_throughput_ratio"]["median"] > 0 and row[f"{name}_p99_ratio"]["median"] > 0
        for name in ("onramp", "fresh", "nolog", "floor", "bare"):
            assert row[f"{name}_throughput"]["median"] > 0
            assert 0 < row[f"{name}_p50_ms"]["median"] <= row[f"{name}_p95_ms"]["median"] <= row[f"{name}_p99_ms"]["median"]
            runs = res["raw"][key][name]
            assert runs and all(r["ok"] > 0 for r in runs)
        assert row["throughput_ratio"]["median"] > 0 and row["p99_ratio"]["median"] > 0
        assert row["onramp_server_cpu_us_per_call"]["median"] > 0 and row["cpu_ratio"]["median"] > 0
        assert re.search(rf"{key}\s+ratio .* CPU/call onramp/bare \d", out), key
        assert row["onramp_2w_server_cpu_us_per_call"]["median"] > 0 and row["onramp_2w_cpu_vs_onramp"]["median"] > 0
        assert all(r["ok"] > 0 for r in res["raw"][key]["onramp_2w"])
    # the load generator's connections reached both workers of the 2-worker server
    assert re.search(r"closed loop onramp_2w \(2 workers\): .*workers' CPU split worker 0 \d+%, worker 1 \d+%", out)
    assert res["workers"] == {"onramp": 1, "onramp_2w": 2} and res["channels"] == 4


@pytest.mark.timeout(150)
@pytest.mark.parametrize("workers", [1, 2])
def test_ingest_reports_acked_events_per_second_on_one_and_four_streams(tmp_path: Path, workers: int) -> None:
    out, res = run_bench("ingest", tmp_path, "--workers", str(workers))
    assert res["workers"] == workers and f"onramp serve --workers {workers}" in out
    assert set(res["table"]) == {"1 stream", "4 streams"}
    assert res["prefill"] == 2_000 and res["prefill_per_s"] > 0
    for row in res["table"].values():
        for name in ("onramp", "onramp_ordered", "bare"):
            assert row[f"{name}_accepted_per_s"]["median"] > 0, name
        assert row["onramp_dropped"]["median"] == row["onramp_ordered_dropped"]["median"] == 0  # all consented
        assert row["ratio"]["median"] > 0 and row["ratio_ordered"]["median"] > 0
        # the server spent CPU on what it accepted, and the run kept some of the machine's cores busy
        assert row["onramp_server_cpu_us_per_call"]["median"] > 0
        assert 0 < row["onramp_cores_busy"]["median"] <= (os.cpu_count() or 1) + 0.5
        assert 0 < row["onramp_write_lock_busy"]["median"] <= 1.05  # a share of the run's time (scrape edges)
        # every measured run saw at least the prefill stored, and the log grew by what was accepted
        assert res["prefill"] <= row["stored_min"] <= row["stored_max"] < res["stored_after"]
    ordered = [r for key in res["raw"] for r in res["raw"][key]["onramp_ordered"]]
    assert all(r["duplicates"] == 0 for r in ordered)
    assert re.search(r"1 stream\s+\([\d,]+\.\.[\d,]+ events stored\)", out)
    assert re.search(r"onramp, uuid ids\s+accepted [\d,]+ ev/s.*server CPU/event [\d.]+ us.*cores busy.*"
                     r"write lock busy \d+%", out)
    assert re.search(r"onramp, ordered ids\s+accepted [\d,]+ ev/s", out)
    assert "prefill: 2,000 events" in out
    splits = [r["workers_cpu_split"] for key in res["raw"] for r in res["raw"][key]["onramp"]]
    if workers == 1:
        assert not any(splits) and "CPU split" not in out
    else:  # both workers' shares, busiest first, for every run
        assert all(len(split) == 2 and split[0] >= split[1] and abs(sum(split) - 1) < 1e-9 for split in splits)
        assert re.search(r"the workers' CPU split per run \(the kernel spreads connections\): \d+/\d+(, \d+/\d+)*", out)


@pytest.mark.timeout(150)
def test_learning_compares_all_policies_and_times_the_bandit(tmp_path: Path) -> None:
    out, res = run_bench("learning", tmp_path)
    assert set(res["table"]) == {"uniform", "best_fixed", "fixed_order", "bandit", "bayes", "oracle"}
    assert res["table"]["oracle"]["regret"]["median"] == 0
    for k, row in res["table"].items():
        assert 0 <= row["avg"]["median"] <= 1 and 0 <= row["last20"]["median"] <= 1, k
    assert res["decide_update_per_s"]["median"] > 0
    for label in ("uniform", "best fixed", "generic order", "our bandit", "context oracle", "type oracle",
                  "decide+update/s", "bandit / context oracle"):
        assert label in out


@pytest.mark.timeout(150)
def test_erasure_reports_relearn_and_unlearn_costs(tmp_path: Path) -> None:
    out, res = run_bench("erasure", tmp_path)
    assert res["users"] == 2000
    assert res["relearn_us_per_profile"]["median"] > 0 and res["unlearn_us_per_decision"]["median"] > 0
    assert "River relearn over 2,000 profiles" in out and "at 100,000 users" in out and "bandit unlearn" in out


@pytest.mark.timeout(150)
def test_memory_reports_bytes_per_user_and_restart_time(tmp_path: Path) -> None:
    out, res = run_bench("memory", tmp_path)
    (row,) = res["rows"]
    assert row["accepted"]["median"] == row["events"]
    assert row["rss_loaded"]["median"] > 0 and row["restart_ready_s"]["median"] > 0
    assert row["restart_first_answer_s"]["median"] >= row["restart_ready_s"]["median"]
    assert row["build_consent_s"]["median"] > 0 and row["build_ingest_s"]["median"] > 0
    (build,) = [r["build"] for r in row["raw"]]
    assert build["consents"] == row["users"] and build["accepted"] == row["events"]
    assert build["dropped"] == build["rejected"] == build["duplicates"] == 0
    assert "bytes/user" in out and "restart, 1 worker: ready" in out and "build through the API" in out
    default = row["default_restart"]  # onramp serve's default: one worker per core, and the learner process
    assert default["workers"]["median"] == len(os.sched_getaffinity(0)) and default["rss"]["median"] > 0
    assert default["ready_s"]["median"] <= default["first_answer_s"]["median"]
    assert default["ready_s"]["median"] <= default["all_workers_s"]["median"]
    assert "restart with onramp serve's default workers" in out


@pytest.mark.timeout(120)
def test_auth_reports_legitimate_latency_alone_and_under_a_flood_of_random_keys(tmp_path: Path) -> None:
    out, res = run_bench("auth", tmp_path)
    row = res["table"]["default"]
    for phase in ("alone", "flood"):
        assert 0 < row[f"{phase}_p50_ms"]["median"] <= row[f"{phase}_p99_ms"]["median"]
        assert all(not r["errors"] for r in res["raw"]["default"][phase])  # every legitimate call answered OK
    assert row["p99_ratio"]["median"] > 0 and row["flood_calls_per_s"]["median"] > 0
    (flood,) = [r["flood"] for r in res["raw"]["default"]["flood"]]
    assert flood["calls"] > 0 and set(flood["codes"]) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    assert re.search(r"default\s+ratio\s+p99 flood/alone [\d.]+x", out), out


def test_populate_gives_every_user_events_round_robin() -> None:
    from bench.populate import event_user
    users, events = 7, 30
    counts = [0] * users
    for k in range(events):
        counts[event_user(k, users)] += 1
    assert sorted(set(counts)) == [events // users, events // users + 1]


def test_memory_size_option_parses_users_and_events() -> None:
    from bench.__main__ import parse_size
    assert parse_size("1_000_000:1000000") == (1_000_000, 1_000_000)
    with pytest.raises(Exception, match="USERS:EVENTS"):
        parse_size("lots")


def test_store_scaling_reports_every_slice_of_every_variant(tmp_path: Path) -> None:
    from bench.store_scaling import VARIANTS, measure

    for variant in VARIANTS:
        rows = measure(variant, tmp_path, events=3000, group=500, every=1000, users=50)
        assert [r["stored"] for r in rows] == [1000, 2000, 3000], variant
        assert all(r["cpu_us_per_event"] > 0 and r["wall_us_per_event"] > 0 and r["db_mb"] > 0 for r in rows)
        # the longest transaction of a slice of 1,000 events: within the slice's total (µs per event x 1,000)
        assert all(0 < r["longest_txn_wall_ms"] <= r["wall_us_per_event"] for r in rows), rows
        assert all(0 <= r["longest_txn_cpu_ms"] <= r["cpu_us_per_event"] for r in rows), rows
    with pytest.raises(ValueError, match="variant: expected one of"):
        measure("random", tmp_path, events=10)
    proc = subprocess.run([sys.executable, "-m", "bench.store_scaling", "--events", "2000", "--group", "500",
                           "--every", "1000", "--variants", "uuid,v1-ordered"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"uuid\s+1,000 stored\s+CPU\s+[\d.]+ µs/event", proc.stdout), proc.stdout
    assert "v1-ordered" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "bench.store_scaling", "--variants", "bogus"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--variants: expected names of" in bad.stderr


def test_store_scaling_plot_writes_a_png_with_one_line_per_variant(tmp_path: Path) -> None:
    from bench.plot_store_scaling import main as plot_main
    from bench.plot_store_scaling import read_runs
    from bench.store_scaling import measure

    rows = [r for v in ("uuid", "v1-uuid") for r in measure(v, tmp_path, events=2000, group=500, every=1000, users=20)]
    (tmp_path / "s.json").write_text(json.dumps(rows))
    assert plot_main([str(tmp_path / "s.json"), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only = read_runs([f"{tmp_path / 's.json'}:v1-uuid"])["s"]
    assert [r["stored"] for r in only] == [1000, 2000] and {r["variant"] for r in only} == {"v1-uuid"}
    with pytest.raises(ValueError, match="no such file"):
        read_runs([str(tmp_path / "missing.json")])


@pytest.mark.timeout(180)
def test_lag_reports_the_time_until_outcomes_reach_every_worker(tmp_path: Path) -> None:
    out, res = run_bench("lag", tmp_path, "--lag-workers", "2", "--duration", "1", "--rate", "500")
    run = res["2"]["runs"][0]
    assert run["sent"] == 500 and run["not_logged"] == 0 and run["never_seen"] == 0, run
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert "learner lag:" in out and "p99" in out
