"""Off-policy estimators in the style of Open Bandit Pipeline: what a target policy would have
earned, estimated from a log of (action, propensity, reward) collected by another policy.

Every estimator has ``estimate_policy_value(reward, action, pscore, action_dist,
estimated_rewards=None) -> float`` and ``estimate_interval(..., alpha, n_bootstrap, random_state)
-> Interval``. ``action_dist`` is the target policy's probability matrix ``(n_rounds, n_actions)``
(OBP's ``(n, K, 1)`` works too) or, where the estimator allows it, just the target probability of
each logged action ``(n_rounds,)``. ``estimated_rewards`` ``(n_rounds, n_actions)`` comes from a
reward model (see :mod:`bandits.reward_models`).

Each estimate is a ratio of two sums of per-round terms, so the bootstrap resamples those sums
with numpy only: up to ``max_groups`` rounds are resampled directly; longer logs are first split at
random into ``max_groups`` groups whose sums are resampled (a group bootstrap, which for
independent rounds estimates the same sampling distribution; 1e6 rounds x 1000 replicates take
well under a second per estimator). ``estimated_rewards`` are held fixed in that bootstrap, so DM and
DR intervals leave out the reward model's own uncertainty (DR barely depends on it; DM's interval is
then too narrow). Pass ``context`` and ``reward_model`` (a :class:`bandits.reward_models.RidgeRewardModel`
or anything with its ``cross_fit``) to :meth:`DirectMethod.estimate_interval` or
:meth:`DoublyRobust.estimate_interval` to refit the model in every replicate instead, the same way as
for the point estimate: cross-fitted on ``fold`` (each row keeps its fold in every replicate, so a row
drawn twice never predicts itself), with the replicate's multinomial counts as row weights, a batch of
replicates per numpy call (meant for logs up to ~1e5 rounds).

Every full distribution (``action_dist`` ``(n, K)``, ``logging_dist``) must have rows that sum to 1; the
error names the first row that does not.

>>> r, a, p = np.array([1.0, 0.0, 1.0]), np.array([0, 1, 1]), np.array([0.5, 0.5, 0.5])
>>> pi = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
>>> IPS().estimate_policy_value(r, a, p, pi), SNIPS().estimate_policy_value(r, a, p, pi)
(1.3333333333333333, 0.6666666666666666)
>>> IPS().estimate_policy_value(r, a, p, np.array([[0.5, 0.4], [0.0, 1.0], [0.0, 1.0]]))
Traceback (most recent call last):
...
ValueError: action_dist row 0 sums to 0.9, not 1 (1 of 3 rows off by more than 1e-06)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MAX_GROUPS = 20_000
_CHUNK_CELLS = 4_000_000  # bootstrap index matrix cells generated at once (32 MB of int64)
ROW_SUM_TOLERANCE = 1e-6  # how far a distribution's row may sum from 1


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate and its ``1 - alpha`` percentile-bootstrap interval."""

    mean: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies within ``[low, high]``."""
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """Health of an importance-weighted estimate: effective sample size, weight extremes, how often
    the target gives the logged action zero probability, and human-readable warnings."""

    n_rounds: int
    ess: float
    max_weight: float
    mean_weight: float
    zero_support_share: float
    missing_support_share: float | None
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- inputs
def _as_dist(action_dist: np.ndarray, name: str = "action_dist") -> np.ndarray:
    d = np.asarray(action_dist, dtype=np.float64)
    if d.ndim == 3:
        if d.shape[2] != 1:
            raise ValueError(f"{name} with 3 dimensions must be (n, K, 1) (got {d.shape})")
        d = d[:, :, 0]
    if d.ndim not in (1, 2):
        raise ValueError(f"{name} must be (n, K), (n, K, 1) or (n,) (got shape {d.shape})")
    if not ((d >= 0) & (d <= 1)).all():
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    if d.ndim == 2:
        check_rows_sum_to_one(d, name)
    return d


def check_rows_sum_to_one(dist: np.ndarray, name: str = "action_dist") -> None:
    """Raise ``ValueError`` naming the first row of ``dist`` ``(n, K)`` whose probabilities do not sum to 1
    (within :data:`ROW_SUM_TOLERANCE`): a target or logging policy must put all its mass somewhere, or
    every weighted estimate is off by that row's missing (or extra) mass."""
    sums = np.asarray(dist, dtype=np.float64).sum(axis=1)
    bad = np.flatnonzero(~(np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} row {i} sums to {sums[i]:.6g}, not 1 ({bad.size} of {sums.size} rows off by "
                         f"more than {ROW_SUM_TOLERANCE:g})")


def target_probability(action_dist: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The target policy's probability of each logged action: ``action_dist[i, action[i]]`` for a
    matrix, or ``action_dist`` itself when it already is that vector ``(n,)``."""
    d = _as_dist(action_dist)
    a = np.asarray(action, dtype=np.intp)
    if d.ndim == 1:
        if d.shape != a.shape:
            raise ValueError(f"action_dist (n,) must match action's shape {a.shape} (got {d.shape})")
        return d
    if d.shape[0] != a.shape[0]:
        raise ValueError(f"action_dist must have one row per round ({a.shape[0]}) (got {d.shape[0]})")
    if a.size and (a.min() < 0 or a.max() >= d.shape[1]):
        raise ValueError(f"action must be indices in [0, {d.shape[1] - 1}]")
    return d[np.arange(a.shape[0]), a]


def _check_log(reward: np.ndarray, action: np.ndarray, pscore: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.asarray(reward, dtype=np.float64)
    a = np.asarray(action)
    p = np.asarray(pscore, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"reward must be a non-empty 1-D array (got shape {r.shape})")
    if a.shape != r.shape or p.shape != r.shape:
        raise ValueError(f"reward, action and pscore must have the same shape (got {r.shape}, {a.shape}, {p.shape})")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"action must hold integer action indices (got dtype {a.dtype})")
    if not np.isfinite(r).all():
        raise ValueError("reward must be finite")
    if not ((p > 0) & (p <= 1)).all():
        raise ValueError("pscore must be in (0, 1] (the logging probability of each logged action)")
    return r, a.astype(np.intp, copy=False), p


def _check_q(estimated_rewards: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if estimated_rewards is None:
        raise ValueError(f"{name} needs estimated_rewards (n_rounds, n_actions) from a reward model")
    q = np.asarray(estimated_rewards, dtype=np.float64)
    if q.ndim == 3 and q.shape[2] == 1:
        q = q[:, :, 0]
    if q.ndim != 2 or q.shape[0] != n:
        raise ValueError(f"estimated_rewards must be (n_rounds={n}, n_actions) (got {q.shape})")
    return q


def _full_dist(action_dist: np.ndarray, n: int, k: int, name: str) -> np.ndarray:
    d = _as_dist(action_dist)
    if d.ndim != 2 or d.shape != (n, k):
        raise ValueError(f"{name} needs the full action_dist (n_rounds={n}, n_actions={k}) (got {d.shape})")
    return d


# ------------------------------------------------------------------------------------- bootstrap
def bootstrap_ratio(num: np.ndarray, den: np.ndarray | None, n_bootstrap: int = 1000,
                    random_state: int | np.random.Generator | None = None,
                    max_groups: int | None = DEFAULT_MAX_GROUPS) -> np.ndarray:
    """Bootstrap replicates of ``sum(num) / sum(den)`` (``den`` None = counts), vectorised: rows,
    or random groups of rows when there are more than ``max_groups``. Replicates whose
    denominator is 0 are NaN."""
    rng = np.random.default_rng(random_state)
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    n = num.shape[0]
    if max_groups is not None and n > max_groups:
        g = rng.integers(max_groups, size=n)
        num = np.bincount(g, weights=num, minlength=max_groups)
        den = np.bincount(g, weights=den, minlength=max_groups)
        n = max_groups
    out = np.empty(n_bootstrap)
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_bootstrap, step):
        m = min(step, n_bootstrap - start)
        idx = rng.integers(n, size=(m, n))
        top = num[idx].sum(axis=1)
        bottom = den[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start:start + m] = np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), np.nan)
    return out


def _interval(point: float, replicates: np.ndarray, alpha: float) -> Interval:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")
    ok = replicates[np.isfinite(replicates)]
    if ok.size == 0:
        return Interval(point, math.nan, math.nan)
    low, high = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(low), float(high))


# ------------------------------------------------------------------------------------ estimators
class _Estimator:
    """Shared plumbing: subclasses give per-round numerator and denominator terms."""

    name = "estimator"

    def _terms(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
               estimated_rewards: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        raise TypeError(f"{type(self).__name__} does not define its terms")

    def _both(self, reward, action, pscore, action_dist, estimated_rewards):
        r, a, p = _check_log(reward, action, pscore)
        return self._terms(r, a, p, action_dist, estimated_rewards)

    def estimate_policy_value(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                              action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None) -> float:
        """The estimated expected reward per round of the target policy."""
        num, den = self._both(reward, action, pscore, action_dist, estimated_rewards)
        bottom = float(num.shape[0]) if den is None else float(den.sum())
        return float(num.sum() / bottom) if bottom != 0 else math.nan

    def estimate_interval(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                          action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None,
                          alpha: float = 0.05, n_bootstrap: int = 1000,
                          random_state: int | np.random.Generator | None = None,
                          max_groups: int | None = DEFAULT_MAX_GROUPS) -> Interval:
        """Point estimate and percentile-bootstrap ``1 - alpha`` interval (see the module doc)."""
        num, den = self._both(reward, action, pscore, action_dist, estimated_rewards)
        bottom = float(num.shape[0]) if den is None else float(den.sum())
        point = float(num.sum() / bottom) if bottom != 0 else math.nan
        reps = bootstrap_ratio(num, den, n_bootstrap, random_state, max_groups)
        return _interval(point, reps, alpha)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IPS(_Estimator):
    """Inverse propensity scoring: ``mean(w * r)``, ``w = pi(a|x) / pscore``, weights optionally
    clipped at ``clip`` (less variance, some downward bias)."""

    name = "ips"

    def __init__(self, clip: float | None = None) -> None:
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 (got {clip})")
        self.clip = clip

    def _weights(self, action, pscore, action_dist) -> np.ndarray:
        w = target_probability(action_dist, action) / pscore
        if self.clip is not None:
            w = np.minimum(w, self.clip)
        return w

    def _terms(self, reward, action, pscore, action_dist, estimated_rewards):
        return self._weights(action, pscore, action_dist) * reward, None


class SNIPS(IPS):
    """Self-normalised IPS: ``sum(w * r) / sum(w)`` (bounded by the rewards, slightly biased)."""

    name = "snips"

    def _terms(self, reward, action, pscore, action_dist, estimated_rewards):
        w = self._weights(action, pscore, action_dist)
        return w * reward, w


class _ModelBased(_Estimator):
    """DM and DR: optionally refit the reward model inside the bootstrap, the same way as the point estimate."""

    def _rounds(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                q: np.ndarray) -> np.ndarray:
        """Per-round terms for reward estimates ``q`` ``(..., n, K)`` (a leading batch axis is allowed)."""
        raise TypeError(f"{type(self).__name__} does not define its terms")

    def _terms(self, reward, action, pscore, action_dist, estimated_rewards):
        q = _check_q(estimated_rewards, reward.shape[0], type(self).__name__)
        d = _full_dist(action_dist, reward.shape[0], q.shape[1], type(self).__name__)
        return self._rounds(reward, action, pscore, d, q), None

    def estimate_interval(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                          action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None,
                          alpha: float = 0.05, n_bootstrap: int = 1000,
                          random_state: int | np.random.Generator | None = None,
                          max_groups: int | None = DEFAULT_MAX_GROUPS, context: np.ndarray | None = None,
                          reward_model: object | None = None, fold: np.ndarray | None = None) -> Interval:
        """As for every estimator; with ``context`` and ``reward_model`` the model is refitted in every
        bootstrap replicate, cross-fitted on ``fold`` (default: one fold, in-sample) exactly as the point
        estimate (``estimated_rewards`` defaults to ``reward_model.cross_fit`` on the whole log): each
        replicate's multinomial counts weight the rows, and every row keeps its fold."""
        if reward_model is None and context is None:
            return super().estimate_interval(reward, action, pscore, action_dist, estimated_rewards, alpha,
                                             n_bootstrap, random_state, max_groups)
        if reward_model is None or context is None:
            raise ValueError("pass both context and reward_model to refit the reward model in the bootstrap")
        r, a, p = _check_log(reward, action, pscore)
        n = r.shape[0]
        x = np.asarray(context, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"context must be (n_rounds={n}, n_features) (got {x.shape})")
        f = np.zeros(n, dtype=np.intp) if fold is None else np.asarray(fold, dtype=np.intp)
        if f.shape != (n,):
            raise ValueError(f"fold must be (n_rounds={n},) (got {f.shape})")
        cross_fit = reward_model.cross_fit  # type: ignore[attr-defined]
        if estimated_rewards is None:
            estimated_rewards = cross_fit(x, a, r, f)
        point = self.estimate_policy_value(r, a, p, action_dist, estimated_rewards)
        d = _full_dist(action_dist, n, np.shape(estimated_rewards)[-1], type(self).__name__)
        rng = np.random.default_rng(random_state)
        reps = np.empty(n_bootstrap)
        step = max(1, min(n_bootstrap, _CHUNK_CELLS // max(1, n * d.shape[1])))
        for start in range(0, n_bootstrap, step):
            m = min(step, n_bootstrap - start)
            idx = rng.integers(n, size=(m, n)) + n * np.arange(m)[:, None]
            counts = np.bincount(idx.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
            q = cross_fit(x, a, r, f, sample_weight=counts)
            reps[start:start + m] = (counts * self._rounds(r, a, p, d, q)).sum(axis=1) / n
        return _interval(point, reps, alpha)


class DirectMethod(_ModelBased):
    """Direct method: ``mean(sum_a pi(a|x) q(x, a))`` from a reward model; ignores the logged rewards
    (no variance from weights, biased when the model is wrong)."""

    name = "dm"

    def _rounds(self, reward, action, pscore, action_dist, q):
        return np.einsum("ij,...ij->...i", action_dist, q)


class DoublyRobust(_ModelBased, IPS):
    """Doubly robust: the direct method plus the weighted residual of the logged action,
    ``mean(sum_a pi q + w (r - q(x, a_logged)))`` (unbiased if either the propensities or the model are right)."""

    name = "dr"

    def _rounds(self, reward, action, pscore, action_dist, q):
        w = self._weights(action, pscore, action_dist)
        dm = np.einsum("ij,...ij->...i", action_dist, q)
        q_logged = q[..., np.arange(action.shape[0]), action]
        return dm + w * (reward - q_logged)


class Replay(_Estimator):
    """Replay (Li et al. 2011): the mean logged reward over the rounds where the target would have taken
    the logged action. A stochastic target "matches" a round with its probability of the logged action,
    so each round is weighted by ``pi(a_logged|x)``: ``sum(pi * r) / sum(pi)``, the expected value of
    replaying the target with its own random draws (for a deterministic target, the classic count of
    matches). Unbiased for uniform-random logging, where it equals SNIPS; biased otherwise.

    >>> Replay().estimate_policy_value(np.array([0.0, 0.0, 1.0]), np.array([0, 1, 2]), np.full(3, 1 / 3),
    ...                                np.tile([0.4, 0.4, 0.2], (3, 1)))  # true value 0.2
    0.2
    """

    name = "replay"

    def _terms(self, reward, action, pscore, action_dist, estimated_rewards):
        d = _as_dist(action_dist)
        if d.ndim == 1 and d.shape != reward.shape:
            raise ValueError(f"action_dist (n,) must match reward's shape {reward.shape} (got {d.shape})")
        match = target_probability(d, action)
        return match * reward, match


ESTIMATORS: dict[str, type[_Estimator]] = {c.name: c for c in (IPS, SNIPS, DirectMethod, DoublyRobust, Replay)}


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 when every weight is 0)."""
    w = np.asarray(weights, dtype=np.float64)
    s2 = float(np.dot(w, w))
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def diagnose(action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
             logging_dist: np.ndarray | None = None, min_ess_share: float = 0.01,
             max_weight_share: float = 0.05) -> Diagnostics:
    """Weight diagnostics of a log against a target policy, with warnings when the estimate is
    fragile: no overlap, a tiny effective sample, one round dominating the weights, or (when the
    logging policy's full distribution is known) target mass on actions the logger never takes."""
    a = np.asarray(action, dtype=np.intp)
    p = np.asarray(pscore, dtype=np.float64)
    if p.shape != a.shape or not ((p > 0) & (p <= 1)).all():
        raise ValueError("pscore must be in (0, 1] with one value per logged action")
    w = target_probability(action_dist, a) / p
    n = int(w.shape[0])
    ess = effective_sample_size(w)
    max_w = float(w.max()) if n else 0.0
    zero_share = float(np.mean(w == 0)) if n else 0.0
    warnings: list[str] = []
    if n and zero_share == 1.0:
        warnings.append("no support: the target gives probability 0 to every logged action, so IPS, SNIPS, "
                        "DR and replay have nothing to weight")
    elif n and ess < min_ess_share * n:
        warnings.append(f"low effective sample size: {ess:.1f} of {n} rounds ({ess / n:.2%} < {min_ess_share:.2%})")
    total = float(w.sum())
    if total > 0 and max_w / total > max_weight_share:
        warnings.append(f"one round carries {max_w / total:.1%} of the total weight (max weight {max_w:.3g})")
    missing = None
    if logging_dist is not None:
        ld = _as_dist(logging_dist, "logging_dist")
        td = _as_dist(action_dist)
        if ld.ndim != 2 or td.ndim != 2 or ld.shape != td.shape:
            raise ValueError("logging_dist and action_dist must both be (n_rounds, n_actions) to check support")
        lost = np.where(ld <= 0, td, 0.0).sum(axis=1)
        missing = float(np.mean(lost > 0))
        if missing > 0:
            warnings.append(f"missing support: in {missing:.1%} of rounds the target puts probability "
                            f"(on average {float(lost.mean()):.3f}) on actions the logging policy never takes; "
                            "IPS, SNIPS and DR are biased there")
    return Diagnostics(n, ess, max_w, float(w.mean()) if n else 0.0, zero_share, missing, warnings)


def estimate_all(reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                 estimated_rewards: np.ndarray | None = None, alpha: float = 0.05, n_bootstrap: int = 1000,
                 random_state: int | None = None) -> dict[str, Interval]:
    """Intervals of IPS, SNIPS and replay, plus DM and DR when ``estimated_rewards`` is given."""
    names = ["ips", "snips", "replay"] + (["dm", "dr"] if estimated_rewards is not None else [])
    rng = np.random.default_rng(random_state)
    return {
        name: ESTIMATORS[name]().estimate_interval(reward, action, pscore, action_dist, estimated_rewards,
                                                   alpha=alpha, n_bootstrap=n_bootstrap, random_state=rng)
        for name in names
    }
