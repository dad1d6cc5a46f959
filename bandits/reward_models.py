"""Reward models for the direct method and doubly robust estimation: per-action ridge regression
on the context features, fitted in closed form (one ``d x d`` solve per action, no per-row loop).

>>> x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
>>> m = RidgeRewardModel(n_actions=2, l2=1e-9).fit(x, np.array([0, 0, 1, 1]), np.array([0.0, 1.0, 1.0, 1.0]))
>>> np.round(m.predict(x), 3).tolist()
[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]
"""
from __future__ import annotations

import numpy as np


class RidgeRewardModel:
    """``q(x, a) = x . w_a`` with ``w_a = (X_a^T X_a + l2 I)^{-1} X_a^T r_a`` over the rounds of action ``a``.

    With ``fit_intercept`` a constant feature is appended (its weight barely penalised), so contexts
    need no bias column. Predictions can be clipped to ``clip`` (e.g. ``(0, 1)`` for success rewards).
    """

    def __init__(self, n_actions: int, l2: float = 1.0, clip: tuple[float, float] | None = None,
                 fit_intercept: bool = True) -> None:
        if n_actions < 1:
            raise ValueError(f"n_actions must be >= 1 (got {n_actions})")
        if not l2 > 0:
            raise ValueError(f"l2 must be > 0 (got {l2})")
        self.n_actions = int(n_actions)
        self.l2 = float(l2)
        self.clip = clip
        self.fit_intercept = fit_intercept
        self.weights: np.ndarray | None = None  # (n_actions, d) after fit

    def fit(self, context: np.ndarray, action: np.ndarray, reward: np.ndarray) -> RidgeRewardModel:
        """Fit every action's ridge regression; returns self."""
        x = self._design(context)
        a = np.asarray(action, dtype=np.intp)
        r = np.asarray(reward, dtype=np.float64)
        if x.ndim != 2 or a.shape != (x.shape[0],) or r.shape != (x.shape[0],):
            raise ValueError("context must be (n, d) with action and reward of shape (n,)")
        if a.size and (a.min() < 0 or a.max() >= self.n_actions):
            raise ValueError(f"action must be indices in [0, {self.n_actions - 1}]")
        d = x.shape[1]
        w = np.zeros((self.n_actions, d))
        order = np.argsort(a, kind="stable")
        bounds = np.searchsorted(a[order], np.arange(self.n_actions + 1))
        eye = self.l2 * np.eye(d)
        if self.fit_intercept:
            eye[-1, -1] = self.l2 * 1e-6
        for k in range(self.n_actions):
            rows = order[bounds[k]:bounds[k + 1]]
            xa = x[rows]
            w[k] = np.linalg.solve(xa.T @ xa + eye, xa.T @ r[rows])
        self.weights = w
        return self

    def _design(self, context: np.ndarray) -> np.ndarray:
        x = np.asarray(context, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"context must be a 2-D array (n_rounds, n_features) (got shape {x.shape})")
        if self.fit_intercept:
            x = np.hstack([x, np.ones((x.shape[0], 1))])
        return x

    def predict(self, context: np.ndarray) -> np.ndarray:
        """Estimated reward of every action for every row: ``(n, n_actions)``."""
        if self.weights is None:
            raise ValueError("the reward model is not fitted yet (call fit first)")
        q = self._design(context) @ self.weights.T
        if self.clip is not None:
            np.clip(q, self.clip[0], self.clip[1], out=q)
        return q

    def fit_predict(self, context: np.ndarray, action: np.ndarray, reward: np.ndarray, n_folds: int = 1,
                    random_state: int | None = None) -> np.ndarray:
        """Predictions ``(n, n_actions)``; with ``n_folds > 1`` each row is predicted by a model fitted
        on the other folds (cross-fitting, which keeps doubly robust estimates honest)."""
        x = np.asarray(context, dtype=np.float64)
        if n_folds <= 1:
            return self.fit(x, action, reward).predict(x)
        a = np.asarray(action)
        r = np.asarray(reward)
        fold = np.random.default_rng(random_state).integers(n_folds, size=x.shape[0])
        out = np.empty((x.shape[0], self.n_actions))
        for f in range(n_folds):
            test = fold == f
            train = ~test
            out[test] = self.fit(x[train], a[train], r[train]).predict(x[test])
        self.fit(x, a, r)
        return out
