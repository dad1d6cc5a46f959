"""A proposing rule's mixture (bandits/exploration.py ``boost``): a distribution, the rule's step at least
``beta``, the logged propensity exactly the chosen step's probability under the mixture, and the same random
draws as the unboosted decision."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.exploration import Decider, EpsilonGreedy, SquareCB, boost
from bandits.policies import LinUCB, LinearTS

probs_st = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12).filter(lambda w: sum(w) > 0) \
    .map(lambda w: [v / sum(w) for v in w])


@settings(max_examples=400, deadline=None)
@given(probs=probs_st, data=st.data(), beta=st.floats(0, 1))
def test_boost_is_the_mixture_and_a_distribution(probs, data, beta):
    i = data.draw(st.integers(0, len(probs) - 1))
    q = boost(probs, i, beta)
    assert len(q) == len(probs) and min(q) >= 0
    assert abs(sum(q) - 1.0) <= 1e-12
    assert q[i] >= beta - 1e-15  # the rule's step gets at least beta
    for j, (p, b) in enumerate(zip(probs, q)):
        assert b == pytest.approx((1 - beta) * p + (beta if j == i else 0.0), abs=1e-15)
        if j != i and beta < 1 and (p == 0 or p > 1e-300):  # (not a subnormal that underflows to 0)
            assert (b > 0) == (p > 0)  # a step the bandit could draw stays drawable, no other gets mass


def test_boost_exact_values_and_bad_inputs():
    assert boost([0.9, 0.05, 0.05], 2, 0.5) == [0.45, 0.025, 0.525]
    assert boost([1.0], 0, 0.3) == [1.0]
    assert boost([0.2, 0.8], 0, 0.0) == [0.2, 0.8]
    with pytest.raises(ValueError, match="beta"):
        boost([0.5, 0.5], 0, 1.5)
    with pytest.raises(ValueError, match="index"):
        boost([0.5, 0.5], 2, 0.5)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), eligible=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
       data=st.data(), beta=st.floats(0.01, 0.99), thompson=st.booleans())
def test_boosted_decider_logs_the_exact_probability_and_draws_like_the_bandit(seed, eligible, data, beta, thompson):
    rule_arm = data.draw(st.sampled_from(eligible))

    def decider() -> Decider:
        policy = LinearTS(8, 4, seed=seed) if thompson else LinUCB(8, 4, alpha=0.5)
        return Decider(policy, SquareCB(20.0, max_exploration=0.3), seed=seed)

    plain, boosted = decider(), decider()
    rng_plain, rng_boosted = np.random.default_rng(seed), np.random.default_rng(seed)
    xs = np.random.default_rng(seed + 1).standard_normal((15, 4))
    for x in xs:
        a = plain.decide(x, eligible, rng_plain)
        b = boosted.decide(x, eligible, rng_boosted, (rule_arm, beta))
        assert b.probability == b.probabilities[b.arm] > 0
        assert abs(sum(b.probabilities.values()) - 1.0) <= 1e-12
        for arm in eligible:  # the logged distribution is the mixture of the bandit's own
            expected = (1 - beta) * a.probabilities[arm] + (beta if arm == rule_arm else 0.0)
            assert b.probabilities[arm] == pytest.approx(expected, abs=1e-15)
        # the same random draws were taken (a restart that redraws a boosted decision unboosted stays in step)
        assert rng_plain.bit_generator.state == rng_boosted.bit_generator.state
        for d in (plain, boosted):
            d.learn_one(x, a.arm, 1.0)  # the same learning on both: their scores stay equal
    with pytest.raises(ValueError, match="not eligible"):
        boosted.decide(xs[0], eligible, rng_boosted, (max(eligible) + 1, beta))


def test_boosted_draws_follow_the_logged_probabilities():
    d = Decider(LinUCB(4, 2, alpha=0.1), EpsilonGreedy(0.1))
    x = np.array([1.0, 0.5])
    for _ in range(50):
        d.learn_one(x, 0, 1.0)  # arm 0 is the bandit's clear favourite
    rng = np.random.default_rng(5)
    n = 40_000
    picks = [d.decide(x, [0, 1, 2, 3], rng, (3, 0.4)) for _ in range(n)]
    p = np.array([picks[0].probabilities[a] for a in range(4)])
    assert p[3] == pytest.approx(0.4 + 0.6 * 0.025)
    counts = np.bincount([c.arm for c in picks], minlength=4)
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 16.3  # 99.9% quantile of chi-square with 3 degrees of freedom
    assert all(c.probability == p[c.arm] for c in picks)
