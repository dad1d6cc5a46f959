"""The DM/DR reward model: cell means on one-hot contexts are not shrunk (the bias that made DM
underestimate every target), a step never logged is predicted at the mean reward, weights are counts,
cross-fitting never lets a row see itself, and a batch of weight vectors equals one fit per vector."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.reward_models import RidgeRewardModel, fold_assignment

# Two user types as a one-hot context; step 0 logged 3 times for type 0 (rewards 1, 0, 1) and once for
# type 1 (reward 0); step 1 logged twice for type 1 (rewards 1, 1); step 2 never logged.
X = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
A = np.array([0, 0, 0, 0, 1, 1])
R = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])


def test_one_hot_cells_keep_their_own_mean():
    q = RidgeRewardModel(3).fit(X, A, R).predict(np.eye(2))
    # step 0: type 0 = 2/3, type 1 = 0 (a single row, which an l2 = 1 penalty pulled half way to the mean)
    np.testing.assert_allclose(q[:, 0], [2 / 3, 0.0], atol=2e-3)
    np.testing.assert_allclose(q[1, 1], 1.0, atol=2e-3)


def test_a_step_never_logged_is_predicted_at_the_mean_reward():
    q = RidgeRewardModel(3).fit(X, A, R).predict(np.eye(2))
    np.testing.assert_allclose(q[:, 2], R.mean())
    with_clip = RidgeRewardModel(3, clip=(0.0, 1.0)).fit(X, A, R).predict(np.eye(2))
    np.testing.assert_allclose(with_clip[:, 2], R.mean())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=6, max_size=6), st.integers(0, 2**32 - 1))
def test_weights_are_counts(counts, seed):
    """A row with weight c fits like the row repeated c times."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(6, 2))
    w = np.array(counts, dtype=float)
    weighted = RidgeRewardModel(3).fit(x, A, R, sample_weight=w).predict(x)
    rep = np.repeat(np.arange(6), counts)
    repeated = RidgeRewardModel(3).fit(x[rep], A[rep], R[rep]).predict(x)
    np.testing.assert_allclose(weighted, repeated, atol=1e-9)


def test_cross_fit_never_lets_a_row_see_itself():
    g = np.random.default_rng(0)
    n = 200
    x, a, r = g.normal(size=(n, 3)), g.integers(4, size=n), g.random(n)
    fold = fold_assignment(n, 2, 1)
    q = RidgeRewardModel(4).cross_fit(x, a, r, fold)
    r2 = r.copy()
    r2[fold == 0] = 10.0  # only fold 0 changes, so fold 0's own predictions must not
    q2 = RidgeRewardModel(4).cross_fit(x, a, r2, fold)
    np.testing.assert_allclose(q2[fold == 0], q[fold == 0], atol=1e-9)
    assert not np.allclose(q2[fold == 1], q[fold == 1])
    # one fold means in-sample: the same as fit + predict
    np.testing.assert_allclose(RidgeRewardModel(4).cross_fit(x, a, r, np.zeros(n, dtype=int)),
                               RidgeRewardModel(4).fit(x, a, r).predict(x), atol=1e-12)


def test_a_batch_of_weight_vectors_equals_one_fit_each():
    g = np.random.default_rng(1)
    n = 80
    x, a, r = g.normal(size=(n, 2)), g.integers(3, size=n), g.random(n)
    fold = fold_assignment(n, 3, 2)
    w = g.integers(0, 3, size=(5, n)).astype(float)
    batch = RidgeRewardModel(3, clip=(0.0, 1.0)).cross_fit(x, a, r, fold, sample_weight=w)
    assert batch.shape == (5, n, 3)
    for b in range(5):
        one = RidgeRewardModel(3, clip=(0.0, 1.0)).cross_fit(x, a, r, fold, sample_weight=w[b])
        np.testing.assert_allclose(batch[b], one, atol=1e-12)


def test_input_checks():
    with pytest.raises(ValueError, match="n_actions"):
        RidgeRewardModel(0)
    with pytest.raises(ValueError, match="l2"):
        RidgeRewardModel(2, l2=0.0)
    with pytest.raises(ValueError, match="action must be indices"):
        RidgeRewardModel(1).fit(X, A, R)
    with pytest.raises(ValueError, match="sample_weight"):
        RidgeRewardModel(3).fit(X, A, R, sample_weight=-np.ones(6))
    with pytest.raises(ValueError, match="not fitted"):
        RidgeRewardModel(3).predict(X)
