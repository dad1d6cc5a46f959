"""``onramp replay``: estimate, from the decision log alone, what candidate policies would have earned,
before any of them is deployed.

Candidates: the logging policy itself (on-policy mean), the generic flow (the first eligible step in the
catalog's generic order), rules only (rules fire as logged, the generic order elsewhere) and bandits with
other settings (``--candidate-config``), trained online over the logged stream in time order by standard
replay learning. Every candidate is a probability matrix ``(n_rounds, n_actions)`` handed to the
estimators of :mod:`bandits.estimators` (IPS, SNIPS, DM, DR, Replay), each with a bootstrap interval and
the effective sample size.

Forced rounds. A round whose logged distribution puts probability 1 on one step (core steps, no consent,
rule triggers, the generic arm, caps) says nothing about other steps. A candidate only replaces the part
of the engine it is about, and keeps the logged step elsewhere (target = logging = 1, weight 1):

* a bandit candidate replaces the bandit's choice (rounds with reason ``bandit`` or a logged distribution
  over two or more steps) and keeps core, consent, rule, arm and cap decisions;
* rules only replaces the bandit's choice by the generic order and keeps the rules;
* the generic flow replaces the bandit's and the rules' choices (and the generic arm's, which it equals).

So under ``--scope all`` (default) estimates are per decision over the whole log (forced rounds add the
same observed rewards to every candidate that keeps them) and a candidate that deviates on a forced round
(the generic flow on a rule round) has no support there: the estimators warn. ``--scope randomised``
evaluates on the randomised rounds only, where candidates really differ.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bandits.estimators import ESTIMATORS, ROW_SUM_TOLERANCE, Diagnostics, Interval, bootstrap_ratio, diagnose
from bandits.exploration import build_exploration
from bandits.policies import build_policy
from bandits.reward_models import RidgeRewardModel, fold_assignment
from server.base.catalog import Catalog, CatalogError, catalog_from_config
from server.base.config import ConfigError, load_config
from server.base.toml_merge import merge_tables
from server.offline.console import ReportTable, new_console
from server.offline.common import OfflineError, demo_hint, generic_order, json_clean, load_setup
from server.offline.logdata import DecisionArrays, load_decisions

ESTIMATOR_NAMES = ("ips", "snips", "dm", "dr", "replay")
FEW_ROUNDS = 100  # below this many evaluated decisions the intervals are too wide to tell policies apart
SCOPES = ("all", "randomised")
Progress = Callable[[str, float, float], None]  # (task, done, total)


def _no_progress(task: str, done: float, total: float) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to run a replay: which rounds, which estimators, what a round without outcome earns, the
    bootstrap and the reward model of DM/DR."""

    scope: str = "all"
    default_reward: float | None = None
    estimators: tuple[str, ...] = ESTIMATOR_NAMES
    n_bootstrap: int = 1000
    alpha: float = 0.05
    seed: int = 0
    reward_model_l2: float = 1e-3
    reward_model_folds: int = 2
    refit_reward_model: bool | None = None  # refit DM/DR's model per bootstrap replicate; None = small logs only
    min_training_share: float = 0.1  # warn when a replay-trained candidate learned from fewer randomised rounds

    def check(self) -> None:
        if self.scope not in SCOPES:
            raise OfflineError(f"--scope: must be one of {', '.join(SCOPES)} (got {self.scope!r})")
        bad = [e for e in self.estimators if e not in ESTIMATOR_NAMES]
        if bad or not self.estimators:
            raise OfflineError(f"--estimators: must be a comma list of {', '.join(ESTIMATOR_NAMES)} (got {bad or 'none'})")
        if not 0 < self.alpha < 1:
            raise OfflineError(f"--alpha: must be in (0, 1) (got {self.alpha})")
        if self.n_bootstrap < 10:
            raise OfflineError(f"--bootstrap: must be >= 10 (got {self.n_bootstrap})")
        if not 0 <= self.min_training_share <= 1:
            raise OfflineError(f"min_training_share: must be in [0, 1] (got {self.min_training_share})")
        if self.default_reward is not None and not math.isfinite(self.default_reward):
            raise OfflineError("--default-reward: must be a finite number")


