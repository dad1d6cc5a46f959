"""``onramp report rules``: every rule measured against what the bandit would have done, from the decision log.

On the decisions a proposing rule boosted (reason ``boosted:<rule>:<step>``, rewarded ones), with the logged
distribution ``p'`` (the bandit's ``p`` mixed toward the rule's step ``r`` by ``beta``), chosen step ``a`` and
reward ``y``, per rule:

- **rule**: the value of "always the rule's step when it fires", by inverse propensity: ``mean(y [a = r] / p'(r))``;
- **bandit**: the value of the bandit's own distribution on the same decisions: ``mean(y p(a) / p'(a))`` with
  ``p(a) = (p'(a) - beta [a = r]) / (1 - beta)`` (``beta`` the rule's ``boost`` in the catalog given);
- **logged**: the mean reward of what was logged (the mixture itself);
- **rule - bandit**: the mean of the per-decision differences, with a normal interval, and its verdict.

Every weight is bounded (``p'(r) >= beta``, ``p(a) / p'(a) <= 1 / (1 - beta)``), so the intervals are sound at
moderate sizes. A forced rule (reason ``rule:<name>``, propensity 1) cannot be compared with anything: its
success rate is reported (Wilson interval) and marked so. The server's own monitor (server/learn/rule_monitor.py)
makes the same comparison online and demotes a rule that is significantly worse (docs/decisions.md).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from server.base.catalog import Catalog
from server.base.reasons import RULE_PREFIX, boosted_rule
from server.offline.common import OfflineError, demo_hint, generic_order, json_clean, load_setup, print_report
from server.offline.console import ReportTable
from server.offline.logdata import DecisionArrays, load_decisions
from server.offline.stats import wilson_interval, z_for

WORSE, BETTER, UNCLEAR, NOT_EVALUABLE = "worse", "better", "no significant difference", "forced: not evaluable"


@dataclass(frozen=True, slots=True)
class Estimate:
    """A mean with its two-sided interval (None when it cannot be computed)."""

    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, values: np.ndarray, alpha: float) -> Estimate:
        if values.size == 0:
            return cls(None, None, None)
        mean = float(values.mean())
        if values.size < 2:
            return cls(mean, None, None)
        half = z_for(alpha) * float(values.std(ddof=1)) / math.sqrt(values.size)
        return cls(mean, mean - half, mean + half)


@dataclass(slots=True)
class RuleRow:
    """One rule's figures (see the module docstring)."""

    rule: str
    mode: str
    decisions: int  # decisions of the rule (with a step)
    rewarded: int  # of them, with an outcome
    rule_step_shown: int  # rewarded decisions that showed the rule's step
    success: Estimate  # mean reward when the rule's step was shown (Wilson interval for 0/1 rewards)
    logged: Estimate
    rule_value: Estimate = field(default_factory=lambda: Estimate(None, None, None))
    bandit_value: Estimate = field(default_factory=lambda: Estimate(None, None, None))
    difference: Estimate = field(default_factory=lambda: Estimate(None, None, None))
    verdict: str = UNCLEAR


@dataclass(slots=True)
class RuleReport:
    source: str
    alpha: float
    rows: list[RuleRow]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return json_clean(asdict(self))


def _success(y: np.ndarray, alpha: float) -> Estimate:
    if y.size and np.isin(y, (0.0, 1.0)).all():
        lo, hi = wilson_interval(int(y.sum()), int(y.size), alpha)
        return Estimate(float(y.mean()), lo, hi)
    return Estimate.of(y, alpha)


