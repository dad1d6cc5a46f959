"""``onramp report experiments``: compare the arms of an A/B experiment (e.g. tailored vs generic flows) on
activation, step completion, D1/D7/D30 retention, survey score and time to first value, each against the
control arm with an interval and a significance test, and flag guardrail metrics that got worse.

Users belong to the arm logged in their first decision of the experiment (what they were actually served;
:mod:`server.base.experiments` assigns it). The control is the experiment's arm of kind ``generic`` in the catalog
(or ``--control``); the report refuses, naming the arms, rather than guess another one.

How each difference is estimated, and why:

* user-level metrics (activation, retention, survey score, time to first value) are adjusted by CUPED on
  the user's prior activity (events before their first decision of the experiment, which the experiment
  cannot have changed): chance imbalances of busy or slow users between arms are removed, and the
  variance with them; Welch (normal) interval and p-value of the adjusted difference;
* step completion (a decision's step completed inside its reward window, one completion crediting one
  decision: :func:`server.offline.analytics.step_completion`) is a ratio over decisions with users as the
  independent units (delta method), since the decisions of one user are not independent.

Every p-value is then adjusted by Holm-Bonferroni over all the comparisons of the report (metrics x
treatment arms): a guardrail is flagged when its adjusted p-value is below alpha and the treatment is worse
(lower activation, completion, retention or survey score, longer time to first value), so the chance of
any false flag in a report is at most alpha. A sample-ratio mismatch (users per arm far from the catalog's
shares, chi-square p < 0.001) is flagged too: it means assignment or logging is broken and the comparisons
are not to be trusted.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.base.catalog import Catalog, CatalogError
from server.base.config import ConfigError
from server.offline.analytics import (Activity, FirstValue, first_value_ms, load_activity, prior_activity, retained,
                                      step_completion, user_arms)
from server.offline.console import ReportTable, new_console
from server.offline.common import HOUR_MS, OfflineError, demo_hint, json_clean, load_setup, open_readonly
from server.offline.stats import (Comparison, SampleRatio, cuped_diff, holm, ratio_diff, ratio_mean, sample_ratio_test,
                                  wilson_interval, z_for)

GUARDRAILS = ("activation", "step_completion", "retention_d1", "retention_d7", "retention_d30", "survey_score",
              "time_to_value_h")
LOWER_IS_BETTER = ("time_to_value_h",)
CORRECTION = "Holm-Bonferroni over every comparison of the report"
CUPED_NOTE = "CUPED on prior activity (log1p of events before the user's first decision of the experiment)"
RATIO_NOTE = "ratio over decisions, users as independent units (delta method)"


@dataclass
class ArmMetric:
    """One metric of one arm: value, interval and sample size."""

    value: float
    low: float
    high: float
    n: int


@dataclass
class MetricComparison:
    """One metric of one treatment arm against the control arm: the comparison (its ``p_value`` raw),
    the Holm-adjusted p-value the verdict uses, how the difference was estimated and, for CUPED, the share
    of the metric's variance the covariate removed."""

    metric: str
    arm: str
    control: str
    comparison: Comparison
    p_adjusted: float
    method: str
    variance_reduction: float
    significant: bool
    guardrail_worse: bool


@dataclass
class ExperimentReport:
    """Per-arm metrics, comparisons against the control and flagged guardrails."""

    experiment: str
    control: str
    control_reason: str
    arms: dict[str, dict[str, ArmMetric]]
    users: dict[str, int]
    comparisons: list[MetricComparison]
    alpha: float
    first_value: str
    sample_ratio: SampleRatio | None = None  # None when the catalog has no shares for this experiment
    correction: str = CORRECTION

    @property
    def flagged(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.guardrail_worse]

    @property
    def sample_ratio_mismatch(self) -> bool:
        return self.sample_ratio is not None and self.sample_ratio.mismatch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flagged"] = [f"{c.metric} ({c.arm} vs {c.control})" for c in self.flagged]
        d["sample_ratio_mismatch"] = self.sample_ratio_mismatch
        return json_clean(d)

    def comparison(self, metric: str, arm: str) -> MetricComparison:
        return next(c for c in self.comparisons if c.metric == metric and c.arm == arm)