@dataclass
class Rounds:
    """The logged rounds a replay evaluates (time order) and what kind of decision each was."""

    log: DecisionArrays
    rows: np.ndarray  # indices into log
    reward: np.ndarray
    action: np.ndarray
    pscore: np.ndarray
    context: np.ndarray
    eligible: np.ndarray
    logging_dist: np.ndarray
    bandit: np.ndarray  # the bandit chose (randomised)
    rule: np.ndarray  # a rule forced the step
    generic_arm: np.ndarray  # the generic arm's fixed flow chose

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    def one_hot_logged(self) -> np.ndarray:
        d = np.zeros_like(self.logging_dist)
        d[np.arange(self.n), self.action] = 1.0
        return d

    def first_eligible(self) -> np.ndarray:
        """Index of the first eligible step in generic order (columns are in that order)."""
        return np.argmax(self.eligible, axis=1)


@dataclass
class Counts:
    """What happened to the logged decisions before estimation."""

    logged: int = 0
    no_step: int = 0
    no_outcome_skipped: int = 0
    no_outcome_defaulted: int = 0
    bad_propensity: int = 0
    out_of_scope: int = 0
    used: int = 0
    randomised: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class EstimateResult:
    """One estimator's estimate of one policy."""

    estimator: str
    value: float
    low: float
    high: float


@dataclass
class PolicyResult:
    """A candidate policy's estimates, weight diagnostics and warnings; ``truth`` only in tests."""

    name: str
    description: str
    estimates: list[EstimateResult]
    ess: float
    max_weight: float
    zero_support_share: float
    missing_support_share: float | None
    warnings: list[str]
    differs_share: float  # rounds where the policy's distribution differs from the logged one


