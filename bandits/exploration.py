"""Exploration schemes that turn per-arm scores into an exact probability per eligible arm, the
sampler that draws from them, and :class:`Decider`, which joins a policy and a scheme.

The probability of the chosen arm is logged as the propensity for off-policy evaluation, so every
scheme returns probabilities that are non-negative and sum to 1 (within 1e-12), and the sampler
never returns an arm whose probability is 0. ``max_exploration`` (a catalog guardrail) caps the
total mass off the greedy arms (the arms tied at the highest score). :func:`boost` mixes a distribution
toward one arm (a proposing rule's step) and keeps every probability exact.

>>> EpsilonGreedy(0.2).probabilities(np.array([0.1, 0.5, 0.3, 0.5])).tolist()
[0.05, 0.45, 0.05, 0.45]
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from bandits.policies import Policy

EXPLORATIONS = ("epsilon_greedy", "squarecb", "softmax")


@runtime_checkable
class Exploration(Protocol):
    """Maps scores of the eligible arms to the probability of choosing each of them."""

    max_exploration: float

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Non-negative probabilities summing to 1, one per score, the highest score getting the most."""
        ...

    def probabilities_list(self, scores: list[float]) -> list[float]:
        """The same numbers for a list of floats (the fast path of :class:`Decider` for small K)."""
        ...


def _check_scores(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """The scores as a float array and their maximum; ValueError unless non-empty, 1-D and finite."""
    s = scores if isinstance(scores, np.ndarray) and scores.dtype == np.float64 else np.asarray(scores, np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array (got shape {s.shape})")
    top = float(s.max())  # NaN propagates through max
    if not (math.isfinite(top) and math.isfinite(float(s.min()))):
        raise ValueError("scores must be finite numbers")
    return s, top


def _check_rate(name: str, value: float) -> float:
    v = float(value)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1] (got {value!r})")
    return v


def _finish(p: np.ndarray, best: np.ndarray, cap: float) -> np.ndarray:
    """Give the greedy arms (mask ``best``) the mass the others leave, after capping the others'
    total at ``cap``: the result sums to 1 up to rounding of one subtraction."""
    p[best] = 0.0
    off = float(p.sum())
    if off > cap:
        p *= cap / off
        off = float(p.sum())
    p[best] = (1.0 - off) / int(np.count_nonzero(best))
    return p


def _check_list(s: list[float]) -> float:
    """Maximum of a non-empty list of finite scores (ValueError otherwise)."""
    if not s:
        raise ValueError("scores must be a non-empty 1-D array (got shape (0,))")
    if not math.isfinite(sum(s)):  # NaN and inf propagate through the sum
        raise ValueError("scores must be finite numbers")
    return max(s)


class _ListScheme:
    """Schemes computed on plain floats: for K of about ten, Python beats numpy's per-call cost."""

    def probabilities_list(self, scores: list[float]) -> list[float]:
        raise TypeError(f"{type(self).__name__} does not define probabilities_list")

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"scores must be a non-empty 1-D array (got shape {s.shape})")
        return np.array(self.probabilities_list(s.tolist()))


class EpsilonGreedy(_ListScheme):
    """With probability ``epsilon`` a uniformly random arm, else the best (ties share evenly)."""

    def __init__(self, epsilon: float = 0.1, max_exploration: float = 1.0) -> None:
        self.epsilon = _check_rate("epsilon", epsilon)
        self.max_exploration = _check_rate("max_exploration", max_exploration)

    def probabilities_list(self, scores: list[float]) -> list[float]:
        top = _check_list(scores)
        k = len(scores)
        n_best = scores.count(top)
        n_off = k - n_best
        each = self.epsilon / k
        if each * n_off > self.max_exploration:
            each = self.max_exploration / n_off
        share = (1.0 - each * n_off) / n_best
        return [share if v == top else each for v in scores]

    def __repr__(self) -> str:
        return f"EpsilonGreedy(epsilon={self.epsilon:g}, max_exploration={self.max_exploration:g})"


class SquareCB(_ListScheme):
    """Inverse gap weighting (Abe & Long 1999; Foster & Rakhlin 2020): an arm with gap
    ``best - score`` gets ``1 / (K + gamma * gap)``, the best arms share the rest.

    ``gamma`` trades exploration for exploitation (larger = greedier). Scores should be on the
    reward scale (e.g. success probability) for ``gamma`` to mean the same across catalogs.
    """

    def __init__(self, gamma: float = 50.0, max_exploration: float = 1.0) -> None:
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a finite number > 0 (got {gamma!r})")
        self.gamma = float(gamma)
        self.max_exploration = _check_rate("max_exploration", max_exploration)

    def probabilities_list(self, scores: list[float]) -> list[float]:
        top = _check_list(scores)
        k = len(scores)
        g = self.gamma
        p = [0.0 if v == top else 1.0 / (k + g * (top - v)) for v in scores]
        off = sum(p)
        if off > self.max_exploration:
            f = self.max_exploration / off
            p = [v * f for v in p]
            off = sum(p)
        share = (1.0 - off) / scores.count(top)
        return [share if v == top else q for v, q in zip(scores, p)]

    def __repr__(self) -> str:
        return f"SquareCB(gamma={self.gamma:g}, max_exploration={self.max_exploration:g})"


