"""The model snapshot: what the learner publishes and every decision worker loads, and the catalog's bandit both
build. Imports no River and no scipy (a worker imports this; their imports would be most of its start): the
River models travel as plain numbers (:class:`~server.learn.segment_model.SegmentModel`), the bandit policy as
its ``to_state`` values (numpy arrays and Python numbers).

Two formats share :func:`made_for`'s check: the learner's saved state (:data:`STATE_FORMAT`, with the River
models themselves and their per-user marks; only the learner reads it) and the snapshot (:data:`SNAPSHOT_FORMAT`).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bandits.exploration import Decider, build_exploration
from bandits.policies import build_policy
from server.base.catalog import Catalog
from server.base.clock import DAY_MS, HOUR_MS
from server.learn.segment_model import SegmentModel

STATE_FORMAT = 1  # the learner's saved state: "segmenter" holds the pickled River models with their marks
SNAPSHOT_FORMAT = 2  # a snapshot: "segments" holds SegmentModel.to_state() (1: the pickled River models)


def guard_horizon_ms(catalog: Catalog) -> int:
    """How long a show counts for a cap (24 h), a cooldown or the min gap: the shown history of people without
    tracking consent is kept that long."""
    g = catalog.guardrails
    return max([DAY_MS, int(round(g.min_gap_minutes * 60_000)),
                *(int(round(s.cooldown_hours * HOUR_MS)) for s in catalog.steps)])


def build_decider(catalog: Catalog, n_features: int) -> Decider | None:
    """The catalog's bandit (policy + exploration), or None when no step is personalised."""
    arms = catalog.personalized_steps
    if not arms:
        return None
    b = catalog.bandit
    policy = build_policy(b.algorithm, len(arms), n_features, **b.policy_params())
    exploration = build_exploration(b.exploration, epsilon=b.epsilon, gamma=b.gamma,
                                    max_exploration=catalog.guardrails.max_exploration)
    return Decider(policy, exploration, seed=b.seed)


def made_for(state: Mapping[str, Any], catalog: Catalog, arms: Sequence[str], features: Sequence[str],
             fmt: int = STATE_FORMAT) -> bool:
    """Whether a model body (unpickled) of format ``fmt`` was made for this catalog, arms and context features:
    the learner's saved state and the snapshots workers load are both checked this way."""
    return (state.get("format") == fmt and state.get("catalog") == catalog.version
            and state.get("arms") == list(arms) and state.get("features") == list(features))


class UnusableSnapshot(ValueError):
    """A snapshot a worker cannot decide with; the message says why (and the worker waits for the next one)."""


@dataclass(frozen=True, slots=True)
class SnapshotModels:
    """What a worker decides with, read from a snapshot."""

    policy: dict[str, Any] | None  # the bandit policy's to_state() values (None without personalised steps)
    segments: SegmentModel
    learned: int  # outcomes the bandit learned
    demoted_rules: frozenset[str]  # proposing rules the learner demoted


def snapshot_body(catalog: Catalog, arms: Sequence[str], features: Sequence[str], policy: dict[str, Any] | None,
                  segments: SegmentModel, learned: int, demoted_rules: Iterable[str]) -> bytes:
    """A snapshot's body (pickle of plain values: numpy arrays, lists, numbers, strings)."""
    return pickle.dumps({
        "format": SNAPSHOT_FORMAT, "catalog": catalog.version, "arms": list(arms), "features": list(features),
        "policy": policy, "segments": segments.to_state(), "learned": int(learned),
        "demoted_rules": sorted(demoted_rules),
    }, protocol=pickle.HIGHEST_PROTOCOL)


def read_snapshot(body: bytes, catalog: Catalog, arms: Sequence[str], features: Sequence[str]) -> SnapshotModels:
    """The models of a snapshot body (trusted: the learner's own); :class:`UnusableSnapshot` when it was written
    by an earlier version, made for another catalog, or cannot be read."""
    try:
        state = pickle.loads(body)
    except Exception as exc:  # noqa: BLE001 - pickle raises many types on garbage
        raise UnusableSnapshot(f"cannot be read ({exc!r})") from None
    if not isinstance(state, dict):
        raise UnusableSnapshot("cannot be read (not a model snapshot)")
    if state.get("format") == STATE_FORMAT and "segmenter" in state:
        raise UnusableSnapshot("was written by an earlier version of Onramp (River models, which workers no longer "
                               "load)")
    if not made_for(state, catalog, arms, features, SNAPSHOT_FORMAT):
        raise UnusableSnapshot("was made for another catalog")
    try:
        segments = SegmentModel.from_state(state["segments"])
    except (KeyError, ValueError) as exc:
        raise UnusableSnapshot(f"cannot be read ({exc})") from None
    if segments.n_clusters != catalog.segments.n_clusters:
        raise UnusableSnapshot("was made for another catalog (number of clusters)")
    return SnapshotModels(state.get("policy"), segments, int(state.get("learned", 0)),
                          frozenset(state.get("demoted_rules", ())))
