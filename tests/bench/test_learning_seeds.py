"""``bench.learning_seeds``: the effective sample sizes against hand values for a uniform logger and a
deterministic one, and the report's lines (tiny runs, no timing)."""
from __future__ import annotations

import pytest

from bench import learning_seeds


def test_a_uniform_logger_gives_the_uniform_target_every_decision_and_a_deterministic_target_one_in_k() -> None:
    res = learning_seeds.measure("3 steps", 0, 300, {"epsilon": 1.0, "max_exploration": 1.0})
    assert res["ess_uniform"] == pytest.approx(1.0, abs=1e-12)
    assert res["ess_oracle"] == pytest.approx(1 / 3, abs=1e-12)
    assert 1 / 3 - 1e-12 <= res["ess_greedy"] <= 1.0  # the floorless twin: its best steps, ties shared


def test_a_logger_without_floor_supports_only_its_own_choice() -> None:
    res = learning_seeds.measure("static", 1, 300, {"epsilon": 0.0})
    assert res["ess_uniform"] == 0.0 and res["ess_oracle"] == 0.0
    assert res["ess_greedy"] == pytest.approx(1.0, abs=1e-12)
    floor = learning_seeds.measure("static", 1, 300, {})  # the server default: epsilon 0.03 over 10 steps
    assert 0.03 < floor["ess_uniform"] < 0.04 and 0.0 < floor["ess_oracle"] < 1.0


def test_report_lines(capsys: pytest.CaptureFixture[str]) -> None:
    learning_seeds.main(["--seeds", "2", "--rounds", "200", "--scenarios", "switch,static", "--set", "epsilon=0.05"])
    lines = capsys.readouterr().out.splitlines()
    assert "{'epsilon': 0.05}" in lines[0]
    assert [ln.split()[0] for ln in lines[1:3]] == ["switch", "static"] and lines[3].startswith("  mean over")
