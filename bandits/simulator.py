"""A seeded simulator of onboarding users for tests and benchmarks: hidden user types, noisy
observable context features correlated with the type, and a true success probability per
(type, step) in which different types prefer different steps.

:func:`run_policy` replays one stream of users against a :class:`~bandits.exploration.Decider`
and the reference policies (uniform random, best fixed step in hindsight, a generic fixed order
and the context oracle) with common random numbers, so their rewards compare fairly.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bandits.exploration import Decider

DAY_MS = 86_400_000.0  # decisions carry millisecond timestamps, as in the server
PER_DAY = 1000  # simulated arrivals per day: a forgetting bandit's half-life is in days

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
    draw per round; round ``i`` happens at ``i / PER_DAY`` days (the time the bandit learns it at)."""
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
    step = DAY_MS / PER_DAY
    for i in range(n_rounds):
        xi = x[i]
        arm = decide(xi, arms, g).arm
        r = 1.0 if u[i] < probs[i, arm] else 0.0
        learn(xi, arm, r, i * step)
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
            decider.learn_one(x[i], c.arm, r, i * DAY_MS / PER_DAY)
        actions[i], pscores[i], rewards[i] = c.arm, c.probability, r
        dist[i, list(c.probabilities)] = list(c.probabilities.values())
    return BanditLog(x, actions, pscores, rewards, types, dist)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated setting for learners: how many steps, whether and how users' preferences change
    (``switch_at``: at that fraction of the run every type's success table is replaced by another seed's;
    ``drift``: it moves linearly from the first table to the second over the run), ``reward_scale`` (0.1
    gives sparse rewards, 2-5 % on average), ``delay`` (each reward is learned that many arrivals after its
    decision, uniform in the range) and ``per_day`` (arrivals per simulated day: the decisions' timestamps)."""

    name: str
    n_steps: int = 10
    switch_at: float | None = None
    drift: bool = False
    reward_scale: float = 1.0
    delay: tuple[int, int] = (0, 0)
    n_features: int = 16
    n_types: int = 5
    per_day: int = PER_DAY


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("static"), Scenario("switch", switch_at=0.5), Scenario("drift", drift=True),
    Scenario("sparse", reward_scale=0.1), Scenario("delayed", delay=(50, 500)),
    Scenario("3 steps", n_steps=3), Scenario("20 steps", n_steps=20),
)


class Learner(Protocol):
    """What :func:`run_scenario` drives: choose a step for a context, learn a reward later."""

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        """The step shown to a user with context ``x`` (``rng`` for any random draw)."""
        ...

    def learn(self, x: np.ndarray, arm: int, reward: float, t_ms: float) -> None:
        """The reward of showing ``arm`` at time ``t_ms`` to a user with context ``x``."""
        ...


class DeciderLearner:
    """A :class:`~bandits.exploration.Decider` as a :class:`Learner` (it learns with the decision's time),
    which also accumulates what the effective sample size of an off-policy estimate needs."""

    def __init__(self, decider: Decider) -> None:
        self.decider = decider
        self._arms: list[int] | None = None
        self._inv_p = 0.0  # sum over decisions of E[w^2 | x] for the uniform random target
        self.n = 0

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        if self._arms is None:
            self._arms = list(range(self.decider.policy.n_arms))
        c = self.decider.decide(x, self._arms, rng)
        k = len(self._arms)
        ps = c.probabilities.values()
        # an arm of probability 0: the uniform policy's IPS estimate has no support (ESS 0)
        self._inv_p += sum(1.0 / p for p in ps) / (k * k) if min(ps) > 0 else math.inf
        self.n += 1
        return c.arm

    def learn(self, x: np.ndarray, arm: int, reward: float, t_ms: float) -> None:
        self.decider.learn_one(x, arm, reward, t_ms)

    @property
    def ess_fraction(self) -> float:
        """Effective sample size of an IPS estimate of the uniform random policy from these decisions, as a
        fraction of their number (``1 / mean E[w^2 | x]``; a deterministic target gets about ``1/K`` of it)."""
        return self.n / self._inv_p if self._inv_p else 0.0  # n / inf = 0 when any decision lacked support


