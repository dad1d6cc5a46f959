"""The serving benchmark's scenarios (:mod:`bench.common`): the bench catalog lifts only caps, gaps, cooldowns
and the non-tailored experiment arms; warm users of the personalized scenario are past the personalisation
threshold; and under load the personalized scenario's decisions are the bandit's (the capped one's are
``capped``), with both drivers at tiny sizes. No timing is asserted."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bench import h2load
from bench.common import (DEMO_CATALOG, UNCAPPED, bandit_propensities, bench_catalog, decisions_by_reason, now_ms,
                          run_loadgen, start_scenario_onramp, to_toml, warm_events, warm_users, write_scenario_config)
from server.base.catalog import load_catalog, parse_catalog

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000


def demo() -> dict:
    return tomllib.loads(DEMO_CATALOG.read_text(encoding="utf-8"))


def test_toml_of_the_demo_and_the_bench_catalog_reads_back_equal() -> None:
    for doc in (demo(), bench_catalog()):
        assert tomllib.loads(to_toml(doc)) == doc


def test_the_bench_catalog_lifts_caps_gaps_cooldowns_and_keeps_the_rest() -> None:
    d, b = demo(), bench_catalog()
    parse_catalog(b)  # valid for the server
    g = b["guardrails"]
    assert g["min_gap_minutes"] == 0 and g["max_per_day_total"] == UNCAPPED
    assert set(g["max_per_day_per_channel"].values()) == {UNCAPPED}
    for key in ("min_sessions_for_personalization", "min_distinct_days_for_personalization", "max_exploration",
                "never_repeat_completed"):
        assert g[key] == d["guardrails"][key], key
    assert all(s["cooldown_hours"] == 0 and s["max_per_day"] == UNCAPPED for s in b["steps"])
    strip = ("cooldown_hours", "max_per_day")
    assert ([{k: v for k, v in s.items() if k not in strip} for s in b["steps"]]
            == [{k: v for k, v in s.items() if k not in strip} for s in d["steps"]])
    for section in ("core", "rules", "rewards", "segments", "bandit"):
        assert b[section] == d[section], section
    (exp,) = b["experiments"]
    assert [(a["kind"], a["share"]) for a in exp["arms"]] == [("tailored", 1.0)]
    assert (exp["name"], exp["salt"]) == (d["experiments"][0]["name"], d["experiments"][0]["salt"])


def test_scenario_configs(tmp_path: Path) -> None:
    assert write_scenario_config("capped", tmp_path) is None  # built-in defaults: the demo catalog
    path = write_scenario_config("personalized", tmp_path)
    assert path is not None and load_catalog(path).guardrails.min_gap_minutes == 0
    with pytest.raises(ValueError, match="scenario must be one of personalized, capped"):
        write_scenario_config("fast", tmp_path)


def test_warm_users_are_past_the_personalisation_threshold_and_fire_no_rule() -> None:
    now = now_ms()
    thresholds = demo()["guardrails"]
    for i in range(8):
        evs = warm_events(f"u{i}", i, now)
        starts = sorted(e.timestamp_ms for e in evs if e.name == "session_start")
        days = {datetime.fromtimestamp(t / 1000, timezone.utc).date() for t in starts}
        assert len(starts) >= thresholds["min_sessions_for_personalization"]
        assert len(days) >= thresholds["min_distinct_days_for_personalization"]
        times = sorted(e.timestamp_ms for e in evs)
        assert all(t < now for t in times)
        assert max(b - a for a, b in zip(times, times[1:])) < DAY_MS  # no "returned after 24 h inactive"
        uses: dict[str, int] = {}
        for e in evs:
            if e.name == "feature_used":
                uses[e.feature] = uses.get(e.feature, 0) + 1
        assert uses and max(uses.values()) < 5  # under the feature_explored rule's threshold
        assert {e.step_id for e in evs if e.name == "step_completed"} == set(demo()["core"]["order"])
        assert len({e.event_id for e in evs}) == len(evs)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("scenario", "reason"), [("personalized", "bandit"), ("capped", "capped")])
def test_decisions_under_load_are_the_scenarios_path(tmp_path: Path, scenario: str, reason: str) -> None:
    srv = start_scenario_onramp(scenario, tmp_path / "s.db")
    try:
        warm_users(srv.address, 30, scenario=scenario)
        since = now_ms()
        res = run_loadgen(["serving", "--target", srv.address, "--rate", "0", "--duration", "0.5",
                           "--concurrency", "8", "--users", "30"])
        reasons = decisions_by_reason(tmp_path / "s.db", since)
        bandit = bandit_propensities(tmp_path / "s.db", since)
    finally:
        srv.stop()
    assert res["ok"] > 30 and res["errors"] == 0  # every user asked more than once
    assert list(reasons) == [reason] and reasons[reason] >= res["ok"], reasons
    if reason == "bandit":
        assert bandit["n"] == reasons["bandit"] and bandit["below_1"] == 1.0 and 0 < bandit["min"] < 1


@pytest.mark.timeout(150)
def test_bench_serving_prints_the_reasons_of_the_capped_scenario(tmp_path: Path) -> None:
    out_json = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "serving", "--quick", "--duration", "0.2", "--scenario",
                           "capped", "--json", str(out_json)], cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out_json.read_text())["serving"]
    assert res["scenario"] == "capped" and list(res["reasons_under_load"]) == ["capped"]
    assert "scenario capped" in proc.stdout
    assert re.search(r"decisions logged under load by reason: capped [\d,]+ \(100\.0%\)", proc.stdout)


@pytest.mark.skipif(h2load.h2load_path() is None and not os.environ.get("CI"),  # CI installs it
                    reason="h2load not installed (apt-get install -y nghttp2-client)")
@pytest.mark.timeout(150)
def test_h2load_driver_personalized_scenario_measures_bandit_decisions(tmp_path: Path) -> None:
    out_json = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "serving", "--driver", "h2load", "--quick", "--duration",
                           "0.2", "--scenario", "personalized", "--json", str(out_json)], cwd=ROOT,
                          capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out_json.read_text())["serving"]
    reasons = res["checks"]["onramp_reasons_under_load"]
    assert res["scenario"] == "personalized" and list(reasons) == ["bandit"], reasons
    assert res["checks"]["onramp_sample_reason"] == "bandit"
    assert re.search(r"by reason: bandit [\d,]+ \(100\.0%\)", proc.stdout)
