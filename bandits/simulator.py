"""A seeded simulator of onboarding users for tests and benchmarks: hidden user types, noisy
observable context features correlated with the type, and a true success probability per
(type, step) in which different types prefer different steps.

:func:`run_policy` replays one stream of users against a :class:`~bandits.exploration.Decider`
and the reference policies (uniform random, best fixed step in hindsight, a generic fixed order
and the context oracle) with common random numbers, so their rewards compare fairly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandits.exploration import Decider

TYPE_NAMES = ("power_user", "new_explorer", "collaborator", "at_risk", "admin", "mobile_first",
              "evaluator", "analyst")


@dataclass(frozen=True, slots=True)
class BanditLog:
    """Logged interactions of one policy: contexts (n, d), actions, propensities, rewards, hidden
    types and the full logging distribution (n, K) when known."""

    contexts: np.ndarray
    actions: np.ndarray
    pscores: np.ndarray
    rewards: np.ndarray
    types: np.ndarray
    action_dist: np.ndarray


class OnboardingSimulator:
    """Users of ``n_types`` hidden types; context = type centre + Gaussian noise, with a constant
    bias feature last; success probability per (type, step) from a fixed seeded table.

    Each type has one favourite step (success ``0.45..0.7``) and a second good one; one "generic"
    step is fairly good for everyone, so the best fixed step is a real baseline but the oracle,
    which knows each user's type, does clearly better.
    """

    def __init__(self, n_steps: int = 10, n_features: int = 16, n_types: int = 5, seed: int = 0,
                 noise: float = 1.0, separation: float = 3.0) -> None:
        if n_steps < 2 or n_features < 2 or n_types < 1:
            raise ValueError("need n_steps >= 2, n_features >= 2 and n_types >= 1")
        if n_types > len(TYPE_NAMES):
            raise ValueError(f"n_types must be <= {len(TYPE_NAMES)} (got {n_types})")
        self.n_steps = int(n_steps)
        self.n_features = int(n_features)
        self.n_types = int(n_types)
        self.noise = float(noise)
        self.type_names = TYPE_NAMES[: self.n_types]
        self.rng = np.random.default_rng(seed)
        g = np.random.default_rng([seed, 1])
        w = g.dirichlet(np.full(self.n_types, 8.0))
        self.type_weights = w / w.sum()
        d_obs = self.n_features - 1
        centres = g.standard_normal((self.n_types, d_obs))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        self.centres = centres * separation
        probs = g.uniform(0.03, 0.2, size=(self.n_types, self.n_steps))
        generic = int(g.integers(self.n_steps))
        probs[:, generic] = g.uniform(0.25, 0.32, size=self.n_types)
        others = [s for s in range(self.n_steps) if s != generic]
        favourites = g.permutation(others)
        for t in range(self.n_types):
            fav = int(favourites[t % len(favourites)])
            second = int(favourites[(t + 1 + self.n_types) % len(favourites)])
            probs[t, second] = max(probs[t, second], g.uniform(0.3, 0.4))
            probs[t, fav] = g.uniform(0.45, 0.7)
        self.success_probs = probs
        self.generic_step = generic

    def arrivals(self, n: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new users: contexts ``(n, n_features)`` (last column = 1) and their hidden types."""
        g = self.rng if rng is None else rng
        types = g.choice(self.n_types, size=n, p=self.type_weights)
        x = np.empty((n, self.n_features))
        x[:, :-1] = self.centres[types] + self.noise * g.standard_normal((n, self.n_features - 1))
        x[:, -1] = 1.0
        return x, types

    def reward_probs(self, types: np.ndarray) -> np.ndarray:
        """True success probability of every step for each user: ``(n, n_steps)``."""
        return self.success_probs[np.asarray(types, dtype=np.intp)]

    def draw_reward(self, user_type: int, step: int, rng: np.random.Generator | None = None) -> float:
        """1.0 with the true success probability of ``step`` for ``user_type``, else 0.0."""
        g = self.rng if rng is None else rng
        return 1.0 if g.random() < self.success_probs[user_type, step] else 0.0

    def type_posterior(self, contexts: np.ndarray) -> np.ndarray:
        """Exact posterior ``P(type | context)`` of each user: ``(n, n_types)``."""
        z = np.asarray(contexts, dtype=np.float64)[:, :-1]
        sq = (z * z).sum(axis=1)[:, None] - 2.0 * z @ self.centres.T + (self.centres ** 2).sum(axis=1)[None, :]
        ll = -0.5 * sq / self.noise ** 2 + np.log(self.type_weights)[None, :]
        ll -= ll.max(axis=1, keepdims=True)
        post = np.exp(ll)
        post /= post.sum(axis=1, keepdims=True)
        return post

    def expected_value(self, types: np.ndarray, action_dist: np.ndarray) -> float:
        """True value of a policy with probabilities ``action_dist`` (n, K) on users of ``types``."""
        return float(np.mean(np.sum(self.reward_probs(types) * action_dist, axis=1)))


