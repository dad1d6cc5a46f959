"""Measures every proposing rule against the bandit on the decisions where it fired, and demotes a rule (it
stops boosting) once it is significantly worse.

A proposing rule's decision draws from ``p' = (1 - beta) * p + beta * onehot(r)`` (bandits/exploration.py
``boost``): ``p`` the bandit's distribution, ``r`` the rule's step. With the logged ``p'(r)``, reward ``y`` and
chosen step ``a``, each rewarded decision gives

    d = y * ([a == r] / p'(r) - 1)

whose expectation is ``V(rule) - V(logged) = (1 - beta) * (V(rule) - V(bandit))`` on the rule's firings
(``V(rule)``: always the rule's step when it fires, by inverse propensity; ``V(logged)``: the mixture's own
mean reward). So ``mean(d) < 0`` exactly when the rule is worse than the bandit would have been, and the test
needs only what each decision row logs (reason, step, probabilities, reward), not ``beta``.

The test (one-sided, normal approximation): the rule is demoted when the upper bound
``mean(d) + z * sd(d) / sqrt(n)`` is below 0. Against peeking it is only looked at after ``n0 =
min_outcomes_to_demote`` outcomes and then at ``2 n0, 4 n0, ...``, look ``k`` (from 0) at level
``alpha / 2**(k + 1)``: the levels sum to ``alpha`` (default 0.01), so a rule as good as the bandit is demoted
with probability at most about ``alpha`` however long it runs. Demotion is kept in the state (the learner's
saved state, or its relearning from the outcome log, restores it); an erased person's trials are taken out of
the sums (:meth:`RuleMonitor.unlearn_one`).

:class:`RuleMonitor` is updated one outcome at a time (:meth:`RuleMonitor.learn_one`) and is plain state
(:meth:`RuleMonitor.to_state` / :meth:`RuleMonitor.from_state`); it lives in the learner
(server/learn/learner.py), whose snapshots carry the demoted rules to the workers.

>>> m = RuleMonitor({"r": 4})
>>> for _ in range(4):
...     _ = m.learn_one(RuleTrial("r", "tip", "other", 0.5), 1.0)  # the bandit's pick succeeds, the rule's is not shown
>>> m.demoted("r"), m.stats["r"].n
(True, 4)
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from server.base.catalog import Rule
from server.base.metrics import Metrics
from server.base.reasons import boosted_rule

log = logging.getLogger(__name__)

DEMOTION_ALPHA = 0.01
STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RuleTrial:
    """One decision a proposing rule boosted: the rule, its step, the step shown and the logged probability
    of the rule's step (``p'(r)``)."""

    rule: str
    rule_step: str
    step_id: str
    rule_propensity: float

    def weight(self) -> float:
        """The inverse-propensity weight of "always the rule's step": ``[a == r] / p'(r)``."""
        return 1.0 / self.rule_propensity if self.step_id == self.rule_step else 0.0


def trial_of(reason: str, step_id: str, probabilities: Mapping[str, float]) -> RuleTrial | None:
    """The trial of a logged decision (reason, shown step, logged probabilities), None unless a proposing rule
    boosted it and its rule step has a positive logged probability."""
    fired = boosted_rule(reason)
    if fired is None or not step_id:
        return None
    p = float(probabilities.get(fired[1], 0.0))
    return RuleTrial(fired[0], fired[1], step_id, p) if p > 0 else None


@dataclass(slots=True)
class RuleStats:
    """Running sums of one rule's rewarded trials (``d`` as in the module docstring) and its verdict."""

    n: int = 0
    sum_d: float = 0.0
    sum_d2: float = 0.0
    reward: float = 0.0  # sum of logged rewards
    rule_shown: int = 0  # trials that showed the rule's step
    rule_value: float = 0.0  # sum of y * [a == r] / p'(r)
    looks: int = 0  # tests made so far
    demoted: bool = False

    def mean_d(self) -> float:
        return self.sum_d / self.n if self.n else 0.0

    def sd_d(self) -> float:
        """Sample standard deviation of ``d`` (0 below two trials)."""
        if self.n < 2:
            return 0.0
        return math.sqrt(max(0.0, (self.sum_d2 - self.n * self.mean_d() ** 2) / (self.n - 1)))

    def upper(self, alpha: float) -> float:
        """One-sided upper confidence bound of ``mean(d)`` at level ``alpha``."""
        z = NormalDist().inv_cdf(1.0 - alpha)
        return self.mean_d() + z * self.sd_d() / math.sqrt(max(self.n, 1))


