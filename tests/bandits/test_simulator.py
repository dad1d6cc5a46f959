"""The onboarding simulator: seeded, types prefer different steps, contexts reveal the type."""
from __future__ import annotations

import numpy as np

from bandits.exploration import Decider, EpsilonGreedy
from bandits.policies import LinUCB
from bandits.simulator import SCENARIOS, OnboardingSimulator, collect_log, run_policy, run_scenario, world


def test_seeded_and_shaped():
    a, b = OnboardingSimulator(10, 16, 5, seed=4), OnboardingSimulator(10, 16, 5, seed=4)
    xa, ta = a.arrivals(100)
    xb, tb = b.arrivals(100)
    assert np.array_equal(xa, xb) and np.array_equal(ta, tb)
    assert xa.shape == (100, 16) and (xa[:, -1] == 1.0).all() and set(ta) <= set(range(5))
    assert a.reward_probs(ta).shape == (100, 10)
    assert not np.array_equal(OnboardingSimulator(10, 16, 5, seed=5).success_probs, a.success_probs)


def test_types_prefer_different_steps_and_contexts_reveal_types():
    sim = OnboardingSimulator(10, 16, 5, seed=0)
    assert len(set(np.argmax(sim.success_probs, axis=1).tolist())) == 5
    x, t = sim.arrivals(20_000, np.random.default_rng(1))
    assert (np.argmax(sim.type_posterior(x), axis=1) == t).mean() > 0.85
    probs = sim.reward_probs(t)
    assert probs.max(axis=1).mean() > probs.mean(axis=0).max() + 0.15  # knowing the type pays


def test_draw_reward_frequency():
    sim = OnboardingSimulator(6, 8, 3, seed=2)
    rng = np.random.default_rng(0)
    hits = np.mean([sim.draw_reward(1, 2, rng) for _ in range(20_000)])
    assert abs(hits - sim.success_probs[1, 2]) < 0.015


def test_run_policy_and_collect_log_shapes():
    sim = OnboardingSimulator(5, 6, 3, seed=1)
    out = run_policy(sim, Decider(LinUCB(5, 6), EpsilonGreedy(0.1)), 500, seed=3)
    assert set(out) == {"uniform", "best_fixed", "fixed_order", "bayes", "oracle", "bandit"}
    assert all(v.shape == (500,) and set(np.unique(v)) <= {0.0, 1.0} for v in out.values())
    assert out["oracle"].mean() >= out["uniform"].mean()
    log = collect_log(sim, Decider(LinUCB(5, 6), EpsilonGreedy(0.1)), 300, seed=3)
    assert np.allclose(log.action_dist.sum(axis=1), 1.0)
    assert np.array_equal(log.pscores, log.action_dist[np.arange(300), log.actions])


class _Follow:
    """A learner that shows, round after round, the steps it is given."""

    def __init__(self, arms: np.ndarray) -> None:
        self.arms, self.i = arms, 0

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        self.i += 1
        return int(self.arms[self.i - 1])

    def learn(self, x: np.ndarray, arm: int, reward: float, t_ms: float) -> None:
        pass


def test_the_world_is_the_stream_run_scenario_plays():
    """A learner that follows the world's context oracle (its best fixed step) earns exactly run_scenario's
    ``bayes`` (``best_fixed``) rewards, on every kind of scenario."""
    for scenario in SCENARIOS:
        w = world(scenario, 600, seed=3)
        assert w.probs.shape == (600, scenario.n_steps) and w.oracle_arm.shape == (600,)
        for arms, key in ((w.oracle_arm, "bayes"), (w.best_arm, "best_fixed"), (w.uniform_arm, "uniform")):
            out = run_scenario(scenario, _Follow(arms), 600, seed=3)
            assert np.array_equal(out["bandit"], out[key]), (scenario.name, key)