def run_policy(sim: OnboardingSimulator, decider: Decider, n_rounds: int, seed: int = 0,
               fixed_order: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Per-round rewards ``(n_rounds,)`` of ``bandit`` (``decider``, learning online) and of
    ``uniform``, ``best_fixed`` (the step best on average over these very users), ``fixed_order``
    (steps shown in a generic rotation, by default ``0..K-1``), ``bayes`` (the best any policy that
    sees only the context can do: argmax of the posterior expected success) and ``oracle`` (knows
    each user's type: argmax of the true probabilities). All see the same users and the same uniform
    draw per round."""
    g = np.random.default_rng(seed)
    x, types = sim.arrivals(n_rounds, g)
    u = g.random(n_rounds)
    probs = sim.reward_probs(types)
    idx = np.arange(n_rounds)
    k = sim.n_steps
    order = np.asarray(fixed_order if fixed_order is not None else range(k), dtype=np.intp)
    out = {
        "uniform": (u < probs[idx, g.integers(k, size=n_rounds)]).astype(np.float64),
        "best_fixed": (u < probs[:, int(np.argmax(probs.mean(axis=0)))]).astype(np.float64),
        "fixed_order": (u < probs[idx, order[idx % order.size]]).astype(np.float64),
        "bayes": (u < probs[idx, np.argmax(sim.type_posterior(x) @ sim.success_probs, axis=1)]).astype(np.float64),
        "oracle": (u < probs[idx, np.argmax(probs, axis=1)]).astype(np.float64),
    }
    arms = np.arange(k)
    rewards = np.empty(n_rounds)
    decide, learn = decider.decide, decider.learn_one
    for i in range(n_rounds):
        xi = x[i]
        arm = decide(xi, arms, g).arm
        r = 1.0 if u[i] < probs[i, arm] else 0.0
        learn(xi, arm, r)
        rewards[i] = r
    out["bandit"] = rewards
    return out


def collect_log(sim: OnboardingSimulator, decider: Decider, n_rounds: int, seed: int = 0,
                learn: bool = True) -> BanditLog:
    """Run ``decider`` on ``n_rounds`` simulated users and keep everything an off-policy
    evaluation needs (the full logging distribution included)."""
    g = np.random.default_rng(seed)
    x, types = sim.arrivals(n_rounds, g)
    u = g.random(n_rounds)
    probs = sim.reward_probs(types)
    k = sim.n_steps
    arms = np.arange(k)
    actions = np.empty(n_rounds, dtype=np.intp)
    pscores = np.empty(n_rounds)
    rewards = np.empty(n_rounds)
    dist = np.zeros((n_rounds, k))
    for i in range(n_rounds):
        c = decider.decide(x[i], arms, g)
        r = 1.0 if u[i] < probs[i, c.arm] else 0.0
        if learn:
            decider.learn_one(x[i], c.arm, r)
        actions[i], pscores[i], rewards[i] = c.arm, c.probability, r
        dist[i, list(c.probabilities)] = list(c.probabilities.values())
    return BanditLog(x, actions, pscores, rewards, types, dist)
