"""The sweep's rule picks the defaults: its docstring example runs, and the rule's order holds on made-up grids."""
from __future__ import annotations

import doctest

from bench import learning_sweep
from bench.learning_sweep import choose


def _r(switch: float, reward: float, ess: float, worst: float) -> dict[str, float]:
    return {"switch_min": switch, "reward": reward, "ess": ess, "last20_min": worst}


def test_docstring_example_runs() -> None:
    result = doctest.testmod(learning_sweep)
    assert result.attempted >= 1 and result.failed == 0


def test_switch_target_first_then_reward_tolerance_then_ess() -> None:
    grid = {"misses": _r(0.85, 0.95, 0.10, 0.95), "best": _r(0.91, 0.86, 0.02, 0.80),
            "near": _r(0.92, 0.852, 0.03, 0.70), "far": _r(0.93, 0.84, 0.05, 0.90)}
    assert choose(grid) == "near"  # "far" has more ESS but is 0.02 below the best reward


def test_equal_ess_goes_to_the_better_worst_scenario_not_a_reward_within_noise() -> None:
    grid = {"a": _r(0.91, 0.8581, 0.0341, 0.818), "b": _r(0.92, 0.8570, 0.0339, 0.830)}
    assert choose(grid) == "b"
    grid["b"]["last20_min"] = 0.810
    assert choose(grid) == "a"


def test_when_no_configuration_meets_the_switch_target_all_compete() -> None:
    grid = {"a": _r(0.80, 0.85, 0.03, 0.7), "b": _r(0.85, 0.86, 0.02, 0.7)}
    assert choose(grid) == "a"
