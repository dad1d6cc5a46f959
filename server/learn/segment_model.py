"""Segments of a user as a worker computes them, without River: the rule segments (pure functions of a profile)
and the online models' predictions from the plain numbers a model snapshot holds (:class:`SegmentModel`). The
learner trains those models with River (:class:`server.learn.segments.Segmenter`) and publishes them as a
:class:`SegmentModel`; a decision worker never imports River or scipy (their imports are most of an
interpreter's start, so of a restart).

Rule segments (thresholds in the catalog's ``[segments]`` and ``[guardrails]``):

- ``engaged`` / ``at_risk``: at least ``engaged_min_features`` distinct features first used within
  ``engaged_window_hours`` of first seen (boundary inclusive), else at risk;
- ``power_user`` / ``new_explorer``: any of ``advanced_features`` first used within
  ``power_user_window_hours`` of first seen, else new explorer;
- ``consistent``: at least ``min_sessions_for_personalization`` sessions, started on at least
  ``min_distinct_days_for_personalization`` distinct UTC days (the engine personalises only then);
- ``activated``: the user reached first value (the configured activation event);
- ``cluster:<k>``: the online K-Means cluster of the user's behavior vector.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.base.catalog import FEATURE_USED, STEP_COMPLETED, Catalog, Guardrails, SegmentsConfig
from server.base.clock import DAY_MS, HOUR_MS
from server.base.records import SCREEN_SKIPPED, SESSION_START, TUTORIAL_COMPLETED
from server.ingest.profiles import Profile
from server.learn.features import BEHAVIOR_NAMES, FeatureSpace, behavior_features, context_features, tracked_features

MODEL_FORMAT = 1  # of SegmentModel.to_state
SIGMOID_CLIP = 30.0  # River's sigmoid answers exactly 0 / 1 beyond this logit

ENGAGED = "engaged"
AT_RISK = "at_risk"
POWER_USER = "power_user"
NEW_EXPLORER = "new_explorer"
CONSISTENT = "consistent"
ACTIVATED = "activated"
CLUSTER_PREFIX = "cluster:"


# ---------------------------------------------------------------------------------------------
# Rule segments (pure functions of a profile)


def early_features(profile: Profile, window_hours: float) -> list[str]:
    """Features first used within ``window_hours`` of the profile's first event (inclusive)."""
    if profile.first_seen_ms <= 0:
        return []
    limit = profile.first_seen_ms + window_hours * HOUR_MS
    return sorted(f for f, t in profile.feature_first_ms.items() if t <= limit)


def is_engaged(profile: Profile, cfg: SegmentsConfig) -> bool:
    """3+ (``engaged_min_features``) distinct features within 48 h (``engaged_window_hours``) of first seen."""
    return len(early_features(profile, cfg.engaged_window_hours)) >= cfg.engaged_min_features


def is_power_user(profile: Profile, cfg: SegmentsConfig) -> bool:
    """An advanced feature first used within the first week (``power_user_window_hours``)."""
    advanced = set(cfg.advanced_features)
    return any(f in advanced for f in early_features(profile, cfg.power_user_window_hours))


