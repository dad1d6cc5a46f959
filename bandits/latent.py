"""LinUCB on soft cluster memberships: a contextual policy for users who come in a few hidden types.

When contexts come from a mixture of user types with isotropic noise (the simulator's users), the expected
reward of a step is ``sum_t P(t | x) p[t, step]``: linear in the type posterior ``P(. | x)``, not in ``x``, so
no per-step linear model on ``x`` reaches the context oracle (a least-squares fit on 200,000 uniform draws
stops at about 0.96 of it; ``python -m bench.model_ceilings``). :class:`ClusterLinUCB` fits an isotropic
Gaussian mixture (:class:`ClusterMap`) to the first ``warmup`` contexts it learns from, then scores each step
with a LinUCB on the ``n_clusters`` memberships of the context (the default LinUCB's bonus, change test and
exact unlearning), which needs only ``n_clusters`` numbers per step.

Until the map is fitted it is the default LinUCB on ``x``; at the fit the observations learned so far are
learned again on their memberships, in their order. The map is then frozen, so a context's memberships never
change and ``unlearn_one`` stays exact for the step statistics. What erasure does not undo: the map's centres
are averages over the ``warmup`` contexts it was fitted on, one of which may be the erased person's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from bandits.policies import ArmsLike, LinUCB

EM_ITERATIONS = 100  # EM passes of the map's fit (a 1,000 x 16 fit converges in far fewer)
EM_STARTS = 5  # k-means++ starts of the map's fit; the most likely fit is kept
MIN_SCALE = 1e-9  # a context column whose spread over the fit is below this is left out of the map


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """An isotropic Gaussian mixture over centred contexts: column ``mean``, ``scale`` (1, or 0 for a column
    constant over the fit, which is left out), ``centres`` (M, d), ``log_weights`` (M,) and one ``variance``
    shared by every component and column (so the log-posterior is linear in ``x``, as for the simulator's users).
    The distances are in the context's own units: the server's features are bounded and of comparable scale
    (``server/learn/features.py``); a column measured on a much larger scale would dominate them.
    :meth:`memberships` is the posterior of each component (the soft cluster of ``x``)."""

    mean: np.ndarray
    scale: np.ndarray
    centres: np.ndarray
    log_weights: np.ndarray
    variance: float

    def memberships(self, x: np.ndarray) -> np.ndarray:
        """``P(component | x)`` for one context ``x`` (d,) or each row of ``x`` (n, d): non-negative, summing
        to 1 per context."""
        z = np.atleast_2d((np.asarray(x, dtype=np.float64) - self.mean) * self.scale)
        sq = (z * z).sum(axis=1)[:, None] - 2.0 * z @ self.centres.T + (self.centres ** 2).sum(axis=1)[None, :]
        post = _softmax_rows(-0.5 * sq / self.variance + self.log_weights[None, :])
        return post[0] if np.ndim(x) == 1 else post

    def to_state(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "scale": self.scale.copy(), "centres": self.centres.copy(),
                "log_weights": self.log_weights.copy(), "variance": self.variance}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ClusterMap:
        return cls(*(np.asarray(state[k], dtype=np.float64) for k in ("mean", "scale", "centres", "log_weights")),
                   variance=float(state["variance"]))


def fit_cluster_map(contexts: np.ndarray, n_clusters: int, seed: int = 0, iterations: int = EM_ITERATIONS,
                    starts: int = EM_STARTS) -> ClusterMap:
    """Fit a :class:`ClusterMap` of ``n_clusters`` components to ``contexts`` (n, d) by EM from ``starts``
    k-means++ starts drawn with ``seed``, keeping the fit of highest likelihood (one start can settle with two
    components on one type; the same contexts and seed give the same map)."""
    x = np.asarray(contexts, dtype=np.float64)
    n = x.shape[0]
    if n < n_clusters:
        raise ValueError(f"need at least n_clusters = {n_clusters} contexts to fit the map (got {n})")
    mean = x.mean(axis=0)
    scale = (x.std(axis=0) > MIN_SCALE).astype(np.float64)
    z = (x - mean) * scale
    d_used = max(1, int((scale > 0).sum()))
    g = np.random.default_rng(seed)
    zz = (z * z).sum(axis=1)[:, None]
    best: tuple[float, np.ndarray, np.ndarray, float] | None = None
    for _ in range(starts):
        picks = [int(g.integers(n))]
        d2 = ((z - z[picks[0]]) ** 2).sum(axis=1)
        for _ in range(n_clusters - 1):
            total = d2.sum()
            nxt = int(g.choice(n, p=d2 / total)) if total > 0 else int(g.integers(n))
            picks.append(nxt)
            d2 = np.minimum(d2, ((z - z[nxt]) ** 2).sum(axis=1))
        centres = z[picks].copy()
        log_w = np.full(n_clusters, -math.log(n_clusters))
        var = 1.0
        for _ in range(iterations):
            sq = np.maximum(zz - 2.0 * z @ centres.T + (centres ** 2).sum(axis=1)[None, :], 0.0)
            resp = _softmax_rows(-0.5 * sq / var + log_w[None, :])
            nk = resp.sum(axis=0) + 1e-12
            centres = (resp.T @ z) / nk[:, None]
            log_w = np.log(nk / n)
            sq = np.maximum(zz - 2.0 * z @ centres.T + (centres ** 2).sum(axis=1)[None, :], 0.0)
            var = max(float((resp * sq).sum() / (n * d_used)), 1e-6)
        joint = -0.5 * sq / var + log_w[None, :]
        top = joint.max(axis=1)
        ll = float((top + np.log(np.exp(joint - top[:, None]).sum(axis=1))).sum() - 0.5 * n * d_used * math.log(var))
        if best is None or ll > best[0]:
            best = (ll, centres, log_w, var)
    assert best is not None
    return ClusterMap(mean, scale, best[1], best[2], best[3])


class ClusterLinUCB:
    """LinUCB (the default's bonus, ridge and change test) on the soft cluster memberships of the context.

    ``n_clusters`` components fitted on the first ``warmup`` contexts learned (module docstring); before that,
    the same LinUCB on ``x``. Scores are deterministic (a function of the learned state and ``x``), so the
    exploration on top of them gives exact probabilities as it does for LinUCB."""

    algorithm = "cluster_linucb"
    deterministic_scores = True

    def __init__(self, n_arms: int, n_features: int, n_clusters: int = 5, warmup: int = 1000, alpha: float = 1.0,
                 ridge: float = 1.0, noise_sd: float = 1.0, change_z: float = 5.0, change_window: float = 500.0,
                 seed: int = 0) -> None:
        if int(n_clusters) < 1 or int(n_clusters) != n_clusters:
            raise ValueError(f"n_clusters must be an integer >= 1 (got {n_clusters})")
        if int(warmup) < n_clusters or int(warmup) != warmup:
            raise ValueError(f"warmup must be an integer >= n_clusters = {n_clusters} (got {warmup})")
        self.n_arms = int(n_arms)
        self.n_features = int(n_features)
        self.n_clusters = int(n_clusters)
        self.warmup = int(warmup)
        self.seed = int(seed)
        self._linear_params = {"alpha": alpha, "ridge": ridge, "noise_sd": noise_sd, "change_z": change_z,
                               "change_window": change_window}
        self.linear: LinUCB | None = LinUCB(self.n_arms, self.n_features, **self._linear_params)
        self.inner: LinUCB | None = None  # the LinUCB on memberships, once the map is fitted
        self.map: ClusterMap | None = None
        self._pending: list[tuple[np.ndarray, int, float, float | None]] = []  # learned before the fit
        self.n_updates = 0

    # ------------------------------------------------------------------ inspection
    @property
    def version(self) -> str:
        """Algorithm and hyper-parameters, e.g. ``cluster_linucb(n_clusters=5,warmup=1000,alpha=1,...,k=10,d=16)``."""
        p = {"n_clusters": self.n_clusters, "warmup": self.warmup, **self._linear_params, "seed": self.seed}
        return f"{self.algorithm}({','.join(f'{k}={v:g}' for k, v in p.items())},k={self.n_arms},d={self.n_features})"

    @property
    def active(self) -> LinUCB:
        """The LinUCB that scores now: on the memberships once the map is fitted, else on ``x``."""
        return self.inner if self.inner is not None else self.linear  # type: ignore[return-value]

    @property
    def resets(self) -> np.ndarray:
        """Change-test resets of each step by the active LinUCB (a copy)."""
        return self.active.resets

    @property
    def clock(self) -> float | None:
        return self.active.clock

    def advance(self, t: float) -> None:
        self.active.advance(t)

    def _in(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"x must have shape ({self.n_features},) (got {x.shape})")
        return x if self.map is None else self.map.memberships(x)

    # ------------------------------------------------------------------ scoring
    def scores(self, x: np.ndarray, arms: ArmsLike = None, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.active.scores(self._in(x), arms, rng)

    def score_list(self, x: np.ndarray, arms: list[int], rng: np.random.Generator | None = None) -> list[float]:
        return self.active.score_list(self._in(x), arms, rng)

    def predict_one(self, x: np.ndarray, arm: int) -> float:
        return self.active.predict_one(self._in(x), arm)

    # ------------------------------------------------------------------ learning
    def learn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Learn one observation; the ``warmup``-th one fits the map and relearns every observation on it."""
        xin = self._in(x)
        self.active.learn_one(xin, arm, reward, t)
        self.n_updates += 1
        if self.map is None:
            self._pending.append((xin.copy(), int(arm), float(reward), t))
            if len(self._pending) >= self.warmup:
                self._fit()

    def _fit(self) -> None:
        self.map = fit_cluster_map(np.array([p[0] for p in self._pending]), self.n_clusters, self.seed)
        inner = LinUCB(self.n_arms, self.n_clusters, **self._linear_params)
        for x, arm, reward, t in self._pending:
            inner.learn_one(self.map.memberships(x), arm, reward, t)
        self.inner, self.linear, self._pending = inner, None, []

    def unlearn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Remove one learned observation (the same ``x``, ``arm``, ``reward``, ``t``) from the step statistics;
        ValueError when, before the fit, no such observation was learned."""
        xin = self._in(x)
        if self.map is None:
            for i, (px, pa, pr, pt) in enumerate(self._pending):
                if pa == arm and pr == reward and pt == t and np.array_equal(px, xin):
                    del self._pending[i]
                    break
            else:
                raise ValueError("no such observation was learned")
        self.active.unlearn_one(xin, arm, reward, t)
        self.n_updates -= 1

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Plain values that :meth:`from_state` turns back into this policy exactly."""
        n, d = len(self._pending), self.n_features
        return {
            "algorithm": self.algorithm, "n_arms": self.n_arms, "n_features": self.n_features,
            "params": {"n_clusters": self.n_clusters, "warmup": self.warmup, **self._linear_params,
                       "seed": self.seed},
            "n_updates": self.n_updates,
            "linear": None if self.linear is None else self.linear.to_state(),
            "inner": None if self.inner is None else self.inner.to_state(),
            "map": None if self.map is None else self.map.to_state(),
            "pending_x": np.array([p[0] for p in self._pending]).reshape(n, d),
            "pending_arm": np.array([p[1] for p in self._pending], dtype=np.int64),
            "pending_reward": np.array([p[2] for p in self._pending], dtype=np.float64),
            "pending_t": np.array([math.nan if p[3] is None else p[3] for p in self._pending], dtype=np.float64),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ClusterLinUCB:
        if state.get("algorithm") != cls.algorithm:
            raise ValueError(f"state is for algorithm {state.get('algorithm')!r}, not {cls.algorithm!r}")
        p = cls(int(state["n_arms"]), int(state["n_features"]), **dict(state["params"]))
        p.n_updates = int(state["n_updates"])
        p.linear = None if state["linear"] is None else LinUCB.from_state(state["linear"])
        p.inner = None if state["inner"] is None else LinUCB.from_state(state["inner"])
        p.map = None if state["map"] is None else ClusterMap.from_state(state["map"])
        ts = np.asarray(state["pending_t"], dtype=np.float64).tolist()
        p._pending = [(np.asarray(x, dtype=np.float64), int(a), float(r), None if math.isnan(t) else t)
                      for x, a, r, t in zip(state["pending_x"], state["pending_arm"], state["pending_reward"], ts)]
        return p

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return ClusterLinUCB.from_state, (self.to_state(),)
