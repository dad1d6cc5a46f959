"""Reward models for the direct method and doubly robust estimation: one ridge regression per step on the
context features, with an intercept per step that is never penalised, fitted in closed form (one small
``d x d`` solve per step, batched in numpy, no per-row loop).

Why the intercept is free and the penalty small: a ridge penalty pulls a step's predictions toward the
penalised value, and hardest for the steps the logger rarely played, which are the ones a better target
policy moves to; with ``l2 = 1`` on one-hot contexts the direct method underestimated every target. Here
the intercept (the step's mean reward) is not penalised and ``l2`` defaults to ``1e-3``, in units of one
row whose feature equals 1, so a context cell seen once keeps ~99.9 % of its own evidence; the penalty
is only there to make collinear features (a bias column, one-hots that sum to 1) solvable. A step with no
training rows is predicted at the weighted mean reward of all training rows (never 0).

Rows can carry weights, also a batch of weight vectors ``(B, n)`` fitted at once: that is how the
bootstrap refits the model in every replicate (multinomial counts as weights) without a Python loop
over replicates. :meth:`RidgeRewardModel.cross_fit` predicts each row with the model fitted on the other
folds (cross-fitting), the same way for the point estimate and for every replicate.

>>> x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
>>> m = RidgeRewardModel(n_actions=2, l2=1e-9).fit(x, np.array([0, 0, 1, 1]), np.array([0.0, 1.0, 1.0, 1.0]))
>>> np.round(m.predict(x), 3).tolist()
[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def fold_assignment(n_rows: int, n_folds: int, random_state: int | np.random.Generator | None = None) -> np.ndarray:
    """A random fold in ``[0, n_folds)`` for each of ``n_rows`` rows (all 0 when ``n_folds <= 1``).

    >>> fold_assignment(4, 1).tolist()
    [0, 0, 0, 0]
    """
    if n_folds <= 1:
        return np.zeros(n_rows, dtype=np.intp)
    return np.random.default_rng(random_state).integers(n_folds, size=n_rows).astype(np.intp)


@dataclass
class RidgeRewardModel:
    """``q(x, a) = x . w_a + b_a`` with, over the (weighted) rows of step ``a``, the ridge solution that
    penalises ``w_a`` by ``l2`` and leaves the intercept ``b_a`` free. Predictions are clipped to ``clip``
    (e.g. ``(0, 1)`` for success rewards) when given.

    >>> m = RidgeRewardModel(n_actions=3).fit(np.zeros((3, 1)), np.array([0, 0, 1]), np.array([1.0, 0.0, 1.0]))
    >>> m.predict(np.zeros((1, 1))).round(3).tolist()  # step 2 was never logged: the mean of all rows
    [[0.5, 1.0, 0.667]]
    """

    n_actions: int
    l2: float = 1e-3
    clip: tuple[float, float] | None = None
    coef_: np.ndarray | None = field(default=None, init=False, repr=False)  # (n_actions, d + 1), intercept last

    def __post_init__(self) -> None:
        if self.n_actions < 1:
            raise ValueError(f"n_actions must be >= 1 (got {self.n_actions})")
        if not self.l2 > 0:
            raise ValueError(f"l2 must be > 0 (got {self.l2})")
        if self.clip is not None and not self.clip[0] <= self.clip[1]:
            raise ValueError(f"clip must be (low, high) with low <= high (got {self.clip})")

    # ------------------------------------------------------------------------------------ inputs
    def _inputs(self, context: np.ndarray, action: np.ndarray, reward: np.ndarray,
                sample_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = _design(context)
        n = x.shape[0]
        a = np.asarray(action)
        r = np.asarray(reward, dtype=np.float64)
        if a.shape != (n,) or r.shape != (n,):
            raise ValueError(f"context must be (n, d) with action and reward of shape (n,) (got {x.shape[0]} rows, "
                             f"action {a.shape}, reward {r.shape})")
        a = a.astype(np.intp, copy=False)
        if a.size and (a.min() < 0 or a.max() >= self.n_actions):
            raise ValueError(f"action must be indices in [0, {self.n_actions - 1}]")
        w = np.ones((1, n)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.ndim == 1:
            w = w[None, :]
        if w.ndim != 2 or w.shape[1] != n or not (w >= 0).all():
            raise ValueError(f"sample_weight must be non-negative, (n,) or (B, n) with n = {n} (got {w.shape})")
        return x, a, r, w

    # --------------------------------------------------------------------------------- fit/predict
    def fit(self, context: np.ndarray, action: np.ndarray, reward: np.ndarray,
            sample_weight: np.ndarray | None = None) -> RidgeRewardModel:
        """Fit every step's regression on the (weighted) rows; returns self."""
        x, a, r, w = self._inputs(context, action, reward, sample_weight)
        if w.shape[0] != 1:
            raise ValueError("fit takes one weight vector (n,); cross_fit takes a batch (B, n)")
        coef, fallback, empty = self._solve(*_sums(x, a, r, w, np.zeros(x.shape[0], dtype=np.intp), 1, self.n_actions))
        c = coef[0, 0]
        c[empty[0, 0]] = 0.0
        c[empty[0, 0], -1] = fallback[0, 0]
        self.coef_ = c
        return self

    def predict(self, context: np.ndarray) -> np.ndarray:
        """Estimated reward of every step for every row: ``(n, n_actions)``."""
        if self.coef_ is None:
            raise ValueError("the reward model is not fitted yet (call fit first)")
        return self._clip(_design(context) @ self.coef_.T)

    def cross_fit(self, context: np.ndarray, action: np.ndarray, reward: np.ndarray, fold: np.ndarray,
                  sample_weight: np.ndarray | None = None) -> np.ndarray:
        """Each row predicted by the model fitted on the rows of the *other* folds (``fold``: ints in
        ``[0, F)``; with a single fold, in-sample). ``sample_weight`` ``(n,)`` gives ``(n, n_actions)``;
        a batch ``(B, n)`` gives ``(B, n, n_actions)``, one weighted fit per weight vector."""
        x, a, r, w = self._inputs(context, action, reward, sample_weight)
        f = np.asarray(fold, dtype=np.intp)
        if f.shape != (x.shape[0],) or (f.size and f.min() < 0):
            raise ValueError(f"fold must be non-negative fold numbers of shape ({x.shape[0]},) (got {f.shape})")
        n_folds = int(f.max()) + 1 if f.size else 1
        gram, rhs, count, r_sum, r_count = _sums(x, a, r, w, f, n_folds, self.n_actions)
        if n_folds > 1:  # train on the other folds: the total minus the fold's own sums
            gram, rhs, count = (s.sum(axis=1, keepdims=True) - s for s in (gram, rhs, count))
            r_sum, r_count = (s.sum(axis=1, keepdims=True) - s for s in (r_sum, r_count))
        coef, fallback, empty = self._solve(gram, rhs, count, r_sum, r_count)
        out = np.empty((w.shape[0], x.shape[0], self.n_actions))
        for k in range(n_folds):
            rows = np.flatnonzero(f == k)
            q = np.matmul(x[rows], coef[:, k].transpose(0, 2, 1))  # (B, rows, K)
            if empty[:, k].any():
                q = np.where(empty[:, k, None, :], fallback[:, k, None, None], q)
            out[:, rows] = q
        out = self._clip(out)
        return out[0] if sample_weight is None or np.ndim(sample_weight) == 1 else out

    def fit_predict(self, context: np.ndarray, action: np.ndarray, reward: np.ndarray, n_folds: int = 1,
                    random_state: int | np.random.Generator | None = None) -> np.ndarray:
        """Predictions ``(n, n_actions)``; with ``n_folds > 1`` cross-fitted on random folds (each row
        predicted by a model that never saw it, which keeps doubly robust estimates honest). The model is
        then fitted on every row."""
        fold = fold_assignment(np.asarray(reward).shape[0], n_folds, random_state)
        out = self.cross_fit(context, action, reward, fold)
        self.fit(context, action, reward)
        return out

    # ---------------------------------------------------------------------------------- internals
    def _solve(self, gram: np.ndarray, rhs: np.ndarray, count: np.ndarray, r_sum: np.ndarray,
               r_count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coefficients ``(B, F, K, d + 1)``, the fallback prediction ``(B, F)`` and which steps had no
        training weight ``(B, F, K)``."""
        d1 = gram.shape[-1]
        penalty = np.full(d1, self.l2)
        penalty[-1] = 0.0  # the intercept is free
        empty = count <= 0
        coef = np.zeros(rhs.shape)
        full = ~empty  # only steps with training rows are solved; the others get the fallback
        coef[full] = np.linalg.solve(gram[full] + np.diag(penalty), rhs[full][..., None])[..., 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            fallback = np.where(r_count > 0, r_sum / np.where(r_count > 0, r_count, 1.0), 0.0)
        if self.clip is not None:
            fallback = np.where(r_count > 0, fallback, (self.clip[0] + self.clip[1]) / 2)
        return coef, fallback, empty

    def _clip(self, q: np.ndarray) -> np.ndarray:
        if self.clip is not None:
            np.clip(q, self.clip[0], self.clip[1], out=q)
        return q


def _design(context: np.ndarray) -> np.ndarray:
    x = np.asarray(context, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"context must be a 2-D array (n_rounds, n_features) (got shape {x.shape})")
    return np.hstack([x, np.ones((x.shape[0], 1))])


def _sums(x: np.ndarray, a: np.ndarray, r: np.ndarray, w: np.ndarray, fold: np.ndarray, n_folds: int,
          n_actions: int) -> tuple[np.ndarray, ...]:
    """Weighted sufficient statistics per (weight vector, fold, step): ``X^T W X`` ``(B, F, K, d, d)``,
    ``X^T W r`` ``(B, F, K, d)`` and the total weight ``(B, F, K)``; plus the weighted reward sum and weight
    of every fold over all steps ``(B, F)`` (for the fallback)."""
    b, d1 = w.shape[0], x.shape[1]
    gram = np.zeros((b, n_folds, n_actions, d1, d1))
    rhs = np.zeros((b, n_folds, n_actions, d1))
    count = np.zeros((b, n_folds, n_actions))
    group = fold * n_actions + a
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_folds * n_actions + 1))
    for g in np.flatnonzero(np.diff(bounds)).tolist():
        rows = order[bounds[g]:bounds[g + 1]]
        k, act = divmod(g, n_actions)
        xg, wg = x[rows], w[:, rows]
        gram[:, k, act] = np.matmul((wg[:, :, None] * xg[None]).transpose(0, 2, 1), xg)
        rhs[:, k, act] = (wg * r[rows]) @ xg
        count[:, k, act] = wg.sum(axis=1)
    r_sum = np.stack([(w[:, fold == k] * r[fold == k]).sum(axis=1) for k in range(n_folds)], axis=1)
    r_count = count.sum(axis=2)
    return gram, rhs, count, r_sum, r_count