def _prop(x: int, n: int, alpha: float) -> ArmMetric:
    lo, hi = wilson_interval(x, n, alpha)
    return ArmMetric(x / n if n else math.nan, lo, hi, n)


def _mean(v: np.ndarray, alpha: float) -> ArmMetric:
    from server.offline.stats import bootstrap_mean_interval

    lo, hi = bootstrap_mean_interval(v, alpha)
    return ArmMetric(float(v.mean()) if v.size else math.nan, lo, hi, int(v.size))


def choose_control(experiment: str, with_users: list[str], kinds: dict[str, str], control: str | None) -> tuple[str, str]:
    """The control arm and why it is the control: ``--control``, else the experiment's arm of kind
    ``generic`` in the catalog. OfflineError naming the arms when that arm is missing or has no users (on a
    small log the first arm with users is no control: the report would compare the wrong arms)."""
    listed = ", ".join(with_users) or "none"
    if control is not None:
        if control not in with_users:
            raise OfflineError(f"--control: arm {control!r} has no users in {experiment} (arms with users: {listed})")
        return control, "chosen with --control"
    if not kinds:
        raise OfflineError(f"experiment {experiment!r} is not in the catalog, so no arm is known to be its control; "
                           f"pass --control ARM (arms with users: {listed})")
    generic = [a for a, k in kinds.items() if k == "generic"]
    if not generic:
        raise OfflineError(f"experiment {experiment!r} has no arm of kind generic to be its control; pass --control ARM "
                           f"(arms with users: {listed})")
    if generic[0] not in with_users:
        raise OfflineError(f"the control arm {generic[0]!r} (the arm of kind generic of {experiment}) has no users in "
                           f"this log (arms with users: {listed}); pass --control ARM to compare with another arm")
    return generic[0], "the experiment's arm of kind generic in the catalog"


def no_experiment(act: Activity) -> str:
    """Why no experiment can be reported on: no decisions at all, or none made in an experiment."""
    hint = demo_hint("onramp report experiments")
    n = len(act.dec_id)
    if n == 0:
        events = "no events" if act.n_users == 0 else f"events of {act.n_users} user{'s' if act.n_users != 1 else ''}"
        return (f"no decisions to compare: the database holds {events} and no decisions yet (GetNextStep logs one "
                f"per call); {hint}")
    return (f"none of the {n} decisions in the database was made in an experiment: the server's catalog had no "
            f"enabled [[experiments]] entry when it made them (docs/catalog.md); {hint}")


