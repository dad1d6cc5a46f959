"""The server's default bandit: the shipped catalog agrees with the code defaults, the learning benchmark
runs exactly what the decision engine builds, and its exact probabilities keep the exploration floor
(support for offline evaluation) and the guardrail cap for any context and eligible set."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.learning import server_default_decider
from server.base.catalog import BanditConfig, Guardrails, load_catalog


def test_shipped_catalog_uses_the_code_defaults() -> None:
    shipped = dataclasses.asdict(load_catalog(None).bandit)
    code = dataclasses.asdict(BanditConfig())
    shipped.pop("seed"), code.pop("seed")  # the demo pins its own seed
    assert shipped == code
    assert load_catalog(None).guardrails.max_exploration == Guardrails().max_exploration


def test_learning_benchmark_runs_what_the_engine_builds(tmp_path: Path) -> None:
    from tests.server.engine_support import run

    seen: dict[str, str] = {}

    async def scenario(h, engine) -> None:
        assert engine.decider is not None
        seen["engine"] = engine.decider.version
        seen["bench"] = server_default_decider(len(engine.arms), engine.space.dim).version

    run(tmp_path, scenario)
    assert seen["bench"] == seen["engine"]


def _trained(k: int, d: int, seed: int):
    decider = server_default_decider(k, d)
    rng = np.random.default_rng(seed)
    for _ in range(200):
        x = rng.normal(size=d)
        c = decider.decide(x, list(range(k)), rng)
        decider.learn_one(x, c.arm, float(rng.random() < 0.3 + 0.05 * c.arm))
    return decider


DECIDERS = {seed: _trained(8, 5, seed) for seed in range(3)}


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2), eligible=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
       x=st.lists(st.floats(-3, 3, allow_nan=False), min_size=5, max_size=5), draw=st.integers(0, 2**32 - 1))
def test_default_probabilities_are_exact_floored_and_capped(seed, eligible, x, draw) -> None:
    decider = DECIDERS[seed]
    cat = load_catalog(None)
    c = decider.decide(np.array(x), eligible, np.random.default_rng(draw))
    p = [c.probabilities[a] for a in eligible]
    assert math.isclose(sum(p), 1.0, abs_tol=1e-12)
    assert c.probability == c.probabilities[c.arm]
    assert p == decider.exploration.probabilities_list(decider.policy.score_list(np.array(x), eligible))
    n = len(eligible)
    if n == 1:
        assert p == [1.0]
        return
    top = max(c.scores.values())
    off = [c.probabilities[a] for a in eligible if c.scores[a] != top]
    assert sum(off) <= cat.guardrails.max_exploration + 1e-12  # the guardrail cap
    # every eligible step keeps at least the exploration floor: logged data supports any other policy
    floor = min(cat.bandit.epsilon / n, cat.guardrails.max_exploration / max(1, len(off)))
    assert cat.bandit.exploration == "epsilon_greedy" and cat.bandit.epsilon > 0
    assert min(p) >= floor - 1e-15 and min(p) > 0
