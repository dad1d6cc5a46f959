"""A/B experiment assignment: a user's arm is a pure function of (salt, experiment, canonical subject), so
it needs no stored state, is the same on every replica and restart, and stays the same on every device
once the user is identified (the canonical subject is then the user id, whatever device asks).

The hash itself is :meth:`server.base.catalog.Experiment.assign` (SHA-256 of ``salt:name:subject`` mapped to
[0, 1) and cut by the arms' shares), so the catalog and the decision engine can never disagree. The
decision engine calls :func:`assign` (or an :class:`Assigner`) and logs ``experiment`` and ``arm`` in every
decision; ``onramp report experiments`` (:mod:`server.offline.experiment_report`) compares the arms.

>>> from server.base.catalog import load_catalog
>>> a = Assigner(load_catalog(None))
>>> a.assign("tailored_vs_generic", "user-42") == a.assign("tailored_vs_generic", "user-42")
True
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from server.base.catalog import Catalog, Experiment
from server.base.records import ANON_PREFIX


@dataclass(frozen=True, slots=True)
class Assignment:
    """The arm of one subject in one experiment, with the arm's kind (tailored, generic or holdout)."""

    experiment: str
    arm: str
    kind: str


def bucket(experiment: Experiment, subject: str) -> float:
    """The subject's uniform position in [0, 1) for ``experiment`` (the number the shares cut)."""
    digest = hashlib.sha256(f"{experiment.salt}:{experiment.name}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, subject: str) -> str:
    """The arm name of ``subject`` (a canonical subject: the user id once identified) in ``experiment``."""
    if not subject:
        raise ValueError("subject: must be a non-empty canonical subject (user id or anon:<anonymous_id>)")
    return experiment.assign(subject).name


def is_anonymous(subject: str) -> bool:
    """True for a subject that is not identified yet (``anon:<id>``): its arm may change at identify."""
    return subject.startswith(ANON_PREFIX)


class Assigner:
    """Assignment against a catalog's experiments, by experiment name or for the enabled experiment."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._by_name = {e.name: e for e in catalog.experiments}

    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name`` (ValueError naming the known ones otherwise)."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise ValueError(f"experiment: unknown experiment {name!r} (catalog has: {known})") from None

    def assign(self, experiment: str, subject: str) -> str:
        """The arm name of ``subject`` in the experiment called ``experiment``."""
        return assign(self.experiment(experiment), subject)

    def assignment(self, subject: str) -> Assignment | None:
        """The subject's arm in the enabled experiment, or None when no experiment is enabled."""
        exp = self.catalog.active_experiment
        if exp is None:
            return None
        arm = exp.assign(subject)
        return Assignment(exp.name, arm.name, arm.kind)

    def arm_kinds(self, experiment: str) -> dict[str, str]:
        """Arm name -> kind of an experiment."""
        return {a.name: a.kind for a in self.experiment(experiment).arms}