def rule_report(log: DecisionArrays, catalog: Catalog, alpha: float = 0.05, source: str = "") -> RuleReport:
    """Per-rule figures of a decision log; ``catalog`` gives each proposing rule's ``boost`` (its beta)."""
    index = {s: i for i, s in enumerate(log.action_ids)}
    rules = {r.name: r for r in catalog.rules}
    reasons = log.reason.astype(str)
    shown = log.has_step
    rewarded = shown & log.has_outcome
    notes: list[str] = []
    groups: dict[tuple[str, str], list[int]] = {}
    for i in np.flatnonzero(shown).tolist():
        reason = reasons[i]
        fired = boosted_rule(reason)
        if fired is not None:
            groups.setdefault(("propose", fired[0]), []).append(i)
        elif reason.startswith(RULE_PREFIX):
            groups.setdefault(("force", reason[len(RULE_PREFIX):]), []).append(i)
    rows: list[RuleRow] = []
    for (mode, name), idx in sorted(groups.items(), key=lambda kv: kv[0][1]):
        rows_all = np.array(idx, dtype=np.int64)
        rows_r = rows_all[rewarded[rows_all]]
        y = log.reward[rows_r]
        a = log.action[rows_r]
        if mode == "force":
            rows.append(RuleRow(name, mode, rows_all.size, rows_r.size, rows_r.size, _success(y, alpha),
                                Estimate.of(y, alpha), verdict=NOT_EVALUABLE))
            continue
        steps = [boosted_rule(reasons[i])[1] for i in rows_r.tolist()]  # type: ignore[index]
        r = np.array([index.get(s, -1) for s in steps], dtype=np.int64)
        known = r >= 0
        if not known.all():
            notes.append(f"{name}: {int((~known).sum())} decisions boost a step the catalog does not have; left out")
            rows_r, y, a, r = rows_r[known], y[known], a[known], r[known]
        dist = log.logging_dist[rows_r]
        p_rule = dist[np.arange(rows_r.size), r]
        p_logged = dist[np.arange(rows_r.size), a]
        is_rule = a == r
        w_rule = np.where(is_rule, 1.0 / np.where(p_rule > 0, p_rule, 1.0), 0.0)
        row = RuleRow(name, mode, rows_all.size, rows_r.size, int(is_rule.sum()), _success(y[is_rule], alpha),
                      Estimate.of(y, alpha), rule_value=Estimate.of(y * w_rule, alpha))
        rule = rules.get(name)
        if rule is None or not rule.proposes:
            notes.append(f"{name}: not a proposing rule of this catalog, so its boost (beta) is unknown: no bandit "
                         "estimate (give the server's --config)")
        else:
            beta = rule.boost
            p_bandit = np.clip((p_logged - beta * is_rule) / (1.0 - beta), 0.0, None)
            w_bandit = p_bandit / np.where(p_logged > 0, p_logged, 1.0)
            row.bandit_value = Estimate.of(y * w_bandit, alpha)
            row.difference = Estimate.of(y * (w_rule - w_bandit), alpha)
            d = row.difference
            if d.high is not None and d.high < 0:
                row.verdict = WORSE
            elif d.low is not None and d.low > 0:
                row.verdict = BETTER
        rows.append(row)
    if not rows:
        notes.append("no rule decision in this log")
    return RuleReport(source, alpha, rows, notes)


def _fmt(e: Estimate) -> str:
    if e.value is None:
        return "-"
    if e.low is None or e.high is None:
        return f"{e.value:.3f}"
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def render_rules(rep: RuleReport, console: Any) -> None:
    """The report as a table on ``console``."""
    level = f"{100 * (1 - rep.alpha):g}%"
    t = ReportTable(title=f"Rules against the bandit on the decisions where they fired ({level} intervals)")
    for col in ("rule", "mode", "decisions", "rewarded", "rule step shown", "rule step success", "logged",
                "rule (IPS)", "bandit (IPS)", "rule - bandit", "verdict"):
        t.add_column(col)
    for r in rep.rows:
        t.add_row(r.rule, r.mode, str(r.decisions), str(r.rewarded), str(r.rule_step_shown), _fmt(r.success),
                  _fmt(r.logged), _fmt(r.rule_value), _fmt(r.bandit_value), _fmt(r.difference), r.verdict)
    console.print(t)
    for note in rep.notes:
        console.print(f"note: {note}", markup=False, highlight=False)


def add_rules_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register ``onramp report rules``."""
    p = sub.add_parser("rules", help="every rule against what the bandit would have done (IPS, intervals)",
                       description="Per rule, on the decisions where it fired: success of its step, the value of "
                                   "always showing it and of the bandit's own choice (inverse propensity on the "
                                   "logged probabilities), their difference with an interval and a verdict.")
    p.add_argument("--db", required=True, metavar="PATH", help="the server's SQLite database")
    p.add_argument("--config", metavar="TOML", help="the server's config (its rules' boost; default the demo)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_rules)
    return p


def _report_of(args: argparse.Namespace) -> RuleReport:
    """The report the arguments ask for (OfflineError and the config errors on bad input)."""
    if not 0 < args.alpha < 1:
        raise OfflineError(f"--alpha: must be in (0, 1) (got {args.alpha})")
    setup = load_setup(args.config)
    log = load_decisions(args.db, None, generic_order(setup.catalog))
    if log.n == 0:
        raise OfflineError(f"no decisions in {args.db}; {demo_hint('onramp report rules')}")
    return rule_report(log, setup.catalog, args.alpha, args.db)


def cmd_rules(args: argparse.Namespace) -> int:
    """``onramp report rules``: 0, or 1 when a rule is significantly worse than the bandit, 2 on bad input."""
    rep = print_report("onramp report rules", lambda: _report_of(args), render_rules, args.json)
    if rep is None:
        return 2
    return 1 if any(r.verdict == WORSE for r in rep.rows) else 0