class Softmax:
    """Boltzmann exploration: ``p ~ exp(score / tau)`` (then the ``max_exploration`` cap)."""

    def __init__(self, tau: float = 0.1, max_exploration: float = 1.0) -> None:
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"tau must be a finite number > 0 (got {tau!r})")
        self.tau = float(tau)
        self.max_exploration = _check_rate("max_exploration", max_exploration)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        s, top = _check_scores(scores)
        best = s == top
        p = s - top
        p /= self.tau
        np.exp(p, out=p)
        p /= p.sum()
        return _finish(p, best, self.max_exploration)

    def probabilities_list(self, scores: list[float]) -> list[float]:
        return self.probabilities(np.asarray(scores, dtype=np.float64)).tolist()

    def __repr__(self) -> str:
        return f"Softmax(tau={self.tau:g}, max_exploration={self.max_exploration:g})"


def build_exploration(name: str, *, epsilon: float = 0.1, gamma: float = 50.0, tau: float = 0.1,
                      max_exploration: float = 1.0) -> Exploration:
    """An exploration scheme by catalog name (``epsilon_greedy``, ``squarecb``, ``softmax``)."""
    if name == "epsilon_greedy":
        return EpsilonGreedy(epsilon, max_exploration)
    if name == "squarecb":
        return SquareCB(gamma, max_exploration)
    if name == "softmax":
        return Softmax(tau, max_exploration)
    raise ValueError(f"exploration must be one of {', '.join(EXPLORATIONS)} (got {name!r})")


def boost(probs: Sequence[float], index: int, beta: float) -> list[float]:
    """A proposing rule's mixture: ``p' = (1 - beta) * p + beta * onehot(index)`` over the eligible arms.

    With probability ``beta`` the rule's arm, else a draw from the bandit's own ``probs``: ``p'`` sums to 1
    whenever ``probs`` does, the rule's arm gets at least ``beta`` and every other arm keeps its share of the
    rest, so an arm the bandit could draw stays drawable. ``p'[i]`` is the exact probability of arm ``i``
    under the mixture (the logged propensity); the bandit's own probability of the chosen arm is
    ``(p'[i] - beta * [i == index]) / (1 - beta)``.

    >>> boost([0.9, 0.05, 0.05], 2, 0.5)
    [0.45, 0.025, 0.525]
    """
    b = _check_rate("beta", beta)
    if not 0 <= index < len(probs):
        raise ValueError(f"index must point into probs (got {index} for {len(probs)} arms)")
    out = [(1.0 - b) * q for q in probs]
    out[index] += b
    return out


def sample(probs: np.ndarray | Sequence[float], rng: np.random.Generator) -> int:
    """Index drawn with probability ``probs[i]``; never an index whose probability is 0."""
    p = probs.tolist() if isinstance(probs, np.ndarray) else list(probs)
    u = rng.random() * sum(p)
    acc = 0.0
    last = -1
    for i, q in enumerate(p):
        if q > 0.0:
            acc += q
            last = i
            if u < acc:
                return i
    if last < 0:
        raise ValueError("probs must have a positive entry")
    return last  # rounding at the top end: the last arm with positive probability


def _arm_list(eligible_arms: Sequence[int] | np.ndarray) -> list[int]:
    """The eligible arms as a list of distinct ints (ValueError when empty, repeated or not integers)."""
    if isinstance(eligible_arms, np.ndarray):
        if eligible_arms.ndim != 1 or not (eligible_arms.size == 0 or np.issubdtype(eligible_arms.dtype, np.integer)):
            raise ValueError("eligible_arms must be a 1-D sequence of integer arm indices")
        arms = eligible_arms.tolist()
    else:
        try:
            arms = [operator.index(a) for a in eligible_arms]
        except TypeError:
            raise ValueError(f"eligible_arms must be a 1-D sequence of integer arm indices (got {eligible_arms!r})") \
                from None
    if not arms:
        raise ValueError("eligible_arms must list at least one arm index (got none)")
    if len(set(arms)) != len(arms):
        raise ValueError(f"eligible_arms must not repeat an arm (got {arms})")
    return arms


def _scores_of(arm_list: list[int], scores: Sequence[float]) -> list[float]:
    """The scores of ``arm_list`` out of every arm's ``scores`` (ValueError for an index out of range)."""
    if min(arm_list) < 0 or max(arm_list) >= len(scores):
        raise ValueError(f"arms must be indices in [0, {len(scores) - 1}] (got {arm_list})")
    return [scores[a] for a in arm_list]


