"""The predictive-sd bonus (``noise_sd``) and per-arm change detection (``change_z``): hand-computed scores,
River's ``LinUCBDisjoint`` arithmetic, a reset when an arm's reward moves and none while it stays, exact
unlearning across a reset, checkpoints, and exact probabilities that sum to 1 whatever the detector did."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.exploration import Decider, EpsilonGreedy
from bandits.policies import MIN_DETECT, LinUCB, build_policy, policy_from_state


def test_predictive_bonus_by_hand() -> None:
    p = LinUCB(2, 2, alpha=1.0, ridge=1.0, noise_sd=1.0)
    x = np.array([0.0, 2.0])
    # nothing learned: mean 0, x'A^-1x = 4, bonus sqrt(1 + 4) - 1
    assert p.score_list(x, [0, 1]) == pytest.approx([math.sqrt(5) - 1] * 2, abs=1e-15)
    p.learn_one(np.array([0.0, 1.0]), 0, 1.0)
    # arm 0: A = diag(1, 2), b = (0, 1): theta = (0, 0.5), mean 1, x'A^-1x = 4 / 2 = 2
    assert p.score_list(x, [0])[0] == pytest.approx(1.0 + math.sqrt(3.0) - 1.0, abs=1e-15)
    assert p.scores(x, [0])[0] == pytest.approx(math.sqrt(3.0), abs=1e-15)
    # alpha scales only the bonus; noise_sd = 0 is the classic alpha * sqrt(x'A^-1x)
    assert LinUCB(1, 2, alpha=0.5, noise_sd=2.0).score_list(x, [0])[0] == pytest.approx(0.5 * (math.sqrt(8) - 2))
    assert LinUCB(1, 2, alpha=0.5).score_list(x, [0])[0] == pytest.approx(1.0)
    assert p.version == "linucb(alpha=1,ridge=1,noise_sd=1,k=2,d=2)"
    with pytest.raises(ValueError, match="noise_sd"):
        LinUCB(2, 2, noise_sd=-1.0)


def test_predictive_bonus_is_rivers_linucb() -> None:
    """With alpha = noise_sd = ridge = 1 the score is River's ``mu + sigma`` minus 1 (River's noise sd)."""
    from river import linear_model

    k, d = 3, 4
    ours = LinUCB(k, d, alpha=1.0, ridge=1.0, noise_sd=1.0)
    river = [linear_model.BayesianLinearRegression(alpha=1.0, beta=1.0) for _ in range(k)]
    rng = np.random.default_rng(3)
    for _ in range(60):
        x = rng.normal(size=d)
        ctx = {f"f{i}": v for i, v in enumerate(x.tolist())}
        theirs = []
        for m in river:
            dist = m.predict_one(ctx, with_dist=True)
            theirs.append(dist.mu + dist.sigma)
        assert ours.score_list(x, list(range(k))) == pytest.approx([v - 1.0 for v in theirs], abs=1e-9)
        arm, r = int(rng.integers(k)), float(rng.random() < 0.4)
        ours.learn_one(x, arm, r)
        river[arm].learn_one(ctx, r)


def _stream(p: LinUCB, rate: float, n: int, rng: np.random.Generator, t0: int = 0) -> None:
    for i in range(n):
        p.learn_one(np.array([1.0, rng.normal()]), 0, float(rng.random() < rate), t=float(t0 + i))


def test_a_stationary_arm_is_never_reset_and_a_moved_one_is_at_once() -> None:
    rng = np.random.default_rng(0)
    p = LinUCB(1, 2, alpha=1.0, noise_sd=1.0, change_z=5.0, change_window=500.0)
    _stream(p, 0.3, 20_000, rng)
    assert p.resets.tolist() == [0]
    assert p.predict_one(np.array([1.0, 0.0]), 0) == pytest.approx(0.3, abs=0.02)
    _stream(p, 0.8, 300, rng, t0=20_000)  # the arm's success rate moves from 0.3 to 0.8
    assert p.resets.tolist() == [1]
    # what it learned after the reset is only the new rate's
    assert p.predict_one(np.array([1.0, 0.0]), 0) == pytest.approx(0.8, abs=0.15)
    assert p.version == "linucb(alpha=1,ridge=1,noise_sd=1,change_z=5,change_window=500,k=1,d=2)"


@pytest.mark.parametrize("window", [100.0, 200.0])
@pytest.mark.parametrize("seed", range(4))
def test_a_sparse_arm_is_never_reset_and_a_moved_one_is_soon(seed: int, window: float) -> None:
    """At a 3 % success rate long runs of failures are common (every residual about -0.03, so the window's
    realised variance shrinks with the run); they must not look like a change, while a move from 3 % to 30 %
    is caught within a few hundred observations."""
    rng = np.random.default_rng(seed)
    p = LinUCB(1, 2, alpha=1.0, noise_sd=1.0, change_z=5.0, change_window=window)
    _stream(p, 0.03, 20_000, rng)
    assert p.resets.tolist() == [0]
    t = 20_000
    while p.resets[0] == 0 and t < 20_400:
        p.learn_one(np.array([1.0, rng.normal()]), 0, float(rng.random() < 0.3), t=float(t))
        t += 1
    assert p.resets.tolist() == [1], "a move from 3 % to 30 % went unnoticed for 400 observations"


def test_a_detector_saved_without_its_variance_memory_loads() -> None:
    rng = np.random.default_rng(4)
    a = LinUCB(1, 2, alpha=1.0, noise_sd=1.0, change_z=5.0, change_window=100.0)
    _stream(a, 0.2, 300, rng)
    state = a.to_state()
    state["detector"] = state["detector"][:, :3]
    b = policy_from_state(state)
    # the missing memory is the window's own variance: the test starts where Q alone had it
    assert np.array_equal(b.to_state()["detector"][:, :3], a.to_state()["detector"][:, :3])
    _stream(b, 0.9, 200, rng, t0=300)
    assert b.resets.tolist() == [1]


def test_a_reset_drops_exactly_what_came_before_it() -> None:
    """After a reset the arm equals the prior plus what was learned after it; an observation of a time before
    the reset (a late reward) weighs 0, and unlearning one from before the reset changes nothing but counts."""
    rng = np.random.default_rng(1)
    p = LinUCB(2, 2, alpha=1.0, noise_sd=1.0, change_z=4.0, change_window=100.0)
    _stream(p, 0.1, 500, rng)
    t = 500
    while p.resets[0] == 0:
        p.learn_one(np.array([1.0, 0.0]), 0, 1.0, t=float(t))
        t += 1
    assert np.array_equal(p.A(0), np.eye(2)) and np.array_equal(p.theta(0), np.zeros(2))
    after = [np.array([1.0, v]) for v in (0.5, -1.0, 2.0)]
    for i, x in enumerate(after):
        p.learn_one(x, 0, 1.0, t=float(t + i))
    expected_A = np.eye(2) + sum(np.outer(x, x) for x in after)
    assert np.allclose(p.A(0), expected_A, atol=1e-12)
    n = p.n_updates
    p.learn_one(np.array([1.0, 3.0]), 0, 1.0, t=10.0)  # a late reward of a decision made before the reset
    p.unlearn_one(np.array([1.0, 0.3]), 0, 0.0, t=5.0)  # an erased person's observation from before it
    assert p.n_updates == n and np.allclose(p.A(0), expected_A, atol=1e-12)
    p.unlearn_one(after[1], 0, 1.0, t=float(t + 1))
    assert np.allclose(p.A(0), expected_A - np.outer(after[1], after[1]), atol=1e-12)
    assert np.array_equal(p.A(1), np.eye(2))  # the other arm is untouched


def test_checkpoint_keeps_the_detector() -> None:
    rng = np.random.default_rng(2)
    a = LinUCB(1, 2, alpha=1.0, noise_sd=1.0, change_z=4.0, change_window=200.0)
    _stream(a, 0.2, 400, rng)
    b = policy_from_state(a.to_state())
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    _stream(a, 0.9, 300, rng_a, t0=400)
    _stream(b, 0.9, 300, rng_b, t0=400)
    assert a.resets.tolist() == b.resets.tolist() == [1]
    assert np.array_equal(a.A(0), b.A(0)) and np.array_equal(a.theta(0), b.theta(0))
    old = {k: v for k, v in a.to_state().items() if k not in ("latest", "reset_at", "detector", "resets")}
    assert policy_from_state(old).resets.tolist() == [0]  # a state saved before change detection loads


def test_without_times_nothing_is_tested_or_dropped() -> None:
    p = build_policy("ridge", 1, 1, change_z=3.0, change_window=50.0)
    for i in range(2 * MIN_DETECT):
        p.learn_one(np.array([1.0]), 0, float(i >= MIN_DETECT))
    assert p.resets.tolist() == [0] and p.counts.tolist() == [2 * MIN_DETECT]
    with pytest.raises(ValueError, match="change_z"):
        LinUCB(1, 1, change_z=-1.0)
    with pytest.raises(ValueError, match="change_window"):
        LinUCB(1, 1, change_z=1.0, change_window=0.5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), algorithm=st.sampled_from(["linucb", "lints", "ridge"]),
       switch=st.integers(0, 400))
def test_probabilities_are_exact_and_sum_to_one_through_resets(seed, k, algorithm, switch) -> None:
    """Whatever the detector does, every decision's probabilities sum to 1, are the exploration's function
    of the scores, and keep the floor; the chosen arm's probability is the one logged."""
    d = 3
    policy = build_policy(algorithm, k, d, alpha=1.0, noise_sd=1.0, change_z=3.0, change_window=50.0, seed=seed)
    decider = Decider(policy, EpsilonGreedy(0.1, 0.2), seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(600):
        x = np.append(rng.normal(size=d - 1), 1.0)
        c = decider.decide(x, list(range(k)), rng)
        p = list(c.probabilities.values())
        assert math.isclose(sum(p), 1.0, abs_tol=1e-12) and min(p) >= 0.1 / k - 1e-15
        assert c.probability == c.probabilities[c.arm]
        rate = 0.2 + 0.6 * ((c.arm + (i >= switch)) % 2)
        decider.learn_one(x, c.arm, float(rng.random() < rate), float(i))