@dataclass(frozen=True, slots=True)
class World:
    """One seeded stream of :func:`run_scenario`: contexts ``x``, hidden ``types``, the uniform reward draws ``u``,
    the ``delays``, the success probability of every step for every round in force then (``probs``, (n, K)), the
    context oracle's step (``oracle_arm``: the best any policy that sees only the context can choose) and the best
    fixed step of each phase (``best_arm``)."""

    x: np.ndarray
    types: np.ndarray
    u: np.ndarray
    delays: np.ndarray
    probs: np.ndarray
    oracle_arm: np.ndarray
    best_arm: np.ndarray
    uniform_arm: np.ndarray


def world(scenario: Scenario, n_rounds: int, seed: int = 0) -> World:
    """The users, reward draws, delays and success tables :func:`run_scenario` uses for ``seed`` (a function of
    the scenario, ``n_rounds`` and ``seed`` only)."""
    s = scenario
    sim = OnboardingSimulator(s.n_steps, s.n_features, s.n_types, seed=seed)
    after = OnboardingSimulator(s.n_steps, s.n_features, s.n_types, seed=seed + 10_000).success_probs
    g = np.random.default_rng([seed, 11])
    x, types = sim.arrivals(n_rounds, g)
    u = g.random(n_rounds)
    lo, hi = s.delay
    delays = g.integers(lo, hi + 1, size=n_rounds) if hi > 0 else np.zeros(n_rounds, dtype=np.int64)
    idx = np.arange(n_rounds)
    if s.drift:
        mix, phase = idx / max(1, n_rounds - 1), idx * 10 // n_rounds
    elif s.switch_at is not None:
        mix = phase = (idx >= int(s.switch_at * n_rounds)).astype(np.int64)
    else:
        mix = phase = np.zeros(n_rounds, dtype=np.int64)
    mixf = np.asarray(mix, dtype=np.float64)[:, None]
    probs = ((1.0 - mixf) * sim.success_probs[types] + mixf * after[types]) * s.reward_scale
    post = sim.type_posterior(x)
    expected = ((1.0 - mixf) * (post @ sim.success_probs) + mixf * (post @ after))  # per-context, current table
    best = np.empty(n_rounds, dtype=np.intp)
    for ph in np.unique(phase):
        rows = phase == ph
        best[rows] = int(np.argmax(probs[rows].mean(axis=0)))
    uniform = g.integers(s.n_steps, size=n_rounds)
    return World(x, types, u, delays, probs, np.argmax(expected, axis=1), best, uniform)


def run_scenario(scenario: Scenario, learner: Learner, n_rounds: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-round rewards ``(n_rounds,)`` of ``learner`` (key ``bandit``) and of the references of
    :func:`run_policy` on one seeded stream of users (:func:`world`), where the references know the success table
    in force: ``best_fixed`` is the best single step of each phase (before and after a switch; each tenth of a
    drift), ``bayes`` the context oracle and ``oracle`` the type oracle. The users, reward draws and delays depend
    on ``seed`` only, so every learner sees the same arrivals; the learner draws from its own stream."""
    s = scenario
    w = world(s, n_rounds, seed)
    x, u, delays, probs = w.x, w.u, w.delays, w.probs
    idx = np.arange(n_rounds)
    out = {
        "uniform": (u < probs[idx, w.uniform_arm]).astype(np.float64),
        "best_fixed": (u < probs[idx, w.best_arm]).astype(np.float64),
        "bayes": (u < probs[idx, w.oracle_arm]).astype(np.float64),
        "oracle": (u < probs[idx, np.argmax(probs, axis=1)]).astype(np.float64),
    }
    rng = np.random.default_rng([seed, 12])
    t_ms = idx * (DAY_MS / s.per_day)
    due: list[tuple[int, int, int, float]] = []  # (round it is learned, decision round, arm, reward)
    rewards = np.empty(n_rounds)
    choose, learn = learner.choose, learner.learn
    for i in range(n_rounds):
        while due and due[0][0] <= i:
            _, j, a, r = heapq.heappop(due)
            learn(x[j], a, r, float(t_ms[j]))
        arm = choose(x[i], rng)
        r = 1.0 if u[i] < probs[i, arm] else 0.0
        rewards[i] = r
        if delays[i] == 0:
            learn(x[i], arm, r, float(t_ms[i]))
        else:
            heapq.heappush(due, (i + int(delays[i]), i, arm, r))
    out["bandit"] = rewards
    return out