@dataclass
class ReplayReport:
    """Everything ``onramp replay`` prints: counts, the on-policy mean and every candidate's estimates."""

    source: str
    scope: str
    alpha: float
    n_bootstrap: int
    counts: Counts
    on_policy: EstimateResult
    policies: list[PolicyResult]
    warnings: list[str]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (NaN becomes None)."""
        return json_clean(asdict(self))

    def policy(self, name: str) -> PolicyResult:
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)


# ------------------------------------------------------------------------------------------ rounds
def select_rounds(log: DecisionArrays, options: ReplayOptions) -> tuple[Rounds, Counts]:
    """The rounds to evaluate: decisions that showed a step, with an outcome (or ``default_reward``),
    a valid propensity and (``scope=randomised``) a logged distribution over two or more steps."""
    counts = Counts(logged=log.n)
    reasons, n_reason = np.unique(log.reason, return_counts=True)
    counts.by_reason = {str(r): int(c) for r, c in zip(reasons.tolist(), n_reason.tolist())}
    has_step = log.has_step
    counts.no_step = int((~has_step).sum())
    has_outcome = log.has_outcome
    missing = has_step & ~has_outcome
    reward = log.reward.copy()
    if options.default_reward is None:
        counts.no_outcome_skipped = int(missing.sum())
        keep = has_step & has_outcome
    else:
        counts.no_outcome_defaulted = int(missing.sum())
        reward[missing] = options.default_reward
        keep = has_step.copy()
    p = log.propensity
    good_p = np.isfinite(p) & (p > 0) & (p <= 1 + 1e-9)
    counts.bad_propensity = int((keep & ~good_p).sum())
    keep &= good_p
    randomised = (log.logging_dist > 0).sum(axis=1) >= 2
    bandit = (log.reason == "bandit") | randomised
    if options.scope == "randomised":
        counts.out_of_scope = int((keep & ~randomised).sum())
        keep &= randomised
    rows = np.flatnonzero(keep)
    check_distribution(log, rows, log.logging_dist[rows], "decision log: the logged probabilities")
    counts.used = int(rows.size)
    counts.randomised = int(randomised[rows].sum())
    reason = log.reason[rows]
    rule = np.char.startswith(reason.astype(str), "rule:") if rows.size else np.zeros(0, dtype=bool)
    rounds = Rounds(
        log=log, rows=rows, reward=reward[rows], action=log.action[rows], pscore=np.minimum(p[rows], 1.0),
        context=log.context[rows], eligible=log.eligible[rows], logging_dist=log.logging_dist[rows],
        bandit=bandit[rows], rule=rule & ~bandit[rows], generic_arm=(reason == "generic") & ~bandit[rows])
    return rounds, counts


def check_distribution(log: DecisionArrays, rows: np.ndarray, dist: np.ndarray, what: str) -> None:
    """OfflineError naming the first decision (of ``log``'s ``rows``) whose row of ``dist`` does not sum
    to 1: the server logs a full distribution over the eligible steps and every target is one, so anything
    else is a broken or foreign log (or a broken candidate), and every weight computed from it is off."""
    sums = dist.sum(axis=1)
    bad = np.flatnonzero(~(np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE))
    if bad.size:
        i = int(rows[bad[0]])
        raise OfflineError(f"{what} of decision {log.decision_id[i]} (row {i} of the log) sum to {sums[bad[0]]:.6g}, "
                           f"not 1 ({bad.size} of {rows.size} evaluated decisions are like it)")


# ------------------------------------------------------------------------------------------ targets
def target_logging(r: Rounds) -> np.ndarray:
    """The logging policy: its own logged distribution."""
    return r.logging_dist


def target_generic(r: Rounds) -> np.ndarray:
    """The generic flow: the first eligible step in generic order wherever the bandit, a rule or the generic
    arm chose; the logged step elsewhere (core, consent, caps)."""
    d = r.one_hot_logged()
    change = np.flatnonzero(r.bandit | r.rule | r.generic_arm)
    d[change] = 0.0
    d[change, r.first_eligible()[change]] = 1.0
    return d


def target_rules_only(r: Rounds) -> np.ndarray:
    """Rules only: the rules fire as logged; where the bandit chose, the generic order instead."""
    d = r.one_hot_logged()
    change = np.flatnonzero(r.bandit)
    d[change] = 0.0
    d[change, r.first_eligible()[change]] = 1.0
    return d


@dataclass(frozen=True, slots=True)
class Candidate:
    """A bandit candidate: a name and the catalog whose ``[bandit]`` (and ``guardrails.max_exploration``)
    settings it uses."""

    name: str
    catalog: Catalog

    @property
    def description(self) -> str:
        b = self.catalog.bandit
        return (f"{b.algorithm}(alpha={b.alpha:g}, l2={b.l2:g}) + {b.exploration}"
                f"({'epsilon=%g' % b.epsilon if b.exploration == 'epsilon_greedy' else 'gamma=%g' % b.gamma}), "
                f"replay-trained")


def target_candidate(r: Rounds, candidate: Candidate, seed: int = 0, progress: Progress = _no_progress) -> tuple[np.ndarray, int]:
    """The candidate bandit's probabilities on the bandit rounds (the logged step elsewhere), learned by
    replay: in time order, the candidate gives its distribution over the round's eligible steps (before
    seeing the round), draws its choice, and learns from the round only when its choice equals the logged
    step (Li et al. 2011: then the logged reward is the reward of its own choice). Returns the matrix and
    the number of rounds it learned from."""
    b = candidate.catalog.bandit
    k = r.logging_dist.shape[1]
    d = max(1, r.context.shape[1])
    policy = build_policy(b.algorithm, k, d, **b.policy_params())
    explore = build_exploration(b.exploration, epsilon=b.epsilon, gamma=b.gamma,
                                max_exploration=candidate.catalog.guardrails.max_exploration)
    rows = np.flatnonzero(r.bandit)
    el_rows, el_cols = np.nonzero(r.eligible[rows])  # row-major: each round's eligible steps in order
    bounds = np.searchsorted(el_rows, np.arange(rows.size + 1))
    cols = el_cols.astype(np.intp)
    flat_probs = np.empty(cols.size)
    rng = np.random.default_rng(seed)
    u = rng.random(rows.size).tolist()
    ctx = r.context if r.context.shape[1] else np.ones((r.n, 1))
    scores, probs_of, learn = policy.scores, explore.probabilities_list, policy.learn_one
    logged = r.action[rows].tolist()
    reward = r.reward[rows].tolist()
    when = r.log.timestamp_ms[r.rows[rows]].tolist()  # a forgetting candidate learns at the decision's time
    bl = bounds.tolist()
    learned = 0
    total = rows.size
    every = max(1, total // 200)
    for j, i in enumerate(rows.tolist()):
        lo, hi = bl[j], bl[j + 1]
        arms = cols[lo:hi]
        x = ctx[i]
        probs = probs_of(scores(x, arms, rng).tolist()) if hi - lo > 1 else [1.0]
        flat_probs[lo:hi] = probs
        # the candidate's own draw (inverse CDF with a pre-drawn uniform)
        acc, pick, uj = 0.0, hi - 1, u[j]
        for m, q in enumerate(probs):
            acc += q
            if uj < acc:
                pick = lo + m
                break
        a = logged[j]
        if cols[pick] == a:
            learn(x, a, reward[j], when[j])
            learned += 1
        if j % every == 0:
            progress(f"training {candidate.name}", j, total)
    dist = r.one_hot_logged()
    dist[rows] = 0.0
    dist[rows[el_rows], cols] = flat_probs
    progress(f"training {candidate.name}", total, total)
    return dist, learned


# ------------------------------------------------------------------------------------------ estimation
def _quantiles(reps: np.ndarray, point: float, alpha: float) -> EstimateResult:
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return EstimateResult("", point, math.nan, math.nan)
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return EstimateResult("", point, float(lo), float(hi))


def on_policy_mean(r: Rounds, options: ReplayOptions) -> EstimateResult:
    """The mean logged reward with its bootstrap interval (what the logging policy earned)."""
    if r.n == 0:
        return EstimateResult("on-policy", math.nan, math.nan, math.nan)
    reps = bootstrap_ratio(r.reward, None, options.n_bootstrap, np.random.default_rng([options.seed, 99]))
    res = _quantiles(reps, float(r.reward.mean()), options.alpha)
    res.estimator = "on-policy"
    return res


@dataclass
class RewardFit:
    """DM/DR's reward model on the evaluated rounds: the model, each round's fold and the cross-fitted
    predictions ``q`` ``(n, K)`` (each round predicted by the model fitted on the other folds)."""

    model: RidgeRewardModel
    fold: np.ndarray
    q: np.ndarray


def reward_estimates(r: Rounds, options: ReplayOptions) -> RewardFit:
    """The cross-fitted reward model of DM and DR, clipped to the reward range (one fold, in-sample, on
    logs of fewer than ten rounds per fold)."""
    folds = options.reward_model_folds if r.n >= 10 * max(1, options.reward_model_folds) else 1
    model = _reward_model(r, options)
    fold = fold_assignment(r.n, folds, options.seed)
    return RewardFit(model, fold, model.cross_fit(_context(r), r.action, r.reward, fold))


REFIT_MAX_WORK = 2_000_000  # rounds x replicates up to which DM/DR refit their model by default


def _reward_model(r: Rounds, options: ReplayOptions) -> RidgeRewardModel:
    return RidgeRewardModel(r.logging_dist.shape[1], l2=options.reward_model_l2,
                            clip=(float(r.reward.min()), float(r.reward.max())))


def _refits(r: Rounds, options: ReplayOptions) -> bool:
    """Whether DM/DR refit their reward model in every bootstrap replicate."""
    if options.refit_reward_model is not None:
        return options.refit_reward_model
    return r.n * options.n_bootstrap <= REFIT_MAX_WORK


def _context(r: Rounds) -> np.ndarray:
    return r.context if r.context.shape[1] else np.zeros((r.n, 1))


def evaluate_policy(name: str, description: str, target: np.ndarray, r: Rounds, options: ReplayOptions,
                    fit: RewardFit | None, progress: Progress = _no_progress) -> PolicyResult:
    """Every requested estimator (with bootstrap interval) and the weight diagnostics of one target.

    DM and DR intervals refit the reward model in every bootstrap replicate when ``refit_reward_model``
    (default: when rounds x replicates <= :data:`REFIT_MAX_WORK`), cross-fitted on the same folds as the
    point estimate; otherwise the model is held fixed and the DM interval leaves out the model's own error
    (too narrow: a warning says so)."""
    check_distribution(r.log, r.rows, target, f"replay: the {name} policy's probabilities")
    diag: Diagnostics = diagnose(r.action, r.pscore, target, logging_dist=r.logging_dist)
    refit = _refits(r, options)
    estimates = []
    for j, est in enumerate(options.estimators):
        rng = np.random.default_rng([options.seed, j, zlib.crc32(name.encode())])
        kwargs: dict[str, Any] = {}
        model_based = est in ("dm", "dr") and fit is not None
        if model_based and refit:
            kwargs = {"context": _context(r), "reward_model": fit.model, "fold": fit.fold}  # type: ignore[union-attr]
        iv: Interval = ESTIMATORS[est]().estimate_interval(
            r.reward, r.action, r.pscore, target, fit.q if model_based else None, alpha=options.alpha,  # type: ignore[union-attr]
            n_bootstrap=options.n_bootstrap, random_state=rng, **kwargs)
        estimates.append(EstimateResult(est, iv.mean, iv.low, iv.high))
        progress("estimating", 1, 0)
    warnings = list(diag.warnings)  # a replay of NaN is diagnose's "no support" warning
    differs = float(np.mean(np.abs(target - r.logging_dist).sum(axis=1) > 1e-9)) if r.n else 0.0
    return PolicyResult(name, description, estimates, diag.ess, diag.max_weight, diag.zero_support_share,
                        diag.missing_support_share, warnings, differs)


def log_warnings(r: Rounds, options: ReplayOptions) -> list[str]:
    """Warnings about the log and the options that hold for every policy alike (printed once)."""
    warnings: list[str] = []
    if "dm" in options.estimators and not _refits(r, options):
        warnings.append("dm: the interval holds the reward model fixed and is too narrow "
                        "(--refit-reward-model refits it per replicate, slower)")
    if "replay" in options.estimators:
        randomised = r.logging_dist[r.bandit]
        positive = randomised[randomised > 0]
        if positive.size and np.ptp(positive) > 1e-9:
            warnings.append("replay: the logging probabilities are not uniform, so the replay estimates are biased "
                            "(unbiased only for uniform-random logging); prefer IPS/SNIPS/DR")
        elif r.bandit.any() and not r.bandit.all() and options.scope == "all":
            warnings.append("replay: forced rounds always match and randomised ones only sometimes, so they are "
                            "over-represented; use --scope randomised for replay")
    return warnings


def training_warning(trained: list[tuple[str, int]], n_rounds: int, min_share: float) -> list[str]:
    """One warning naming every replay-trained candidate that learned from less than ``min_share`` of the
    ``n_rounds`` randomised rounds (``trained``: name and rounds learned from)."""
    few = [(name, k) for name, k in trained if n_rounds and k < min_share * n_rounds]
    if not few:
        return []
    who = ", ".join(f"{name} from {k:,} ({k / n_rounds:.1%})" for name, k in few)
    return [f"replay training: {who} of the {n_rounds:,} randomised rounds (< {min_share:.0%}); a candidate learns "
            "only where its own draw matched the logged step, so it is less trained than it would be online and "
            "its estimates describe that less trained policy"]


def run_replay(log: DecisionArrays, catalog: Catalog, candidates: list[Candidate], options: ReplayOptions,
               progress: Progress = _no_progress, source: str = "") -> ReplayReport:
    """Evaluate the logging policy, the generic flow, rules only and every candidate on ``log``."""
    options.check()
    t0 = time.perf_counter()
    r, counts = select_rounds(log, options)
    warnings: list[str] = []
    if counts.no_outcome_skipped:
        warnings.append(f"{counts.no_outcome_skipped} decisions without an outcome were skipped "
                        "(pass --default-reward to count them with a default reward)")
    if counts.bad_propensity:
        warnings.append(f"{counts.bad_propensity} decisions with a propensity outside (0, 1] were skipped")
    if r.n == 0:
        raise OfflineError(f"nothing to evaluate: {no_rounds(counts)}; {demo_hint('onramp replay')}")
    if r.n < FEW_ROUNDS:
        warnings.append(f"only {r.n} decision{'s' if r.n != 1 else ''} evaluated: too few for the estimates to tell "
                        f"policies apart; {demo_hint('onramp replay')}")
    if counts.randomised == 0:
        warnings.append("no randomised rounds: every logged step was forced (probability 1), so the log tells "
                        "nothing about other steps; estimates of policies that choose differently are unreliable")
    policies: list[tuple[str, str, np.ndarray]] = [
        ("logging", "the logged policy (its own probabilities)", target_logging(r)),
        ("generic", "first eligible step in the generic order (no rules, no bandit)", target_generic(r)),
        ("rules_only", "rules as logged, generic order instead of the bandit", target_rules_only(r)),
    ]
    trained: list[tuple[str, int]] = []
    for c in candidates:
        dist, learned = target_candidate(r, c, seed=options.seed, progress=progress)
        policies.append((c.name, f"{c.description}; learned from {learned} matched rounds", dist))
        trained.append((c.name, learned))
    warnings += log_warnings(r, options)
    warnings += training_warning(trained, int(r.bandit.sum()), options.min_training_share)
    fit = reward_estimates(r, options) if any(e in ("dm", "dr") for e in options.estimators) else None
    results = [evaluate_policy(name, desc, target, r, options, fit, progress) for name, desc, target in policies]
    return ReplayReport(source, options.scope, options.alpha, options.n_bootstrap, counts, on_policy_mean(r, options),
                        results, warnings, time.perf_counter() - t0)


def no_rounds(counts: Counts) -> str:
    """Why no decision could be evaluated, and what would give one."""
    if counts.logged == 0:
        return ("the log holds no decisions yet (GetNextStep logs one per call; the server writes them to the "
                "database given to onramp serve --db)")
    parts = [f"the log holds {counts.logged} decision{'s' if counts.logged != 1 else ''}"]
    if counts.no_step:
        parts.append(f"{counts.no_step} without a step")
    if counts.no_outcome_skipped:
        parts.append(f"{counts.no_outcome_skipped} without an outcome yet (a decision gets one from ReportOutcome, "
                     "from its step's success event, or when its reward window closes; --default-reward counts "
                     "them now)")
    if counts.bad_propensity:
        parts.append(f"{counts.bad_propensity} with a propensity outside (0, 1]")
    if counts.out_of_scope:
        parts.append(f"{counts.out_of_scope} forced, outside --scope randomised")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ output
def render(report: ReplayReport, console: Any) -> None:
    """The summary table (rich) of a replay."""
    c = report.counts
    console.print(f"[bold]onramp replay[/bold] {report.source}  scope={report.scope}  "
                  f"{c.used} of {c.logged} decisions evaluated ({c.randomised} randomised); "
                  f"skipped: {c.no_step} without a step, {c.no_outcome_skipped} without outcome"
                  + (f", {c.out_of_scope} forced (scope)" if c.out_of_scope else "")
                  + (f"; {c.no_outcome_defaulted} given the default reward" if c.no_outcome_defaulted else ""))
    pct = int(round((1 - report.alpha) * 100))
    op = report.on_policy
    console.print(f"on-policy mean reward of the log: {op.value:.4f}  [{op.low:.4f}, {op.high:.4f}] ({pct}% bootstrap)")
    table = ReportTable(title=f"Estimated value per decision ({pct}% bootstrap intervals, {report.n_bootstrap} replicates)")
    table.add_column("policy", style="bold")
    table.add_column("estimator")
    table.add_column("value", justify="right")
    table.add_column(f"{pct}% interval", justify="right")
    table.add_column("ESS", justify="right")
    table.add_column("differs", justify="right")
    for p in report.policies:
        for j, e in enumerate(p.estimates):
            first = j == 0
            table.add_row(p.name if first else "", e.estimator.upper(),
                          f"{e.value:.4f}" if math.isfinite(e.value) else "n/a",
                          f"[{e.low:.4f}, {e.high:.4f}]" if math.isfinite(e.low) else "n/a",
                          f"{p.ess:,.0f}" if first else "", f"{p.differs_share:.0%}" if first else "",
                          end_section=j == len(p.estimates) - 1)
    console.print(table)
    for p in report.policies:
        console.print(f"  [bold]{p.name}[/bold]: {p.description}")
        for w in p.warnings:
            console.print(f"    [yellow]warning:[/yellow] {w}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"({report.seconds:.1f} s)")


def plot(report: ReplayReport, path: str | Path) -> None:
    """Estimates with their intervals, one group per policy, one marker per estimator (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p.name for p in report.policies]
    ests = [e.estimator for e in report.policies[0].estimates]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.5))
    width = 0.8 / max(1, len(ests))
    for j, est in enumerate(ests):
        xs, ys, lo, hi = [], [], [], []
        for i, p in enumerate(report.policies):
            e = p.estimates[j]
            if math.isfinite(e.value):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(e.value)
                lo.append(max(0.0, e.value - e.low) if math.isfinite(e.low) else 0.0)
                hi.append(max(0.0, e.high - e.value) if math.isfinite(e.high) else 0.0)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=est.upper())
    op = report.on_policy
    ax.axhline(op.value, color="grey", linestyle="--", linewidth=1, label="logged mean")
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("estimated reward per decision")
    ax.set_title(f"Off-policy estimates ({int(round((1 - report.alpha) * 100))}% bootstrap intervals)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ CLI
def load_candidate(path: str | Path, config_path: str | None = None) -> Candidate:
    """A candidate from a config/catalog file (typically just ``[bandit]``, maybe ``[guardrails]``): its keys
    override those of the --config file, which override the demo catalog's, key by key
    (:func:`server.base.catalog.catalog_from_config`)."""
    p = Path(path)
    try:
        raw = load_config(config_path).raw if config_path else {}
        cat = catalog_from_config(merge_tables(raw, load_config(p).raw))
    except (ConfigError, CatalogError) as exc:
        raise OfflineError(f"--candidate-config {p}: {exc}") from None
    return Candidate(f"bandit:{p.stem}", cat)


def add_replay_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register ``onramp replay`` on the ``onramp`` command's subparsers."""
    p = subparsers.add_parser(
        "replay", help="estimate candidate policies offline from the decision log (IPS, SNIPS, DM, DR, replay)",
        description="Off-policy evaluation of the logging policy, the generic flow, rules only and candidate "
                    "bandits (--candidate-config) on the logged decisions and outcomes. See docs/offline-evaluation.md.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", metavar="PATH", help="the server's SQLite database")
    src.add_argument("--parquet", metavar="PATH", help="a decisions Parquet file from onramp export")
    p.add_argument("--config", metavar="TOML", help="the server's config (catalog: step order); default: demo catalog")
    p.add_argument("--candidate-config", metavar="TOML", action="append", default=[],
                   help="a config/catalog file whose [bandit] settings define a candidate bandit (repeatable)")
    p.add_argument("--scope", choices=SCOPES, default="all",
                   help="all: every decision with a step (forced rounds keep their logged step); "
                        "randomised: only rounds whose logged distribution spans two or more steps")
    p.add_argument("--default-reward", type=float, default=None, metavar="R",
                   help="reward of decisions without an outcome (default: skip them and count them)")
    p.add_argument("--estimators", default=",".join(ESTIMATOR_NAMES), help="comma list (default: all)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (default 1000)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level of the intervals (default 0.05)")
    p.add_argument("--refit-reward-model", action=argparse.BooleanOptionalAction, default=None,
                   help="refit the DM/DR reward model in every bootstrap replicate (default: only when "
                        "rounds x replicates <= 2e6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress on stderr)")
    p.add_argument("--plot", metavar="PNG", help="write a chart of the estimates with intervals")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)
    return p


