"""Synthetic databases shared by the offline tests (generated once per session into a temp directory)."""
from __future__ import annotations

from pathlib import Path

import pytest

from server.offline.synth import ArmEffect, LogTruth, PopulationSpec, PopulationTruth, generate_decision_log, generate_population

CANDIDATE_TOML = """
[bandit]
algorithm = "lints"
alpha = 0.3
exploration = "squarecb"
gamma = 30
"""


@pytest.fixture(scope="session")
def offline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("offline")


@pytest.fixture(scope="session")
def noisy_log(offline_dir: Path) -> tuple[Path, LogTruth]:
    """8,000 decisions: epsilon-greedy logging (0.3), noisy contexts, forced rounds of every kind."""
    path = offline_dir / "noisy.db"
    return path, generate_decision_log(path, 8000, seed=3, epsilon=0.3)


@pytest.fixture(scope="session")
def uniform_log(offline_dir: Path) -> tuple[Path, LogTruth]:
    """8,000 decisions: uniform-random logging over every personalized step, one-hot type contexts."""
    path = offline_dir / "uniform.db"
    return path, generate_decision_log(path, 8000, seed=4, epsilon=1.0, eligible_share=1.0, context="type")


@pytest.fixture(scope="session")
def candidate_config(offline_dir: Path) -> Path:
    path = offline_dir / "candidate.toml"
    path.write_text(CANDIDATE_TOML, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def population(offline_dir: Path) -> tuple[Path, PopulationTruth]:
    """2,000 users with known funnel, retention, time to value and survey scores; no arm effects."""
    path = offline_dir / "population.db"
    return path, generate_population(path, PopulationSpec(n_users=2000, seed=5))


@pytest.fixture(scope="session")
def harmed_population(offline_dir: Path) -> tuple[Path, PopulationTruth]:
    """2,000 users whose tailored arm keeps users much worse (retention x 0.5)."""
    path = offline_dir / "harmed.db"
    spec = PopulationSpec(n_users=2000, seed=6, arm_effects={"tailored": ArmEffect(retention=0.5)})
    return path, generate_population(path, spec)
