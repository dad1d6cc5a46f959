"""Exploration schemes: exact probabilities, caps, sampling frequencies and the Decider."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bandits.exploration import Decider, EpsilonGreedy, Softmax, SquareCB, build_exploration, sample
from bandits.policies import LinUCB, LinearTS

scores_st = arrays(np.float64, st.integers(1, 12),
                   elements=st.floats(-5, 5, allow_nan=False, allow_infinity=False)
                   | st.sampled_from([0.0, 1.0, 0.5]))  # sampled values make ties likely
schemes_st = st.one_of(
    st.builds(EpsilonGreedy, st.floats(0, 1), st.floats(0, 1)),
    st.builds(SquareCB, st.floats(0.01, 1e4), st.floats(0, 1)),
    st.builds(Softmax, st.floats(0.01, 10), st.floats(0, 1)),
)


@settings(max_examples=400, deadline=None)
@given(scores=scores_st, scheme=schemes_st)
def test_probabilities_are_a_distribution_that_favours_the_best(scores, scheme):
    p = scheme.probabilities(scores)
    assert p.shape == scores.shape
    assert (p >= 0).all()
    assert abs(p.sum() - 1.0) <= 1e-12
    best = scores == scores.max()
    assert p[best].min() >= p.max() - 1e-15  # greedy arms get the most mass
    assert np.allclose(p[best], p[best][0], rtol=0, atol=1e-15)  # ties split evenly
    assert 1.0 - p[best].sum() <= scheme.max_exploration + 1e-12  # the guardrail cap


def test_epsilon_greedy_exact_values():
    p = EpsilonGreedy(0.1).probabilities(np.array([0.2, 0.9, 0.1, 0.3]))
    assert p.tolist() == pytest.approx([0.025, 0.925, 0.025, 0.025], abs=1e-15)
    ties = EpsilonGreedy(0.1).probabilities(np.array([0.9, 0.2, 0.9]))
    assert ties.tolist() == pytest.approx([0.1 / 3 + 0.45, 0.1 / 3, 0.1 / 3 + 0.45], abs=1e-15)


def test_epsilon_cap_scales_exploration_down():
    p = EpsilonGreedy(0.8, max_exploration=0.2).probabilities(np.array([1.0, 0.0, 0.0, 0.0, 0.0]))
    assert p[1:].sum() == pytest.approx(0.2)
    assert p[1:] == pytest.approx([0.05] * 4)
    assert p[0] == pytest.approx(0.8)


def test_squarecb_is_inverse_gap_weighting():
    s = np.array([0.5, 0.3, 0.1])
    p = SquareCB(gamma=10.0).probabilities(s)
    expected_1 = 1 / (3 + 10 * 0.2)
    expected_2 = 1 / (3 + 10 * 0.4)
    assert p[1] == pytest.approx(expected_1) and p[2] == pytest.approx(expected_2)
    assert p[0] == pytest.approx(1 - expected_1 - expected_2)


def test_zero_exploration_is_greedy_and_single_score_is_certain():
    assert EpsilonGreedy(0.0).probabilities(np.array([0.1, 0.4])).tolist() == [0.0, 1.0]
    assert SquareCB(5.0, max_exploration=0.0).probabilities(np.array([0.1, 0.4])).tolist() == [0.0, 1.0]
    assert EpsilonGreedy(0.5).probabilities(np.array([3.0])).tolist() == [1.0]


def test_bad_inputs_are_refused_with_names():
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(1.5)
    with pytest.raises(ValueError, match="gamma"):
        SquareCB(0.0)
    with pytest.raises(ValueError, match="finite"):
        EpsilonGreedy(0.1).probabilities(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="non-empty"):
        EpsilonGreedy(0.1).probabilities(np.array([]))
    with pytest.raises(ValueError, match="exploration must be one of"):
        build_exploration("boltzmann")


def test_sampled_frequencies_match_probabilities():
    p = SquareCB(gamma=8.0).probabilities(np.array([0.9, 0.7, 0.5, 0.2, 0.0, 0.6]))
    rng = np.random.default_rng(123)
    n = 200_000
    counts = np.bincount([sample(p, rng) for _ in range(n)], minlength=p.size)
    expected = n * p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5  # 99.9% quantile of chi-square with 5 degrees of freedom


def test_sample_never_returns_a_zero_probability_arm():
    rng = np.random.default_rng(0)
    p = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    assert set(sample(p, rng) for _ in range(5000)) == {1, 3}

    class Top:  # a generator that returns the largest double below 1
        def random(self):
            return np.nextafter(1.0, 0.0)

    assert sample(np.array([0.25, 0.25, 0.5, 0.0]), Top()) == 2


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), eligible=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
def test_decider_propensity_is_exactly_the_logged_probability(seed, eligible):
    rng = np.random.default_rng(seed)
    d = Decider(LinUCB(8, 4, alpha=0.5), SquareCB(20.0, max_exploration=0.3), seed=seed)
    for _ in range(20):
        x = rng.standard_normal(4)
        c = d.decide(x, eligible, rng)
        assert c.arm in eligible and set(c.probabilities) == set(eligible)
        assert c.probability == c.probabilities[c.arm]
        scores = np.array([c.scores[a] for a in eligible])
        again = d.exploration.probabilities(scores)
        assert c.probability == again[eligible.index(c.arm)]
        assert abs(sum(c.probabilities.values()) - 1.0) <= 1e-12
        d.learn_one(x, c.arm, float(rng.random() < 0.5))


def test_decider_one_arm_and_no_arm():
    d = Decider(LinearTS(3, 2, seed=1), EpsilonGreedy(0.1))
    c = d.decide(np.array([1.0, 0.0]), [2])
    assert (c.arm, c.probability, c.probabilities) == (2, 1.0, {2: 1.0})
    with pytest.raises(ValueError, match="eligible_arms"):
        d.decide(np.array([1.0, 0.0]), [])
    with pytest.raises(ValueError, match="repeat"):
        d.decide(np.array([1.0, 0.0]), [1, 1])
    with pytest.raises(ValueError, match="arms must be indices"):
        d.decide(np.array([1.0, 0.0]), [0, 5])


def test_decider_is_reproducible_with_a_seed():
    def run(seed):
        d = Decider(LinearTS(5, 3, seed=seed), EpsilonGreedy(0.2), seed=seed)
        rng = np.random.default_rng(9)
        out = []
        for _ in range(200):
            x = rng.standard_normal(3)
            c = d.decide(x, [0, 1, 2, 3, 4])
            d.learn_one(x, c.arm, float(x[0] > 0))
            out.append((c.arm, c.probability))
        return out

    assert run(4) == run(4)
    assert run(4) != run(5)


@settings(max_examples=300, deadline=None)
@given(scores=scores_st, epsilon=st.floats(0, 1), cap=st.floats(0, 1))
def test_epsilon_greedy_floor_is_exact_and_positive(scores, epsilon, cap):
    """Every step off the greedy ones gets exactly ``min(epsilon / K, cap / n_off)``: a positive floor
    whenever both are positive, so logged data supports evaluating any other policy offline."""
    p = EpsilonGreedy(epsilon, cap).probabilities(scores)
    off = scores != scores.max()
    if off.any():
        floor = min(epsilon / scores.size, cap / int(off.sum()))
        assert np.allclose(p[off], floor, rtol=1e-12, atol=0)
        assert (p[off] > 0).all() == (floor > 0)
    assert abs(p.sum() - 1.0) <= 1e-12 and p[off].sum() <= cap + 1e-12


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**16), eligible=st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True),
       boost_it=st.booleans(), ridge=st.booleans(), noise=st.sampled_from([0.0, 1.0]))
def test_reused_scores_give_the_same_choice_and_probabilities(seed, eligible, boost_it, ridge, noise):
    """A decision given :meth:`Decider.all_scores` of its context chooses exactly as one that scores afresh:
    same arm, same probabilities (exact propensities), same random draws taken."""
    from bandits.policies import RidgeGreedy

    data = np.random.default_rng(seed)
    policy = RidgeGreedy(6, 4) if ridge else LinUCB(6, 4, alpha=1.5, noise_sd=noise)
    for _ in range(30):
        policy.learn_one(data.normal(size=4), int(data.integers(6)), float(data.normal()))
    decider = Decider(policy, EpsilonGreedy(0.2))
    x = data.normal(size=4)
    scores = decider.all_scores(x)
    assert scores is not None and len(scores) == 6
    boosted = (eligible[0], 0.3) if boost_it else None
    for _ in range(3):  # reused for several decisions on the same context
        fresh = decider.decide(x, eligible, np.random.default_rng(seed), boosted)
        reused = decider.decide(x, eligible, np.random.default_rng(seed), boosted, scores)
        assert (reused.arm, reused.probability, reused.probabilities, reused.scores) == \
            (fresh.arm, fresh.probability, fresh.probabilities, fresh.scores)
        # the kept distribution and one draw of sample() (none for one arm) choose as decide() does
        arms, probs = decider.distribution(eligible, boosted, scores)
        assert dict(zip(arms, probs)) == fresh.probabilities
        i = sample(probs, np.random.default_rng(seed)) if len(probs) > 1 else 0
        assert (arms[i], probs[i]) == (fresh.arm, fresh.probability)


def test_thompson_scores_are_never_reused():
    assert Decider(LinearTS(3, 2), EpsilonGreedy(0.1)).all_scores(np.ones(2)) is None
    with pytest.raises(ValueError, match="indices"):
        Decider(LinUCB(3, 2), EpsilonGreedy(0.1)).decide(np.ones(2), [0, 3], scores=[0.0, 0.1, 0.2])