def experiment_report(act: Activity, catalog: Catalog, experiment: str | None = None, control: str | None = None,
                      fv: FirstValue | None = None, alpha: float = 0.05, active_event: str = "session_start",
                      activation_window_h: float | None = None) -> ExperimentReport:
    """Compare the arms of ``experiment`` (default: the one most decisions name) against ``control``
    (default: the catalog's arm of kind generic; see :func:`choose_control`)."""
    name, arms = user_arms(act, experiment)
    if not name:
        raise OfflineError(no_experiment(act))
    names = sorted(set(arms[arms != ""].tolist()))
    if len(names) < 2:
        n = int((arms != "").sum())
        users = f"{n} user{'s' if n != 1 else ''}"
        raise OfflineError(f"only arm {', '.join(names) or 'none'} of {name} has users ({users} in the experiment): "
                           f"comparing arms needs users in two at least; {demo_hint('onramp report experiments')}")
    kinds: dict[str, str] = {}
    shares: dict[str, float] = {}
    for e in catalog.experiments:
        if e.name == name:
            kinds = {a.name: a.kind for a in e.arms}
            shares = {a.name: a.share for a in e.arms}
            names = [a.name for a in e.arms if a.name in names] + [a for a in names if a not in kinds]
    control, why = choose_control(name, names, kinds, control)
    fv = fv or FirstValue.from_catalog(catalog)
    window = (activation_window_h if activation_window_h is not None else catalog.segments.activation_window_hours)
    first = first_value_ms(act, fv)
    reached = first >= 0
    ttv_h = np.where(reached, (first - act.signup_ms) / HOUR_MS, np.nan)
    activated = reached & (ttv_h <= window)
    obs_act = act.signup_ms + int(window * HOUR_MS) <= act.end_ms
    ret = {d: retained(act, d, active_event) for d in (1, 7, 30)}
    dec_idx, completed = step_completion(act, catalog)
    dec_user = act.dec_user[dec_idx]
    shown = np.bincount(dec_user, minlength=act.n_users).astype(np.float64)  # per user: decisions that showed a step
    done = np.bincount(dec_user, weights=completed.astype(np.float64), minlength=act.n_users)
    prior = prior_activity(act, name)
    survey_m = (act.name == "survey_response") & np.isfinite(act.score)
    s_user, s_score = act.user[survey_m], act.score[survey_m]
    z = z_for(alpha)

    per_arm: dict[str, dict[str, ArmMetric]] = {}
    raw: dict[str, dict[str, Any]] = {}  # metric -> (values, covariate) per user, or (done, shown) sums
    users: dict[str, int] = {}
    for a in names:
        m = arms == a
        users[a] = int(m.sum())
        samples = {"activation": m & obs_act}
        for d, (observable, _kept) in ret.items():
            samples[f"retention_d{d}"] = m & observable
        values = {"activation": activated.astype(np.float64)}
        for d, (_observable, kept) in ret.items():
            values[f"retention_d{d}"] = kept.astype(np.float64)
        raw[a] = {k: (values[k][sel], prior[sel]) for k, sel in samples.items()}
        per_arm[a] = {k: _prop(int(values[k][sel].sum()), int(sel.sum()), alpha) for k, sel in samples.items()}
        rate, var = ratio_mean(done[m], shown[m])
        half = z * math.sqrt(var) if math.isfinite(var) else math.nan
        per_arm[a]["step_completion"] = ArmMetric(rate, max(0.0, rate - half), min(1.0, rate + half), int(shown[m].sum()))
        raw[a]["step_completion"] = (done[m], shown[m])
        in_arm = m[s_user]
        raw[a]["survey_score"] = (s_score[in_arm], prior[s_user[in_arm]])
        raw[a]["time_to_value_h"] = (ttv_h[m & reached], prior[m & reached])
        per_arm[a]["survey_score"] = _mean(raw[a]["survey_score"][0], alpha)
        per_arm[a]["time_to_value_h"] = _mean(raw[a]["time_to_value_h"][0], alpha)
        per_arm[a] = {k: per_arm[a][k] for k in GUARDRAILS}
    found: list[tuple[str, str, Comparison, str, float]] = []
    for a in names:
        if a == control:
            continue
        for metric in GUARDRAILS:
            (yt, xt), (yc, xc) = raw[a][metric], raw[control][metric]
            if metric == "step_completion":
                found.append((metric, a, ratio_diff(yt, xt, yc, xc, alpha), RATIO_NOTE, 0.0))
            else:
                cu = cuped_diff(yt, xt, yc, xc, alpha)
                found.append((metric, a, cu.comparison, CUPED_NOTE, cu.variance_reduction))
    srm = sample_ratio_test(users, shares) if shares else None
    return ExperimentReport(name, control, why, per_arm, users, verdicts(found, control, alpha), alpha, str(fv), srm)