class RuleMonitor:
    """Per-rule statistics and the demotion decision of the proposing rules.

    ``min_outcomes`` maps each monitored rule to its ``min_outcomes_to_demote`` (0 = measured, never demoted);
    other rules' trials are ignored. ``metrics`` (optional) gets ``onramp_rule_demoted{rule}`` and
    ``onramp_rule_demotions_total{rule}``.
    """

    def __init__(self, min_outcomes: Mapping[str, int], alpha: float = DEMOTION_ALPHA,
                 metrics: Metrics | None = None) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1) (got {alpha!r})")
        self.min_outcomes = {name: int(n) for name, n in min_outcomes.items()}
        self.alpha = float(alpha)
        self.metrics = metrics
        self.stats: dict[str, RuleStats] = {name: RuleStats() for name in self.min_outcomes}
        self.publish()

    @classmethod
    def for_rules(cls, rules: Iterable[Rule], metrics: Metrics | None = None) -> RuleMonitor:
        """A monitor of the enabled proposing rules of a catalog."""
        return cls({r.name: r.min_outcomes_to_demote for r in rules if r.enabled and r.proposes}, metrics=metrics)

    def demoted(self, rule: str) -> bool:
        s = self.stats.get(rule)
        return s is not None and s.demoted

    @property
    def demoted_rules(self) -> frozenset[str]:
        return frozenset(name for name, s in self.stats.items() if s.demoted)

    def _add(self, trial: RuleTrial, reward: float, sign: int) -> RuleStats | None:
        s = self.stats.get(trial.rule)
        if s is None:
            return None
        y = float(reward)
        w = trial.weight()
        d = y * (w - 1.0)
        s.n += sign
        s.sum_d += sign * d
        s.sum_d2 += sign * d * d
        s.reward += sign * y
        s.rule_value += sign * y * w
        s.rule_shown += sign * (w > 0)
        return s

    def learn_one(self, trial: RuleTrial, reward: float) -> bool:
        """Count one rewarded trial (also after a demotion: the outcomes of decisions boosted before it); True
        when it demoted its rule (the log line and metrics are written)."""
        s = self._add(trial, reward, 1)
        if s is None or s.demoted:
            return False
        n0 = self.min_outcomes[trial.rule]
        if n0 <= 0 or s.n != n0 << s.looks:
            return False
        level = self.alpha / 2 ** (s.looks + 1)
        s.looks += 1
        upper = s.upper(level)
        if upper >= 0.0:
            return False
        s.demoted = True
        log.warning("rule %s demoted: it stops boosting (after %d outcomes, rule minus logged policy %.4f per "
                    "decision, upper bound %.4f < 0 at level %.2g)", trial.rule, s.n, s.mean_d(), upper, level)
        if self.metrics is not None:
            self.metrics.rule_demotions_total.labels(rule=trial.rule).inc()
        self.publish()
        return True

    def unlearn_one(self, trial: RuleTrial, reward: float) -> None:
        """Take one counted trial out of the statistics (an erased person's decision). A demotion stays: it
        was decided, and the rule has not boosted since."""
        self._add(trial, reward, -1)

    def publish(self) -> None:
        """Set ``onramp_rule_demoted`` of every monitored rule (after a restore as after a demotion)."""
        if self.metrics is not None:
            for name, s in self.stats.items():
                self.metrics.rule_demoted.labels(rule=name).set(1.0 if s.demoted else 0.0)

    def to_state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "alpha": self.alpha, "min_outcomes": dict(self.min_outcomes),
                "stats": {name: asdict(s) for name, s in self.stats.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], metrics: Metrics | None = None) -> RuleMonitor:
        """Rebuild a monitor from :meth:`to_state` output (ValueError for an unknown format)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"rule monitor state: unknown format {state.get('format')!r}")
        m = cls(state["min_outcomes"], float(state["alpha"]))
        m.stats = {name: RuleStats(**s) for name, s in state["stats"].items()}
        m.metrics = metrics
        m.publish()
        return m
