"""Linear policies: Sherman-Morrison matches direct inversion, they learn a known linear model,
and their state round-trips exactly."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.policies import LinearTS, LinUCB, Policy, RidgeGreedy, build_policy, policy_from_state


@pytest.mark.parametrize("cls", [LinUCB, LinearTS, RidgeGreedy])
def test_sherman_morrison_matches_inverse_after_many_updates(cls):
    k, d, ridge = 4, 12, 0.7
    p = cls(k, d, ridge=ridge)
    rng = np.random.default_rng(0)
    A = np.stack([ridge * np.eye(d)] * k)
    b = np.zeros((k, d))
    for _ in range(5000):
        x = rng.standard_normal(d) * rng.uniform(0.1, 3)
        a = int(rng.integers(k))
        r = float(rng.normal())
        p.learn_one(x, a, r)
        A[a] += np.outer(x, x)
        b[a] += r * x
    for a in range(k):
        inv = np.linalg.inv(A[a])
        assert np.allclose(p.A_inv(a), inv, rtol=1e-6, atol=1e-9)
        assert np.allclose(p.theta(a), np.linalg.solve(A[a], b[a]), rtol=1e-6, atol=1e-9)
    assert p.n_updates == 5000 and p.counts.sum() == 5000


@pytest.mark.parametrize("policy", [LinUCB(3, 5, alpha=0.1), LinearTS(3, 5, v=0.05, seed=2), RidgeGreedy(3, 5)])
def test_learns_a_known_linear_model(policy):
    rng = np.random.default_rng(1)
    true = rng.normal(size=(3, 5))
    for _ in range(3000):
        x = rng.normal(size=5)
        a = int(rng.integers(3))
        policy.learn_one(x, a, float(true[a] @ x + 0.1 * rng.normal()))
    for a in range(3):
        assert np.allclose(policy.theta(a), true[a], atol=0.03)
    x = rng.normal(size=5)
    assert policy.predict_one(x, 1) == pytest.approx(true[1] @ x, abs=0.15)
    hits = sum(int(np.argmax(policy.scores(x := rng.normal(size=5), None, rng)) == np.argmax(true @ x))
               for _ in range(200))
    assert hits >= 190


def test_linucb_bonus_shrinks_with_data_and_prefers_unexplored_arms():
    p = LinUCB(2, 2, alpha=1.0)
    x = np.array([1.0, 0.5])
    before = p.scores(x)
    for _ in range(30):
        p.learn_one(x, 0, 0.0)
    after = p.scores(x)
    assert after[0] < before[0] and after[1] == before[1]
    assert np.argmax(after) == 1


def test_scores_subset_in_given_order():
    p = LinUCB(5, 3)
    rng = np.random.default_rng(3)
    for _ in range(100):
        p.learn_one(rng.normal(size=3), int(rng.integers(5)), float(rng.random()))
    x = rng.normal(size=3)
    full = p.scores(x)
    assert p.scores(x, [4, 0, 2]).tolist() == [full[4], full[0], full[2]]


@pytest.mark.parametrize("algorithm", ["linucb", "lints", "ridge"])
def test_score_list_is_scores_as_a_list(algorithm):
    p = build_policy(algorithm, 5, 3, alpha=0.4, seed=3)
    rng = np.random.default_rng(4)
    for _ in range(100):
        p.learn_one(rng.normal(size=3), int(rng.integers(5)), float(rng.random()))
    x = rng.normal(size=3)
    q = policy_from_state(p.to_state())  # TS: the same draws from the same rng state
    assert p.score_list(x, [4, 0, 2]) == q.scores(x, [4, 0, 2]).tolist()
    assert p.score_list(x, []) == []
    with pytest.raises(ValueError, match="arms must be indices"):
        p.score_list(x, [0, 5])


@pytest.mark.parametrize("algorithm", ["linucb", "lints", "ridge"])
def test_state_round_trip_gives_identical_scores(algorithm):
    p = build_policy(algorithm, 6, 4, alpha=0.7, l2=2.0, seed=11)
    assert isinstance(p, Policy)
    rng = np.random.default_rng(5)
    for _ in range(500):
        p.learn_one(rng.normal(size=4), int(rng.integers(6)), float(rng.random()))
    state = pickle.loads(pickle.dumps(p.to_state()))  # plain values: survive a checkpoint
    q = policy_from_state(state)
    assert type(q) is type(p) and q.version == p.version and q.n_updates == p.n_updates == 500
    for _ in range(20):
        x = rng.normal(size=4)
        assert np.array_equal(q.scores(x), p.scores(x))  # TS: same rng state, same draws
        assert q.predict_one(x, 3) == p.predict_one(x, 3)
    x = rng.normal(size=4)
    p.learn_one(x, 2, 1.0)
    q.learn_one(x, 2, 1.0)
    assert np.array_equal(q.scores(x), p.scores(x))


def test_version_names_the_configuration():
    assert LinUCB(10, 23, alpha=1.5).version == "linucb(alpha=1.5,ridge=1,k=10,d=23)"
    assert LinUCB(10, 23, alpha=1.5).version != LinUCB(10, 23, alpha=1.0).version


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_bad_inputs_are_refused():
    p = LinUCB(3, 2)
    with pytest.raises(ValueError, match="shape"):
        p.learn_one(np.zeros(3), 0, 1.0)
    with pytest.raises(ValueError, match="arm must be"):
        p.learn_one(np.zeros(2), 3, 1.0)
    with pytest.raises(ValueError, match="reward must be finite"):
        p.learn_one(np.zeros(2), 0, float("nan"))
    with pytest.raises(ValueError, match="finite"):
        p.learn_one(np.array([np.inf, 0.0]), 0, 1.0)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        build_policy("ucb1", 3, 2)
    with pytest.raises(ValueError, match="not 'linucb'"):
        LinUCB.from_state(RidgeGreedy(3, 2).to_state())
    with pytest.raises(ValueError, match="ridge"):
        LinUCB(3, 2, ridge=0.0)
    assert p.n_updates == 0


@pytest.mark.parametrize("algorithm", ["linucb", "lints", "ridge"])
def test_pickled_and_deep_copied_policies_stay_consistent(algorithm):
    p = build_policy(algorithm, 4, 3, alpha=0.5, seed=2)
    rng = np.random.default_rng(6)
    for _ in range(50):
        p.learn_one(rng.normal(size=3), int(rng.integers(4)), float(rng.random()))
    before = p.to_state()
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        x = rng.normal(size=3)
        q.learn_one(x, 1, 1.0)  # the copy learns: its scores must be those of its own learned state
        rebuilt = policy_from_state(q.to_state())
        assert np.array_equal(q.scores(x), rebuilt.scores(x))
        assert q.predict_one(x, 1) == rebuilt.predict_one(x, 1) != policy_from_state(before).predict_one(x, 1)
    assert p.n_updates == 50 and np.array_equal(p.A_inv(1), before["A_inv"][1])  # the original did not move


@settings(max_examples=60, deadline=None)
@given(data=st.data(), algorithm=st.sampled_from(["linucb", "lints", "ridge"]))
def test_unlearning_equals_never_learning(data, algorithm):
    """Learn a random stream, unlearn a random subset of it in any order: the policy scores (to 1e-9) like one
    that learned only the rest, in the same order (an erased person's rewards leave no trace)."""
    k, d = 3, 4
    rows = data.draw(st.lists(st.tuples(
        st.lists(st.floats(-3, 3, allow_nan=False), min_size=d, max_size=d),
        st.integers(0, k - 1), st.sampled_from([0.0, 1.0, 0.25, -0.5])), min_size=1, max_size=40))
    erased = data.draw(st.sets(st.integers(0, len(rows) - 1)))
    order = data.draw(st.permutations(sorted(erased)))
    full, kept = build_policy(algorithm, k, d, seed=1), build_policy(algorithm, k, d, seed=1)
    for i, (x, arm, r) in enumerate(rows):
        full.learn_one(np.array(x), arm, r)
        if i not in erased:
            kept.learn_one(np.array(x), arm, r)
    for i in order:
        x, arm, r = rows[i]
        full.unlearn_one(np.array(x), arm, r)
    assert full.n_updates == kept.n_updates
    assert np.array_equal(full.counts, kept.counts)
    for arm in range(k):
        assert np.allclose(full.A(arm), kept.A(arm), rtol=0, atol=1e-9)
        assert np.allclose(full.A_inv(arm), kept.A_inv(arm), rtol=0, atol=1e-9)
        assert np.allclose(full.theta(arm), kept.theta(arm), rtol=0, atol=1e-9)
    probe = np.array(data.draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=d, max_size=d)))
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert np.allclose(full.scores(probe, rng=rng_a), kept.scores(probe, rng=rng_b), rtol=0, atol=1e-9)


def test_unlearning_refuses_an_arm_without_observations():
    p = LinUCB(n_arms=2, n_features=2)
    with pytest.raises(ValueError, match="no observation"):
        p.unlearn_one(np.array([1.0, 0.0]), 0, 1.0)
    with pytest.raises(ValueError):
        p.unlearn_one(np.array([np.nan, 0.0]), 0, 1.0)


def test_state_without_design_matrix_derives_it():
    p = LinUCB(n_arms=2, n_features=3)
    p.learn_one(np.array([1.0, 2.0, 0.5]), 1, 1.0)
    state = p.to_state()
    del state["A"]
    q = policy_from_state(state)
    assert np.allclose(q.A(1), p.A(1)) and np.allclose(q.A(0), np.eye(3))
    q.unlearn_one(np.array([1.0, 2.0, 0.5]), 1, 1.0)
    assert np.allclose(q.A_inv(1), np.eye(3))