def cmd_replay(args: argparse.Namespace) -> int:
    """``onramp replay``: exit 0 on success, 2 on bad input (the message names the option)."""
    from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    err = new_console(stderr=True)
    out = new_console()
    try:
        setup = load_setup(args.config)
        candidates = [load_candidate(c, args.config) for c in args.candidate_config]
        options = ReplayOptions(scope=args.scope, default_reward=args.default_reward,
                                estimators=tuple(e.strip() for e in args.estimators.split(",") if e.strip()),
                                n_bootstrap=args.bootstrap, alpha=args.alpha, seed=args.seed,
                                refit_reward_model=args.refit_reward_model)
        options.check()
        show = not args.no_progress and err.is_terminal
        with RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TimeElapsedColumn(), console=err, transient=True, disable=not show) as bar:
            tasks: dict[str, Any] = {}

            def progress(task: str, done: float, total: float) -> None:
                if task == "estimating":
                    if task not in tasks:
                        tasks[task] = bar.add_task(task, total=len(options.estimators) * (3 + len(candidates)))
                    bar.advance(tasks[task], 1)
                    return
                if task not in tasks:
                    tasks[task] = bar.add_task(task, total=max(total, 1))
                bar.update(tasks[task], completed=done)

            load_task = bar.add_task("loading decision log", total=None)
            log = load_decisions(args.db, args.parquet, generic_order(setup.catalog))
            bar.update(load_task, total=1, completed=1)
            report = run_replay(log, setup.catalog, candidates, options, progress, source=args.db or args.parquet)
    except (OfflineError, ConfigError, CatalogError, OSError) as exc:
        err.print(f"onramp replay: {exc}", markup=False, highlight=False)
        return 2
    if args.plot:
        plot(report, args.plot)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        render(report, out)
        if args.plot:
            out.print(f"chart written to {args.plot}")
    return 0