def verdicts(found: list[tuple[str, str, Comparison, str, float]], control: str, alpha: float) -> list[MetricComparison]:
    """The report's comparisons (metric, arm, comparison, method, variance reduction) with their verdicts:
    p-values adjusted by Holm-Bonferroni over all of them; significant when the adjusted p-value is below
    ``alpha``, a guardrail worse when significant in the bad direction."""
    adjusted = holm([cmp.p_value for _m, _a, cmp, _n, _v in found])
    out: list[MetricComparison] = []
    for (metric, arm, cmp, note, reduction), p_adj in zip(found, adjusted):
        sig = math.isfinite(p_adj) and p_adj < alpha
        worse = sig and ((cmp.diff > 0) if metric in LOWER_IS_BETTER else (cmp.diff < 0))
        out.append(MetricComparison(metric, arm, control, cmp, p_adj, note, reduction, sig, worse))
    return out


def _srm_message(rep: ExperimentReport) -> str:
    srm = rep.sample_ratio
    assert srm is not None
    detail = ", ".join(f"{a}: {o} (expected {e:.0f})" for a, o, e in zip(srm.arms, srm.observed, srm.expected))
    return (f"sample ratio mismatch: users per arm do not match the catalog's shares (chi-square p={srm.p_value:.3g}"
            f" < {srm.threshold:g}; {detail}); check assignment and decision logging before trusting the comparisons")


def _fmt(metric: str, v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.2f}" if metric in ("survey_score", "time_to_value_h") else f"{v:.1%}"


def _p(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "n/a"


def _verdict(x: MetricComparison) -> str:
    return "GUARDRAIL WORSE" if x.guardrail_worse else ("significant" if x.significant else "")


def _notes(rep: ExperimentReport) -> list[str]:
    """What the reader needs to read the comparison table: the control, the correction, the adjustments."""
    cuped = [x.variance_reduction for x in rep.comparisons if x.method == CUPED_NOTE]
    notes = [f"control arm {rep.control}: {rep.control_reason}",
             f"p (Holm): p-values adjusted by {rep.correction} ({len(rep.comparisons)} comparisons); a verdict needs "
             f"p (Holm) < {rep.alpha:g}; intervals are not adjusted"]
    if cuped:
        notes.append(f"user-level metrics: {CUPED_NOTE}; variance removed {min(cuped):.1%} to {max(cuped):.1%}")
    notes.append(f"step_completion: a step completed within its decision's reward window, one completion per "
                 f"decision; {RATIO_NOTE}")
    return notes


def render_experiments(rep: ExperimentReport, console: Any) -> None:
    """Terminal tables of an experiment report."""
    console.print(f"[bold]Experiment {rep.experiment}[/bold]: control arm {rep.control}; users per arm "
                  + ", ".join(f"{a}: {n}" for a, n in rep.users.items()) + f"; first value = {rep.first_value}")
    t = ReportTable(title=f"Metrics per arm ({int(round((1 - rep.alpha) * 100))}% intervals)")
    t.add_column("metric")
    for a in rep.arms:
        t.add_column(a, justify="right")
    for metric in GUARDRAILS:
        t.add_row(metric, *(f"{_fmt(metric, m[metric].value)} [{_fmt(metric, m[metric].low)}, "
                            f"{_fmt(metric, m[metric].high)}] n={m[metric].n}" for m in rep.arms.values()))
    console.print(t)
    c = ReportTable(title="Treatment - control")
    for col in ("metric", "arm", "difference", "interval", "p", "p (Holm)", ""):
        c.add_column(col, justify="left" if col in ("metric", "arm", "") else "right")
    for x in rep.comparisons:
        pct = x.metric not in ("survey_score", "time_to_value_h")
        f = (lambda v: "n/a" if not math.isfinite(v) else (f"{v:+.1%}" if pct else f"{v:+.2f}"))
        verdict = _verdict(x)
        c.add_row(x.metric, x.arm, f(x.comparison.diff), f"[{f(x.comparison.low)}, {f(x.comparison.high)}]",
                  _p(x.comparison.p_value), _p(x.p_adjusted), f"[red]{verdict}[/red]" if x.guardrail_worse else verdict)
    console.print(c)
    for note in _notes(rep):
        console.print(f"  {note}", highlight=False)
    for x in rep.flagged:
        console.print(f"[red]guardrail:[/red] {x.metric} is significantly worse in {x.arm} than in {x.control} "
                      f"(p={_p(x.comparison.p_value)}, Holm-adjusted {_p(x.p_adjusted)})")
    if rep.sample_ratio_mismatch:
        console.print(f"[red]{_srm_message(rep)}[/red]", highlight=False)


def experiments_html(rep: ExperimentReport) -> str:
    """A self-contained HTML page of the experiment report."""
    import html as h

    from server.offline.reports import _CSS, _table

    rows = [[m] + [f"{_fmt(m, arm[m].value)} [{_fmt(m, arm[m].low)}, {_fmt(m, arm[m].high)}] n={arm[m].n}"
                   for arm in rep.arms.values()] for m in GUARDRAILS]
    comp = [[x.metric, x.arm, f"{x.comparison.diff:+.4f}", f"[{x.comparison.low:+.4f}, {x.comparison.high:+.4f}]",
             _p(x.comparison.p_value), _p(x.p_adjusted), _verdict(x)] for x in rep.comparisons]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Experiment report</title>"
            f"<style>{_CSS}</style></head><body><h1>Experiment {h.escape(rep.experiment)}</h1>"
            f"<p>First value: <code>{h.escape(rep.first_value)}</code>.</p>"
            + (f"<p class='flag'><strong>{h.escape(_srm_message(rep))}</strong></p>" if rep.sample_ratio_mismatch else "")
            + _table(["metric"] + list(rep.arms), rows)
            + "<h2>Treatment - control</h2>"
            + _table(["metric", "arm", "difference", "interval", "p", "p (Holm)", ""], comp,
                     [x.guardrail_worse for x in rep.comparisons])
            + "<ul>" + "".join(f"<li>{h.escape(n)}</li>" for n in _notes(rep)) + "</ul>"
            + "</body></html>")


