"""Experiment assignment is deterministic, stable across devices once identified and follows the shares;
the experiment report finds a harmed guardrail and stays quiet without one."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from rich.console import Console

from server.base.catalog import load_catalog
from server.base.experiments import Assigner, assign, bucket, is_anonymous
from server.offline.analytics import load_activity, user_arms
from server.offline.common import OfflineError, open_readonly
from server.offline.experiment_report import experiment_report, experiments_html, render_experiments
from server.offline.stats import sample_ratio_test
from server.ops.cli import main

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


def test_sample_ratio_test_by_hand():
    # 550/450 against 50/50: chi2 = (50^2 + 50^2) / 500 = 10, one degree of freedom -> p = 0.00157
    srm = sample_ratio_test({"a": 550, "b": 450}, {"a": 0.5, "b": 0.5})
    assert srm.chi2 == pytest.approx(10.0)
    assert srm.p_value == pytest.approx(0.0015654, rel=1e-4)
    assert not srm.mismatch  # above the 0.001 threshold
    srm = sample_ratio_test({"a": 600, "b": 400, "c": 0}, {"a": 0.5, "b": 0.5, "c": 0.0})
    assert srm.arms == ("a", "b") and srm.chi2 == pytest.approx(40.0) and srm.mismatch
    # a missing arm counts as zero users
    assert sample_ratio_test({"a": 100}, {"a": 0.5, "b": 0.5}).mismatch
    assert math.isnan(sample_ratio_test({}, {"a": 0.5, "b": 0.5}).p_value)


def test_report_passes_the_sample_ratio_check_on_hash_assignment(population):
    rep = _report(population[0])
    assert rep.sample_ratio is not None and not rep.sample_ratio_mismatch
    assert sum(rep.sample_ratio.observed) == sum(rep.users.values())


def test_report_flags_a_sample_ratio_mismatch_when_an_arm_loses_users(population, tmp_path):
    """Drop the decisions of two thirds of the tailored arm's users, as a broken logging path would."""
    conn = open_readonly(population[0])
    try:
        act = load_activity(conn)
    finally:
        conn.close()
    _, arms = user_arms(act)
    tailored = np.flatnonzero(arms == "tailored")
    lost = set(tailored[: 2 * tailored.size // 3].tolist())
    keep = np.array([u not in lost for u in act.dec_user.tolist()])
    dec = {f.name: getattr(act, f.name)[keep] for f in dataclasses.fields(act) if f.name.startswith("dec_")}
    broken = dataclasses.replace(act, **dec)
    rep = experiment_report(broken, CAT)
    assert rep.sample_ratio_mismatch and rep.sample_ratio.p_value < 1e-6
    assert rep.to_dict()["sample_ratio_mismatch"] is True
    console = Console(record=True, width=200)
    render_experiments(rep, console)
    assert "sample ratio mismatch" in console.export_text()
    assert "sample ratio mismatch" in experiments_html(rep)


def test_an_unknown_experiment_is_named_with_the_ones_in_the_log(population, capsys):
    assert main(["report", "experiments", "--db", str(population[0]), "--experiment", "nope"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # unwrapped
    assert "--experiment: no decision in the log names experiment 'nope'" in err
    assert "experiments in the log: tailored_vs_generic (" in err


def test_the_control_arm_is_never_guessed(population):
    """On a small log where the generic arm has no users, the report refuses and names the arms instead of
    comparing against whichever arm comes first; it says why the control is the control."""
    conn = open_readonly(population[0])
    try:
        act = load_activity(conn)
    finally:
        conn.close()
    rep = experiment_report(act, CAT)
    assert rep.control == "generic" and rep.control_reason == "the experiment's arm of kind generic in the catalog"
    console = Console(record=True, width=200)
    render_experiments(rep, console)
    text = console.export_text()
    assert "control arm generic: the experiment's arm of kind generic in the catalog" in text
    assert "Holm-Bonferroni" in text and "CUPED" in text
    _, arms = user_arms(act)
    keep = np.array([u >= 0 and arms[u] != "generic" for u in act.dec_user.tolist()])
    dec = {f.name: getattr(act, f.name)[keep] for f in dataclasses.fields(act) if f.name.startswith("dec_")}
    small = dataclasses.replace(act, **dec)
    with pytest.raises(OfflineError, match=r"the control arm 'generic' \(the arm of kind generic of "
                                           r"tailored_vs_generic\) has no users in this log \(arms with users: "
                                           r"tailored, holdout\); pass --control ARM"):
        experiment_report(small, CAT)
    chosen = experiment_report(small, CAT, control="holdout")
    assert chosen.control == "holdout" and chosen.control_reason == "chosen with --control"
    assert {c.arm for c in chosen.comparisons} == {"tailored"}
