"""Other libraries' contextual bandits as :class:`~bandits.simulator.Learner` s, for ``python -m bench learning
--peers``: Vowpal Wabbit's ``--cb_explore_adf --squarecb``, MABWiser's LinUCB and River's ``LinUCBDisjoint``.
Each is an optional dependency (``pip install -e '.[bench]'``); :func:`available` says which are installed and
why the others are skipped. Every peer gets the same context vector as Onramp and learns each reward when
Onramp would (after the scenario's delay); none of them forgets (none has a time-based discount)."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.exploration import sample


class VowpalSquareCB:
    """VW's action-dependent-features contextual bandit with SquareCB exploration (its defaults), the context
    as shared features crossed with a per-step indicator (``-q sa``); cost = -reward."""

    def __init__(self, n_arms: int, n_features: int, seed: int) -> None:
        import vowpalwabbit

        self.k = n_arms
        self.vw = vowpalwabbit.Workspace(f"--cb_explore_adf --squarecb -q sa --quiet --random_seed {seed}")
        self._p: dict[bytes, float] = {}

    def _lines(self, x: np.ndarray, label: tuple[int, float, float] | None = None) -> list[str]:
        shared = "shared |s " + " ".join(f"f{i}:{v:.6g}" for i, v in enumerate(x.tolist()))
        lines = [shared]
        for a in range(self.k):
            head = f"0:{label[1]:g}:{label[2]:.9g} " if label is not None and label[0] == a else ""
            lines.append(f"{head}|a s{a}")
        return lines

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        pmf = self.vw.predict(self._lines(x))
        arm = sample(np.asarray(pmf, dtype=np.float64), rng)
        self._p[x.tobytes()] = float(pmf[arm])
        return arm

    def learn(self, x: np.ndarray, arm: int, reward: float, t_ms: float) -> None:
        p = self._p.pop(x.tobytes())
        self.vw.learn(self._lines(x, (arm, -reward, p)))


class MabwiserLinUCB:
    """MABWiser's ``LearningPolicy.LinUCB(alpha=1)`` (its default), learning one reward at a time. ``partial_fit``
    of one decision refits only that arm's model, after a joblib dispatch and a deep copy of every arm's
    model (about 200 rounds/s here); this calls the same ``fit`` of that one arm's model directly, so the
    arithmetic is MABWiser's and a run takes minutes instead of most of an hour."""

    def __init__(self, n_arms: int, n_features: int, seed: int) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        mab = MAB(arms=list(range(n_arms)), learning_policy=LearningPolicy.LinUCB(alpha=1.0), seed=seed)
        # MABWiser predicts only after a fit: one row of zeros (it adds nothing to A = l2 I + X^T X nor b = X^T y)
        mab.fit(decisions=[0], rewards=[0.0], contexts=np.zeros((1, n_features)))
        self._imp = mab._imp  # noqa: SLF001 - the fitted implementation that predict and partial_fit call

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        return int(self._imp.predict(x[None, :]))

    def learn(self, x: np.ndarray, arm: int, reward: float, t_ms: float) -> None:
        self._imp.arm_to_model[arm].fit(x[None, :], np.array([reward]))


class RiverLinUCB:
    """River's ``bandit.LinUCBDisjoint`` (its defaults: Bayesian linear regression per arm, mean + 1 sd)."""

    def __init__(self, n_arms: int, n_features: int, seed: int) -> None:
        from river import bandit

        self.arms = list(range(n_arms))
        self.policy = bandit.LinUCBDisjoint(seed=seed)

    @staticmethod
    def _ctx(x: np.ndarray) -> dict[str, float]:
        return {f"f{i}": v for i, v in enumerate(x.tolist())}

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        return int(self.policy.pull(self.arms, context=self._ctx(x)))

    def learn(self, x: np.ndarray, arm: int, reward: float, t_ms: float) -> None:
        self.policy.update(arm, self._ctx(x), reward)


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer learner: its name in the tables, the module it needs and how to build it."""

    name: str
    module: str
    package: str
    make: Callable[[int, int, int], Any]


PEERS: tuple[Peer, ...] = (
    Peer("vw squarecb", "vowpalwabbit", "vowpalwabbit", VowpalSquareCB),
    Peer("mabwiser linucb", "mabwiser", "mabwiser", MabwiserLinUCB),
    Peer("river linucb", "river.bandit", "river", RiverLinUCB),
)


def available() -> tuple[list[Peer], list[str]]:
    """The installed peers, and one line for each missing one saying it is skipped and how to install it."""
    found, skipped = [], []
    for p in PEERS:
        try:
            ok = importlib.util.find_spec(p.module) is not None
        except ModuleNotFoundError:
            ok = False
        if ok:
            found.append(p)
        else:
            skipped.append(f"{p.name}: skipped, {p.package} is not installed (pip install -e '.[bench]')")
    return found, skipped