def add_experiments_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register ``onramp report experiments``."""
    from server.offline.reports import add_common_report_args

    p = sub.add_parser("experiments", help="compare experiment arms (activation, completion, retention, survey)",
                       description="Compare the arms of an A/B experiment against the control arm with intervals and "
                                   "significance tests; flag guardrail metrics that got significantly worse.")
    add_common_report_args(p)
    p.add_argument("--experiment", help="experiment name (default: the one most decisions name)")
    p.add_argument("--control", help="control arm (default: the experiment's arm of kind generic in the catalog)")
    p.add_argument("--activation-window-hours", type=float, default=None,
                   help="activation = first value within this many hours of signup (default: the catalog's)")
    p.set_defaults(func=cmd_experiments)
    return p


def cmd_experiments(args: argparse.Namespace) -> int:
    """``onramp report experiments``: 0 when no guardrail got worse and the arms' sizes match their shares, 1
    when a guardrail got worse or the sample ratio is off, 2 on bad input."""
    from server.offline.reports import parse_as_of

    try:
        if not 0 < args.alpha < 1:
            raise OfflineError(f"--alpha: must be in (0, 1) (got {args.alpha})")
        setup = load_setup(args.config)
        fv = FirstValue.parse(args.first_value) if args.first_value else None
        conn = open_readonly(args.db)
        try:
            act = load_activity(conn, setup.privacy, parse_as_of(args.as_of))
        finally:
            conn.close()
        rep = experiment_report(act, setup.catalog, args.experiment, args.control, fv, args.alpha, args.active_event,
                                args.activation_window_hours)
    except (OfflineError, ConfigError, CatalogError, OSError, ValueError) as exc:
        new_console(stderr=True).print(f"onramp report experiments: {exc}", markup=False, highlight=False)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(rep.to_dict(), indent=2) + "\n")
    else:
        render_experiments(rep, new_console())
    if args.out_dir:
        d = Path(args.out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "experiments.html").write_text(experiments_html(rep), encoding="utf-8")
    return 1 if rep.flagged or rep.sample_ratio_mismatch else 0
