"""The experiment report against simulated arms that differ by known amounts (activation, retention and
personalized-step success of the tailored arm), over several independent populations: the estimated
difference of every user-level metric and its interval against the difference the population was built
with, and every arm's step completion against what really happened to each decision (completed inside its
reward window and credited to that show), in populations where core steps are sometimes shown twice and
failed personalized steps are sometimes completed after their window. Step completion has no closed-form
population value (which decisions exist depends on earlier outcomes), so its difference is checked against
the realised one."""
from __future__ import annotations

import math

import numpy as np
import pytest

from server.base.catalog import load_catalog
from server.offline.analytics import load_activity
from server.offline.common import open_readonly
from server.offline.experiment_report import GUARDRAILS, experiment_report
from server.offline.synth import ArmEffect, PopulationSpec, generate_population, synth_pseudonymizer

CAT = load_catalog(None)
SEEDS = range(5)
EFFECT = ArmEffect(activation=0.8, retention=0.8, completion=1.4)
WINDOW_H = CAT.segments.activation_window_hours


def _within(spec: PopulationSpec, hours: float) -> float:
    z = (math.log(hours) - math.log(spec.ttfv_median_hours)) / spec.ttfv_sigma
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _true_differences(spec: PopulationSpec) -> dict[str, float]:
    """Tailored minus generic, from the population's definition."""
    c = spec.core_completion
    activation = c[0] * c[1] * c[2] * _within(spec, WINDOW_H)
    out = {"activation": activation * (EFFECT.activation - 1.0), "survey_score": 0.0, "time_to_value_h": 0.0}
    for d in (1, 7, 30):
        out[f"retention_d{d}"] = spec.retention[d] * (EFFECT.retention - 1.0)
    return out


def _true_completion(truth, act) -> dict[str, float]:
    """Per arm: the share of its decisions (of users not erased) that really succeeded."""
    kept = set(act.pseudos)
    pseudo = synth_pseudonymizer()
    per_arm: dict[str, list[bool]] = {}
    for subject, arm, success in truth.decision_success.values():
        if pseudo(subject) in kept:
            per_arm.setdefault(arm, []).append(success)
    return {arm: float(np.mean(v)) for arm, v in per_arm.items()}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = []
    for seed in SEEDS:
        spec = PopulationSpec(n_users=1500, seed=100 + seed, arm_effects={"tailored": EFFECT},
                              core_reshow_share=0.3, late_completion_share=0.5)
        path = tmp_path_factory.mktemp("truth") / f"pop{seed}.db"
        truth = generate_population(path, spec)
        conn = open_readonly(path)
        try:
            act = load_activity(conn)
        finally:
            conn.close()
        out.append((spec, truth, act, experiment_report(act, CAT)))
    return out


def test_each_metric_difference_and_interval_against_the_known_effect(reports):
    metrics = [m for m in GUARDRAILS if m != "step_completion"]
    covered = {m: 0 for m in metrics}
    errors: dict[str, list[float]] = {m: [] for m in metrics}
    for spec, _truth, _act, rep in reports:
        true = _true_differences(spec)
        for metric in metrics:
            cmp = rep.comparison(metric, "tailored").comparison
            covered[metric] += cmp.low <= true[metric] <= cmp.high
            errors[metric].append(cmp.diff - true[metric])
    for metric in metrics:
        assert covered[metric] >= len(SEEDS) - 1, (metric, covered[metric], errors[metric])
        e = np.array(errors[metric])
        assert abs(e.mean()) <= 3 * e.std(ddof=1) / math.sqrt(e.size) + 1e-9, (metric, e)


def test_step_completion_is_what_really_happened_to_each_decision(reports):
    for _spec, truth, act, rep in reports:
        completion = _true_completion(truth, act)
        for arm, m in rep.arms.items():
            assert m["step_completion"].value == pytest.approx(completion[arm], abs=1e-12), arm
        cmp = rep.comparison("step_completion", "tailored").comparison
        assert cmp.diff == pytest.approx(completion["tailored"] - completion["generic"], abs=1e-12)
        assert cmp.low < cmp.diff < cmp.high and cmp.high - cmp.low < 0.1


def test_the_real_effects_are_flagged_and_no_metric_without_one(reports):
    for _spec, _truth, _act, rep in reports:
        flagged = {c.metric for c in rep.flagged if c.arm == "tailored"}
        assert "retention_d1" in flagged
        assert not flagged & {"survey_score", "time_to_value_h"}