def distinct_days(times_ms: Iterable[int]) -> int:
    """Number of distinct UTC calendar days among epoch-millisecond times."""
    return len({t // DAY_MS for t in times_ms})


def is_consistent(profile: Profile, guardrails: Guardrails) -> bool:
    """Enough sessions on enough distinct days for personalization (the seed's guardrail)."""
    return (
        profile.sessions >= guardrails.min_sessions_for_personalization
        and distinct_days(profile.session_starts_ms) >= guardrails.min_distinct_days_for_personalization
    )


def reached_first_value(profile: Profile, cfg: SegmentsConfig) -> bool:
    """Whether the profile holds the activation event (default: ``step_completed`` of ``first_project``).

    ``feature_used`` counts a use of ``activation_feature`` (any feature when none is set);
    ``session_start``, ``screen_skipped`` and ``tutorial_completed`` count their counters; any
    other name counts as a custom event.
    """
    name = cfg.activation_event
    if name == STEP_COMPLETED:
        return cfg.activation_step in profile.steps_completed
    if name == FEATURE_USED:
        if cfg.activation_feature:
            return profile.features_used.get(cfg.activation_feature, 0) > 0
        return bool(profile.features_used)
    if name == TUTORIAL_COMPLETED:
        return profile.tutorials_completed > 0
    if name == SESSION_START:
        return profile.sessions > 0
    if name == SCREEN_SKIPPED:
        return profile.screens_skipped > 0
    return profile.custom_events.get(name, 0) > 0


def rule_segments(profile: Profile, catalog: Catalog) -> list[str]:
    """The rule segments of a profile, in a fixed order: engaged|at_risk, power_user|new_explorer,
    then ``consistent`` and ``activated`` when they hold."""
    cfg = catalog.segments
    out = [
        ENGAGED if is_engaged(profile, cfg) else AT_RISK,
        POWER_USER if is_power_user(profile, cfg) else NEW_EXPLORER,
    ]
    if is_consistent(profile, catalog.guardrails):
        out.append(CONSISTENT)
    if reached_first_value(profile, cfg):
        out.append(ACTIVATED)
    return out


# ---------------------------------------------------------------------------------------------
# The online models' predictions


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """Segments of a user at one moment, with the named context features and their vector."""

    segments: list[str]
    features: dict[str, float]
    vector: np.ndarray


def feature_space(catalog: Catalog) -> FeatureSpace:
    """The context features of ``catalog``: behavior, the tracked product features, flags, clusters."""
    return FeatureSpace(catalog.segments.n_clusters, tracked_features(
        (s.feature for s in catalog.steps), catalog.segments.advanced_features))


def segment_result(catalog: Catalog, space: FeatureSpace, profile: Profile, now_ms: int,
                   request_context: Mapping[str, str] | None, cluster: int | None, activation: float) -> SegmentResult:
    """Segments, named context features and vector of a user, given the models' cluster and activation
    probability for the user's behavior vector."""
    segments = rule_segments(profile, catalog)
    if cluster is not None:
        segments.append(f"{CLUSTER_PREFIX}{cluster}")
    features = context_features(profile, now_ms, request_context, space=space, segments=segments, cluster=cluster,
                                activation_prob=activation)
    return SegmentResult(segments=segments, features=features, vector=space.vector(features))


def _floats(values: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.array(values, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"segment model: {what} has shape {a.shape}, expected {shape}")
    a.setflags(write=False)
    return a


@dataclass(frozen=True, slots=True, eq=False)
class SegmentModel:
    """The River models of :class:`server.learn.segments.Segmenter` as plain numbers, over the behavior features
    ``names`` (the arrays' order), and the predictions River would make from them:

    - clusters, ``StandardScaler | KMeans``: the scaler's running means and variances, one centre per cluster;
    - activation, ``StandardScaler | LogisticRegression``: its own scaler, the weights and the intercept;
    - how many vectors / labels each learned (before any, no cluster and probability 0.5, as the segmenter).

    Prediction follows River's arithmetic (``StandardScaler.transform_one``: ``(x - mean) / var ** 0.5``, 0 where
    the variance is 0; ``KMeans.predict_one``: the first centre at the least squared Euclidean distance over the
    centre's and the vector's features, a missing one counting 0; ``LogisticRegression.predict_proba_one``: the
    sigmoid of weights . z + intercept, River's clipped sigmoid). A feature the models never saw scales to 0 and
    has weight 0, so it changes nothing; every centre has every behavior feature (the segmenter draws them all at
    the start), so River never draws one at prediction either. Sums may be added in another order than River's:
    equal to it within a few ulps (tests/server/test_segment_model.py).
    """

    names: tuple[str, ...]
    cluster_means: np.ndarray  # (d,)
    cluster_vars: np.ndarray  # (d,)
    centres: np.ndarray  # (n_clusters, d), cluster ids 0..n_clusters-1 in row order
    activation_means: np.ndarray  # (d,)
    activation_vars: np.ndarray  # (d,)
    weights: np.ndarray  # (d,)
    intercept: float = 0.0
    cluster_learned: int = 0
    activation_learned: int = 0
    positives: int = 0
    _means: np.ndarray = field(init=False, repr=False)  # both scalers' means, stacked
    _stds: np.ndarray = field(init=False, repr=False)  # their standard deviations, inf where the variance is 0

    def __post_init__(self) -> None:
        d = len(self.names)
        means = np.stack([self.cluster_means, self.activation_means])
        variances = np.stack([self.cluster_vars, self.activation_vars])
        if means.shape != (2, d) or self.centres.ndim != 2 or self.centres.shape[1] != d or self.weights.shape != (d,):
            raise ValueError("segment model: arrays do not match its feature names")
        # z = (x - mean) / std with std = var ** 0.5, and inf where the variance is 0 (z = 0 there)
        stds = np.full((2, d), np.inf)
        np.power(variances, 0.5, out=stds, where=variances != 0)
        object.__setattr__(self, "_means", means)
        object.__setattr__(self, "_stds", stds)

    @classmethod
    def untrained(cls, n_clusters: int, names: Sequence[str] = BEHAVIOR_NAMES) -> SegmentModel:
        """Models that learned nothing: no cluster, activation probability 0.5."""
        d = len(names)
        zeros = np.zeros(d)
        return cls(tuple(names), zeros, zeros, np.zeros((n_clusters, d)), zeros, zeros, zeros)

    @property
    def n_clusters(self) -> int:
        return int(self.centres.shape[0])

    def _scaled(self, x: Mapping[str, float]) -> np.ndarray:
        """Both scalers' ``transform_one(x)`` as rows of a (2, d) array (0 for a feature ``x`` lacks)."""
        names = self.names
        try:
            v = np.array([x[n] for n in names], dtype=np.float64)
        except KeyError:  # a feature missing from x: River's KMeans counts it as 0, its scaler never sees it
            present = np.array([n in x for n in names], dtype=bool)
            z = (np.array([x.get(n, 0.0) for n in names], dtype=np.float64) - self._means) / self._stds
            z[:, ~present] = 0.0
            return z
        return (v - self._means) / self._stds

    def predict(self, x: Mapping[str, float]) -> tuple[int | None, float]:
        """(cluster, activation probability) of a behavior vector: ``(StandardScaler | KMeans).predict_one(x)``
        (None before the clustering learned anything) and ``(StandardScaler | LogisticRegression)
        .predict_proba_one(x)[True]`` (0.5 before any label)."""
        if not self.cluster_learned and not self.activation_learned:
            return None, 0.5
        z = self._scaled(x)
        k = None
        if self.cluster_learned:
            diff = self.centres - z[0]
            k = int((diff * diff).sum(axis=1).argmin())
        if not self.activation_learned:
            return k, 0.5
        logit = float(z[1] @ self.weights) + self.intercept
        if logit < -SIGMOID_CLIP:
            return k, 0.0
        if logit > SIGMOID_CLIP:
            return k, 1.0
        return k, 1.0 / (1.0 + math.exp(-logit))

    # -- state ---------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain Python values (lists of floats, ints, strings) that :meth:`from_state` turns back into the model."""
        return {"format": MODEL_FORMAT, "names": list(self.names),
                "cluster_means": self.cluster_means.tolist(), "cluster_vars": self.cluster_vars.tolist(),
                "centres": self.centres.tolist(), "activation_means": self.activation_means.tolist(),
                "activation_vars": self.activation_vars.tolist(), "weights": self.weights.tolist(),
                "intercept": float(self.intercept),
                "counts": [self.cluster_learned, self.activation_learned, self.positives]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SegmentModel:
        """The model of :meth:`to_state`'s values; ValueError when they are not one."""
        if not isinstance(state, Mapping) or state.get("format") != MODEL_FORMAT:
            raise ValueError("not a segment model (unknown format)")
        try:
            names = tuple(str(n) for n in state["names"])
            d = len(names)
            centres = np.array(state["centres"], dtype=np.float64)
            if centres.ndim != 2 or centres.shape[1] != d:
                raise ValueError(f"segment model: centres have shape {centres.shape}, expected (k, {d})")
            cluster_learned, activation_learned, positives = (int(c) for c in state["counts"])
            return cls(names, _floats(state["cluster_means"], (d,), "cluster_means"),
                       _floats(state["cluster_vars"], (d,), "cluster_vars"),
                       _floats(centres, centres.shape, "centres"),
                       _floats(state["activation_means"], (d,), "activation_means"),
                       _floats(state["activation_vars"], (d,), "activation_vars"),
                       _floats(state["weights"], (d,), "weights"), float(state["intercept"]),
                       cluster_learned, activation_learned, positives)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a segment model: {exc!r}") from None


class SegmentPredictor:
    """Segments and context features of users from a catalog and a :class:`SegmentModel` (learns nothing; the
    decision engine's, and its ``ProfileEnricher`` hook)."""

    def __init__(self, catalog: Catalog, model: SegmentModel | None = None) -> None:
        self.catalog = catalog
        self.space = feature_space(catalog)
        self.model = model if model is not None else SegmentModel.untrained(catalog.segments.n_clusters)
        if self.model.n_clusters != catalog.segments.n_clusters:
            raise ValueError(f"segment model has {self.model.n_clusters} clusters, the catalog "
                             f"{catalog.segments.n_clusters}")

    def predict_one(self, profile: Profile, now_ms: int,
                    request_context: Mapping[str, str] | None = None) -> SegmentResult:
        """Segments, named context features and the feature vector of a user now."""
        k, p = self.model.predict(behavior_features(profile, now_ms))
        return segment_result(self.catalog, self.space, profile, now_ms, request_context, k, p)

    def enrich(self, profile: Profile, now_ms: int) -> tuple[list[str], dict[str, float]]:
        """The server's ``ProfileEnricher`` hook: (segments, features) of a profile now."""
        r = self.predict_one(profile, now_ms)
        return r.segments, r.features
