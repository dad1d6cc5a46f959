"""``bench.model_ceilings``: the score is 1 for the context oracle's own predictions and below 1 for a worse
policy, and the report prints one line per model (tiny runs, no timing)."""
from __future__ import annotations

import numpy as np
import pytest

from bandits.simulator import OnboardingSimulator
from bench import model_ceilings


def test_the_oracles_own_predictions_score_one_and_a_constant_step_less() -> None:
    sim = OnboardingSimulator(4, 16, 5, seed=2)

    def oracle(x, a, y, k):
        return lambda xx: sim.type_posterior(xx) @ sim.success_probs

    def first_step(x, a, y, k):
        return lambda xx: np.tile(np.eye(k)[0], (len(xx), 1))

    assert model_ceilings.ceiling(oracle, 4, 200, seed=2) == pytest.approx(1.0, abs=1e-12)
    assert model_ceilings.ceiling(first_step, 4, 200, seed=2) < 0.9


def test_report_lines(capsys: pytest.CaptureFixture[str]) -> None:
    model_ceilings.main(["--draws", "1500", "--steps", "3", "--seeds", "1", "--models", "linear,clusters 5"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "linear" in lines[1] and "clusters 5" in lines[2]
