"""Reports on a generated population give its known drop-offs, time to first value, retention and survey
scores; the abnormal step is flagged; the HTML report is self-contained; the CLI writes it."""
from __future__ import annotations

import base64
import json
import re

import pytest

from server.base.catalog import load_catalog
from server.offline.analytics import FirstValue, load_activity
from server.offline.common import open_readonly
from server.offline.reports import funnel_charts, funnel_html, funnel_report
from server.ops.cli import main

CAT = load_catalog(None)


@pytest.fixture(scope="module")
def report(population):
    path, _ = population
    conn = open_readonly(path)
    try:
        act = load_activity(conn)
    finally:
        conn.close()
    return funnel_report(act, CAT)


def test_users_exclude_erased(report, population):
    _, truth = population
    assert report.users == len(truth.subjects) - len(truth.erased_subjects)
    assert report.erased_left_out == len(truth.erased_subjects) > 0


def test_drop_offs_match_the_known_completion_rates_and_the_bad_step_is_flagged(report, population):
    _, truth = population
    for step, p in zip(CAT.core_order, truth.spec.core_completion):
        row = report.step(step)
        assert row.completion_rate == pytest.approx(p, abs=0.035), step
        assert row.low <= p <= row.high or abs(row.completion_rate - p) < 0.035
    assert report.step("first_project").flagged
    assert not report.step("welcome").flagged and not report.step("profile_setup").flagged
    # every user starts the funnel; each next step is shown only to those who completed the previous one
    assert report.step("welcome").shown == report.users
    assert report.step("profile_setup").shown == report.step("welcome").completed


def test_time_to_first_value_retention_and_survey(report, population):
    _, truth = population
    spec = truth.spec
    ttv = report.time_to_value
    assert ttv.event == "step_completed:first_project"
    assert ttv.median_h == pytest.approx(spec.ttfv_median_hours, rel=0.15)
    assert ttv.reached == report.step("first_project").completed
    for day, p in spec.retention.items():
        assert report.overall_retention[f"D{day}"] == pytest.approx(p, abs=0.04)
    assert len(report.cohorts) >= spec.weeks and sum(c.users for c in report.cohorts) == report.users
    assert report.survey.mean == pytest.approx(spec.survey_mean, abs=0.12)
    assert report.survey.low <= spec.survey_mean <= report.survey.high
    assert set(report.survey.distribution) <= {"1", "2", "3", "4", "5"}


def test_first_value_is_configurable(population):
    path, _ = population
    conn = open_readonly(path)
    try:
        act = load_activity(conn)
    finally:
        conn.close()
    rep = funnel_report(act, CAT, FirstValue.parse("step_completed:profile_setup"))
    assert rep.time_to_value.reached == rep.step("profile_setup").completed
    assert rep.time_to_value.median_h < 1.0  # profile setup is done minutes after signup


def test_html_report_is_self_contained(report):
    page = funnel_html(report, funnel_charts(report))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "first_project" in page and "ABNORMAL" in page


def test_cli_report_funnel_writes_charts_and_html(population, tmp_path, capsys):
    path, _ = population
    assert main(["report", "funnel", "--db", str(path), "--out-dir", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["users"] > 0 and {s["step_id"] for s in data["steps"] if s["flagged"]} >= {"first_project"}
    assert {p.name for p in tmp_path.iterdir()} == {"funnel.png", "time_to_value.png", "retention.png",
                                                    "survey.png", "report.html"}
    assert main(["report", "funnel", "--db", str(path), "--as-of", "yesterday"]) == 2
    assert "--as-of" in capsys.readouterr().err
