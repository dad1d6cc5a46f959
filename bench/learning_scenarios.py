"""Onramp's bandit and its peers on every simulator scenario (:data:`bandits.simulator.SCENARIOS`): static
preferences, a switch half way, a drift, sparse rewards, delayed rewards, 3 and 20 steps. Each learner sees
the same arrivals, rewards and delays for a seed; figures are the average reward over the whole run and the
last 20 %, and their ratio to the context oracle (the best any policy that sees only the context can do,
knowing the success table in force)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bandits.exploration import Decider, build_exploration
from bandits.policies import build_policy
from bandits.simulator import SCENARIOS, DeciderLearner, Learner, Scenario, run_scenario
from bench.common import Summary, summarize
from server.base.catalog import BanditConfig, Catalog, load_catalog

LAST = 0.2  # the share of the run reported as "last 20 %"


def decider(config: BanditConfig, max_exploration: float, n_arms: int, n_features: int) -> Decider:
    """The bandit the decision engine builds from ``config`` (server/decide/engine.py), with the same calls."""
    policy = build_policy(config.algorithm, n_arms, n_features, **config.policy_params())
    exploration = build_exploration(config.exploration, epsilon=config.epsilon, gamma=config.gamma,
                                    max_exploration=max_exploration)
    return Decider(policy, exploration, seed=config.seed)


def onramp(catalog: Catalog | None = None, **changes: Any) -> Callable[[int, int, int], DeciderLearner]:
    """A factory ``(n_arms, n_features, seed) -> Learner`` of the server's bandit for ``catalog`` (default: the
    shipped demo catalog), with ``changes`` to its ``[bandit]`` (e.g. ``alpha=0.5``) and ``max_exploration``
    (the guardrail cap)."""
    cat = catalog if catalog is not None else load_catalog(None)
    cap = float(changes.pop("max_exploration", cat.guardrails.max_exploration))
    config = dataclasses.replace(cat.bandit, **changes)

    def make(n_arms: int, n_features: int, seed: int) -> DeciderLearner:
        return DeciderLearner(decider(dataclasses.replace(config, seed=seed), cap, n_arms, n_features))
    return make


def measure(scenario: Scenario, make: Callable[[int, int, int], Learner], rounds: int, seed: int) -> dict[str, float]:
    """One run: average reward over all rounds and the last 20 % of the learner and the references, the
    learner's ratios to the context oracle and (Onramp's bandit) the effective sample size fraction."""
    learner = make(scenario.n_steps, scenario.n_features, seed)
    out = run_scenario(scenario, learner, rounds, seed)
    tail = int(rounds * (1 - LAST))
    res = {}
    for key, r in out.items():
        res[f"{key}_avg"], res[f"{key}_last20"] = float(r.mean()), float(r[tail:].mean())
    res["vs_context_avg"] = res["bandit_avg"] / res["bayes_avg"]
    res["vs_context_last20"] = res["bandit_last20"] / res["bayes_last20"]
    if isinstance(learner, DeciderLearner):
        res["ess"] = learner.ess_fraction
    return res


def table(runs: list[dict[str, float]]) -> dict[str, Summary]:
    """Median [min..max] over seeds of every figure of :func:`measure`."""
    return {k: summarize([r[k] for r in runs]) for k in runs[0]}


def scenario(name: str) -> Scenario:
    """The scenario called ``name``."""
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(name)
