"""Experiment assignment is deterministic, stable across devices once identified and follows the shares;
the experiment report finds a harmed guardrail and stays quiet without one."""
from __future__ import annotations

import json

import pytest

from server.catalog import load_catalog
from server.cli import main
from server.experiments import Assigner, assign, bucket, is_anonymous
from server.offline.analytics import load_activity
from server.offline.common import open_readonly
from server.offline.experiment_report import experiment_report

CAT = load_catalog(None)
EXP = CAT.active_experiment


def test_assignment_is_deterministic_and_matches_the_catalog():
    a, b = Assigner(CAT), Assigner(load_catalog(None))
    for i in range(500):
        s = f"user-{i}"
        assert a.assign(EXP.name, s) == b.assign(EXP.name, s) == assign(EXP, s) == EXP.assign(s).name
        u = bucket(EXP, s)
        assert 0 <= u < 1
    assert a.assignment("user-1").experiment == EXP.name
    assert a.assignment("user-1").kind in ("tailored", "generic", "holdout")


def test_arm_is_stable_across_devices_after_identify():
    # after identify every device's requests carry the canonical subject (the user id): same arm
    a = Assigner(CAT)
    arm = a.assign(EXP.name, "alice")
    assert all(a.assign(EXP.name, "alice") == arm for _device in ("web", "ios", "email"))
    assert is_anonymous("anon:xyz") and not is_anonymous("alice")


def test_shares_within_tolerance():
    a = Assigner(CAT)
    n = 20_000
    counts: dict[str, int] = {}
    for i in range(n):
        arm = a.assign(EXP.name, f"u{i}")
        counts[arm] = counts.get(arm, 0) + 1
    for arm in EXP.arms:
        assert counts[arm.name] / n == pytest.approx(arm.share, abs=0.015)


def test_unknown_experiment_and_empty_subject_are_refused():
    with pytest.raises(ValueError, match="experiment: unknown experiment 'nope'"):
        Assigner(CAT).assign("nope", "u1")
    with pytest.raises(ValueError, match="subject"):
        assign(EXP, "")


def _report(path, alpha=0.05):
    conn = open_readonly(path)
    try:
        act = load_activity(conn)
    finally:
        conn.close()
    return experiment_report(act, CAT, alpha=alpha)


def test_report_flags_worse_retention_in_the_tailored_arm(harmed_population):
    path, truth = harmed_population
    rep = _report(path)
    assert rep.control == "generic" and set(rep.arms) == {"tailored", "generic", "holdout"}
    n_tailored = sum(1 for s, a in truth.arms.items() if a == "tailored" and s not in truth.erased_subjects)
    assert rep.users["tailored"] == n_tailored
    flagged = {(c.metric, c.arm) for c in rep.flagged}
    assert {("retention_d1", "tailored"), ("retention_d7", "tailored")} <= flagged
    d1 = rep.comparison("retention_d1", "tailored").comparison
    assert d1.diff == pytest.approx(-0.55 * 0.5, abs=0.06) and d1.high < 0
    assert rep.arms["tailored"]["retention_d1"].value == pytest.approx(0.55 * 0.5, abs=0.05)


def test_report_without_effects_flags_nothing(population):
    path, _ = population
    rep = _report(path, alpha=0.001)
    assert rep.flagged == []
    act = rep.arms["generic"]["activation"]
    assert act.value == pytest.approx(0.92 * 0.88 * 0.45, abs=0.05)


def test_cli_report_experiments_exit_codes(harmed_population, population, capsys, tmp_path):
    assert main(["report", "experiments", "--db", str(harmed_population[0]), "--json", "--out-dir", str(tmp_path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert "retention_d1 (tailored vs generic)" in data["flagged"]
    assert (tmp_path / "experiments.html").read_text().count("GUARDRAIL WORSE") >= 2
    assert main(["report", "experiments", "--db", str(population[0]), "--alpha", "0.001"]) == 0
    assert main(["report", "experiments", "--db", str(population[0]), "--control", "nobody"]) == 2
    assert "--control" in capsys.readouterr().err