@dataclass(slots=True)
class Choice:
    """One decision: the chosen arm, its exact probability (the propensity), the probability and
    score of every eligible arm, and whether it was an exploratory pick."""

    arm: int
    probability: float
    probabilities: dict[int, float]
    scores: dict[int, float]
    greedy_arm: int
    policy_version: str

    @property
    def explored(self) -> bool:
        """True when the chosen arm is not the (first) highest-scoring one."""
        return self.arm != self.greedy_arm


class Decider:
    """A contextual bandit: a :class:`~bandits.policies.Policy` scores the eligible arms, an
    :class:`Exploration` turns scores into probabilities, one arm is sampled from them.

    For Thompson sampling the scores are one posterior draw, so the logged probability is exact
    conditional on that draw (an independent random input, which is what inverse propensity
    weighting needs).
    """

    def __init__(self, policy: Policy, exploration: Exploration, seed: int | None = 0) -> None:
        self.policy = policy
        self.exploration = exploration
        self._rng = np.random.default_rng(seed)
        self._version = f"{policy.version}+{exploration!r}"

    @property
    def version(self) -> str:
        """Policy and exploration identity, e.g. ``linucb(...)+EpsilonGreedy(...)``."""
        return self._version

    def all_scores(self, x: np.ndarray) -> list[float] | None:
        """Every arm's score for context ``x``, to pass to :meth:`decide` for later decisions on the same
        ``x`` while the policy does not change (a server's repeated asks of one user); None for a policy whose
        scores are random draws (Thompson sampling), which must score each decision afresh."""
        policy = self.policy
        if not getattr(policy, "deterministic_scores", False):
            return None
        return policy.score_list(x, list(range(policy.n_arms)))

    def decide(self, x: np.ndarray, eligible_arms: Sequence[int] | np.ndarray,
               rng: np.random.Generator | None = None, boosted: tuple[int, float] | None = None,
               scores: Sequence[float] | None = None) -> Choice:
        """Choose one of ``eligible_arms`` for context ``x`` (ValueError when none is eligible).

        ``boosted = (arm, beta)``: the exploration's probabilities mixed by :func:`boost` toward ``arm`` (one
        of ``eligible_arms``) before sampling; the choice's probabilities are the mixture's. The random draws
        taken are the same with or without it. ``scores``: :meth:`all_scores` of this ``x`` under the current
        policy, used instead of scoring again (the same numbers, so the same choice and probabilities)."""
        arm_list = _arm_list(eligible_arms)
        g = self._rng if rng is None else rng
        if scores is None:
            score_list = self.policy.score_list(x, arm_list, g)
        else:
            score_list = _scores_of(arm_list, scores)
        probs = self._probabilities(arm_list, score_list, boosted)
        i = sample(probs, g) if len(probs) > 1 else 0
        return Choice(
            arm=arm_list[i],
            probability=probs[i],
            probabilities=dict(zip(arm_list, probs)),
            scores=dict(zip(arm_list, score_list)),
            greedy_arm=arm_list[score_list.index(max(score_list))],
            policy_version=self._version,
        )

    def distribution(self, eligible_arms: Sequence[int] | np.ndarray, boosted: tuple[int, float] | None,
                     scores: Sequence[float]) -> tuple[list[int], list[float]]:
        """The eligible arms (as a list) and the exact probability of each, as :meth:`decide` draws from them given
        :meth:`all_scores` ``scores``: a caller deciding again on the same scores and arms may keep them and draw
        with :func:`sample` (when more than one arm; :meth:`decide` takes no draw for a single arm)."""
        arm_list = _arm_list(eligible_arms)
        return arm_list, self._probabilities(arm_list, _scores_of(arm_list, scores), boosted)

    def _probabilities(self, arm_list: list[int], score_list: list[float],
                       boosted: tuple[int, float] | None) -> list[float]:
        if len(arm_list) == 1:
            if not math.isfinite(score_list[0]):
                raise ValueError("scores must be finite numbers (check the context features)")
            probs = [1.0]
        else:
            probs = self.exploration.probabilities_list(score_list)
        if boosted is not None:
            if boosted[0] not in arm_list:
                raise ValueError(f"boosted arm {boosted[0]} is not eligible (eligible: {arm_list})")
            probs = boost(probs, arm_list.index(boosted[0]), boosted[1])
        return probs

    def learn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Pass one observed reward to the policy, with the time ``t`` of its decision."""
        self.policy.learn_one(x, arm, reward, t)

    def unlearn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Remove one observed reward from the policy (erasure); ``t`` as it was learned."""
        self.policy.unlearn_one(x, arm, reward, t)
