"""ClusterLinUCB: the cluster map recovers the simulator's hidden types, the policy's probabilities are exact and
floored, it is deterministic, its state round-trips, and unlearning removes an observation exactly."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.exploration import Decider, EpsilonGreedy
from bandits.latent import ClusterLinUCB, fit_cluster_map
from bandits.policies import build_policy, policy_from_state
from bandits.simulator import OnboardingSimulator


def _stream(n: int, k: int = 6, seed: int = 0) -> list[tuple[np.ndarray, int, float, float]]:
    """``n`` observations of the simulator's users (d = 16), uniform steps, their rewards and times."""
    sim = OnboardingSimulator(k, 16, 5, seed=seed)
    g = np.random.default_rng([seed, 3])
    x, types = sim.arrivals(n, g)
    arms = g.integers(k, size=n)
    rewards = (g.random(n) < sim.success_probs[types, arms]).astype(float)
    return [(x[i], int(arms[i]), float(rewards[i]), 1000.0 * i) for i in range(n)]


def _learned(stream, **kw) -> ClusterLinUCB:
    p = ClusterLinUCB(6, 16, **kw)
    for obs in stream:
        p.learn_one(*obs)
    return p


def test_map_recovers_the_hidden_types():
    """Its clusters are the types as well as the context can tell them: the component of each context is the
    type that the exact posterior picks, for almost every user (the posterior itself is right for about 90 %)."""
    sim = OnboardingSimulator(10, 16, 5, seed=1)
    x, _ = sim.arrivals(1000, np.random.default_rng(5))
    m = fit_cluster_map(x, 5, seed=0)
    post = m.memberships(x)
    assert post.shape == (1000, 5) and np.allclose(post.sum(axis=1), 1.0) and (post >= 0).all()
    assert m.scale[-1] == 0.0  # the constant bias column is left out
    best = sim.type_posterior(x).argmax(axis=1)
    table = np.zeros((5, 5))
    np.add.at(table, (best, post.argmax(axis=1)), 1)
    assert table.max(axis=1).sum() / 1000 > 0.95 and table.max(axis=0).sum() / 1000 > 0.95


def test_memberships_make_a_linear_model_reach_the_context_oracle():
    """The reason for the policy: per-step least squares on the memberships of a map fitted on 1,000 contexts gets
    within 1.5 % of the context oracle's reward (on x alone it stays near 0.96 of it, python -m bench.model_ceilings)."""
    sim = OnboardingSimulator(10, 16, 5, seed=0)
    g = np.random.default_rng(9)
    x, types = sim.arrivals(20_000, g)
    a = g.integers(10, size=20_000)
    y = (g.random(20_000) < sim.success_probs[types, a]).astype(float)
    m = fit_cluster_map(x[:1000], 5, seed=0)
    f = m.memberships(x)
    w = np.stack([np.linalg.lstsq(f[a == k], y[a == k], rcond=None)[0] for k in range(10)])
    xt, _ = sim.arrivals(20_000, g)
    expected = sim.type_posterior(xt) @ sim.success_probs
    chosen = expected[np.arange(20_000), np.argmax(m.memberships(xt) @ w.T, axis=1)]
    assert chosen.mean() / expected.max(axis=1).mean() > 0.985


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 160), epsilon=st.floats(0.0, 0.5), seed=st.integers(0, 2**16),
       eligible=st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
def test_probabilities_are_exact_floored_and_sum_to_one(n, epsilon, seed, eligible):
    policy = ClusterLinUCB(6, 16, warmup=60)
    for obs in _stream(n, seed=seed % 7):
        policy.learn_one(*obs)
    exploration = EpsilonGreedy(epsilon)
    decider = Decider(policy, exploration, seed=seed)
    x = _stream(1, seed=seed % 7 + 100)[0][0]
    c = decider.decide(x, eligible)
    probs = list(c.probabilities.values())
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    if len(eligible) > 1:
        assert min(probs) >= epsilon / len(eligible) - 1e-12
        # the logged probability is the exploration's of this context's scores: recomputed, the same numbers
        again = exploration.probabilities_list(policy.score_list(x, eligible))
        assert probs == again
    assert c.probability == c.probabilities[c.arm]


def test_is_deterministic_and_state_round_trips_before_and_after_the_fit():
    stream = _stream(400)
    x = _stream(1, seed=50)[0][0]
    for cut in (100, 400):  # before the fit (warmup 200) and after it
        a = _learned(stream[:cut], warmup=200)
        b = _learned(stream[:cut], warmup=200)
        assert a.score_list(x, list(range(6))) == b.score_list(x, list(range(6)))
        assert (a.map is None) == (cut < 200)
        restored = policy_from_state(a.to_state())
        copied = pickle.loads(pickle.dumps(a))
        for p in (restored, copied):
            assert p.version == a.version and p.n_updates == a.n_updates
            assert p.score_list(x, list(range(6))) == a.score_list(x, list(range(6)))
        for obs in _stream(150, seed=3):  # and they keep learning the same way (crossing the fit at cut 100)
            a.learn_one(*obs)
            restored.learn_one(*obs)
        assert restored.score_list(x, list(range(6))) == a.score_list(x, list(range(6)))


@pytest.mark.parametrize("fitted", [False, True])
def test_unlearning_an_observation_equals_never_learning_it(fitted):
    stream = _stream(500)
    warmup = 200 if fitted else 1000
    victim = 300  # after the fit when fitted (the map is fitted on the first 200 either way)
    full = _learned(stream, warmup=warmup)
    full.unlearn_one(*stream[victim])
    without = _learned(stream[:victim] + stream[victim + 1:], warmup=warmup)
    assert (full.map is not None) == fitted
    assert full.n_updates == without.n_updates == 499
    for x, *_ in _stream(20, seed=9):
        assert np.allclose(full.scores(x), without.scores(x), rtol=1e-9, atol=1e-12)


def test_unlearning_an_observation_learned_before_the_fit_after_it():
    """An observation of the warm-up is relearned on its memberships at the fit, so it can be unlearned after."""
    stream = _stream(300)
    p = _learned(stream, warmup=200)
    before = p.inner.to_state()["b"].copy()
    p.unlearn_one(*stream[10])
    x, arm, r, _ = stream[10]
    assert np.allclose(before[arm] - p.inner.to_state()["b"][arm], r * p.map.memberships(x))


def test_unlearning_what_was_never_learned_is_an_error_before_the_fit():
    p = _learned(_stream(50), warmup=200)
    x, arm, r, t = _stream(1, seed=40)[0]
    with pytest.raises(ValueError, match="no such observation"):
        p.unlearn_one(x, arm, r, t)


def test_build_policy_and_bad_parameters():
    p = build_policy("cluster_linucb", 4, 16, n_clusters=3, warmup=50)
    assert isinstance(p, ClusterLinUCB) and p.n_clusters == 3 and p.version.startswith("cluster_linucb(n_clusters=3")
    with pytest.raises(ValueError, match="n_clusters"):
        ClusterLinUCB(4, 16, n_clusters=0)
    with pytest.raises(ValueError, match="warmup"):
        ClusterLinUCB(4, 16, n_clusters=5, warmup=3)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        ClusterLinUCB(4, 16).scores(np.zeros(5))
