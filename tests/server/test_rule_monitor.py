"""The rule monitor (server/learn/rule_monitor.py), pure: simulated boosted decisions where the rule's step is
worse than, as good as, or better than the bandit's own choice; the demotion schedule, its false-demotion
rate under the null, the log line and metrics, and the state round trip."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from bandits.exploration import boost
from server.base.catalog import load_catalog
from server.base.metrics import Metrics
from server.learn.rule_monitor import RuleMonitor, RuleStats, RuleTrial, trial_of

STEPS = ("tip", "other", "third")
BANDIT = [0.1, 0.8, 0.1]  # the bandit's own distribution over STEPS on the rule's firings
BETA = 0.5


def simulate(monitor: RuleMonitor, rule_success: float, n: int, rng: np.random.Generator,
             rule: str = "r") -> list[int]:
    """Feed ``n`` boosted decisions (rule step ``tip`` succeeding with ``rule_success``; ``other`` and ``third``
    with 0.5 and 0.2); returns the trial numbers (1-based) at which the rule was demoted."""
    mixed = boost(BANDIT, 0, BETA)
    actions = rng.choice(3, size=n, p=mixed)
    rewards = (rng.random(n) < np.array([rule_success, 0.5, 0.2])[actions]).astype(float)
    return [i + 1 for i, (a, y) in enumerate(zip(actions.tolist(), rewards.tolist()))
            if monitor.learn_one(RuleTrial(rule, "tip", STEPS[a], mixed[0]), y)]


def test_a_rule_worse_than_the_bandit_is_demoted_at_a_look_and_a_better_one_is_not() -> None:
    rng = np.random.default_rng(1)
    bad = RuleMonitor({"r": 100})
    demoted_at = simulate(bad, 0.05, 3000, rng)
    assert bad.demoted("r") and bad.demoted_rules == {"r"}
    assert len(demoted_at) == 1 and demoted_at[0] in (100, 200, 400, 800)  # only at a look
    assert bad.stats["r"].n == 3000 and bad.stats["r"].looks == [100, 200, 400, 800].index(demoted_at[0]) + 1
    good = RuleMonitor({"r": 100})
    assert simulate(good, 0.8, 3000, rng) == [] and not good.demoted("r")
    s = good.stats["r"]
    assert s.n == 3000 and s.looks == 5  # looks at 100, 200, 400, 800, 1600
    # the IPS value of the rule and the logged mean reward estimate what they should
    assert s.rule_value / s.n == pytest.approx(0.8, abs=0.08)
    logged = 0.55 * 0.8 + 0.4 * 0.5 + 0.05 * 0.2
    assert s.reward / s.n == pytest.approx(logged, abs=0.04)


def test_a_rule_as_good_as_the_bandit_is_rarely_demoted_however_long_it_runs() -> None:
    """Under the null the looks at 50, 100, ..., 3200 together demote at most about alpha = 1% of rules.
    The bandit's value on the firings is 0.1 v + 0.8 * 0.5 + 0.1 * 0.2, equal to the rule's v at v = 0.42 / 0.9."""
    rng = np.random.default_rng(2)
    v = 0.42 / 0.9
    demoted = sum(bool(simulate(RuleMonitor({"r": 50}), v, 3200, rng)) for _ in range(200))
    assert demoted <= 7  # binomial(200, 0.01): mean 2, P(> 7) < 0.001


def test_min_outcomes_zero_measures_without_demoting_and_unknown_rules_are_ignored() -> None:
    rng = np.random.default_rng(3)
    m = RuleMonitor({"r": 0})
    assert simulate(m, 0.0, 500, rng) == [] and m.stats["r"].n == 500 and m.stats["r"].looks == 0
    assert not m.learn_one(RuleTrial("unknown", "tip", "tip", 0.5), 1.0)
    assert set(m.stats) == {"r"}


def test_demotion_writes_a_log_line_and_metrics(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    m = RuleMonitor({"r": 100, "fine": 100}, metrics=metrics)
    text = metrics.render().decode()
    assert 'onramp_rule_demoted{rule="r"} 0.0' in text and 'onramp_rule_demoted{rule="fine"} 0.0' in text
    with caplog.at_level(logging.WARNING, logger="server.learn.rule_monitor"):
        assert simulate(m, 0.0, 400, np.random.default_rng(4)) in ([100], [200], [400])
    assert any("rule r demoted" in r.getMessage() for r in caplog.records)
    text = metrics.render().decode()
    assert 'onramp_rule_demoted{rule="r"} 1.0' in text and 'onramp_rule_demoted{rule="fine"} 0.0' in text
    assert 'onramp_rule_demotions_total{rule="r"} 1.0' in text


def test_state_round_trip_is_json_and_continues_identically() -> None:
    a = RuleMonitor({"r": 100, "s": 0})
    simulate(a, 0.3, 150, np.random.default_rng(5))
    b = RuleMonitor.from_state(json.loads(json.dumps(a.to_state())))
    assert b.to_state() == a.to_state()
    ra, rb = simulate(a, 0.05, 1000, np.random.default_rng(6)), simulate(b, 0.05, 1000, np.random.default_rng(6))
    assert ra == rb and a.to_state() == b.to_state()
    with pytest.raises(ValueError, match="format"):
        RuleMonitor.from_state({"format": 99})


def test_upper_bound_and_trials_from_logged_rows() -> None:
    s = RuleStats(n=4, sum_d=-4.0, sum_d2=4.0)
    assert (s.mean_d(), s.sd_d(), s.upper(0.05)) == (-1.0, 0.0, -1.0)
    s = RuleStats(n=2, sum_d=0.0, sum_d2=2.0)  # d = -1, +1
    assert s.upper(0.05) == pytest.approx(1.6448536 * 1.4142136 / 1.4142136, rel=1e-6)
    probs = {"tip": 0.55, "other": 0.4, "third": 0.05}
    assert trial_of("boosted:r:tip", "other", probs) == RuleTrial("r", "tip", "other", 0.55)
    assert trial_of("boosted:r:tip", "tip", probs).weight() == pytest.approx(1 / 0.55)
    assert trial_of("bandit", "tip", probs) is None and trial_of("rule:r", "tip", probs) is None
    assert trial_of("boosted:r:gone", "tip", probs) is None and trial_of("boosted:r:tip", "", probs) is None


def test_for_rules_monitors_the_enabled_proposing_rules_of_a_catalog() -> None:
    cat = load_catalog(None)
    m = RuleMonitor.for_rules(cat.rules)
    assert set(m.stats) == {r.name for r in cat.rules} and set(m.min_outcomes.values()) == {200}


def test_unlearn_one_takes_trials_out_and_keeps_a_demotion() -> None:
    kept = RuleMonitor({"r": 100})
    simulate(kept, 0.3, 300, np.random.default_rng(7))
    both = RuleMonitor({"r": 100})
    simulate(both, 0.3, 300, np.random.default_rng(7))
    extra = [RuleTrial("r", "tip", "tip", 0.55), RuleTrial("r", "tip", "other", 0.55)]
    for t in extra:
        both.learn_one(t, 1.0)
    assert both.stats["r"].n == 302
    for t in extra:
        both.unlearn_one(t, 1.0)
    a, b = kept.stats["r"], both.stats["r"]
    assert (a.n, a.rule_shown, a.looks) == (b.n, b.rule_shown, b.looks)
    for name in ("sum_d", "sum_d2", "reward", "rule_value"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), abs=1e-9)
    bad = RuleMonitor({"r": 100})
    simulate(bad, 0.0, 100, np.random.default_rng(8))
    assert bad.demoted("r")
    bad.unlearn_one(RuleTrial("r", "tip", "other", 0.55), 1.0)
    assert bad.demoted("r") and bad.stats["r"].n == 99
