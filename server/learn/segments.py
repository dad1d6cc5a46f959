"""The online River models over user profiles, trained by the learner (the only process that imports River): K-Means
clusters of behavior vectors and an activation ("first value") predictor. They are published to the workers as
plain numbers (:meth:`Segmenter.model`, a :class:`~server.learn.segment_model.SegmentModel`), which predict from
them without River; the rule segments live beside that model (server/learn/segment_model.py).

:class:`Segmenter` satisfies the server's ``ProfileEnricher`` hook (``enrich``); call
:meth:`Segmenter.learn_one` after a profile changes so the models learn.
"""
from __future__ import annotations

import heapq
import math
import pickle
import threading
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter
from typing import Mapping

import numpy as np
from river import cluster, linear_model, optim, preprocessing

from server.base.catalog import Catalog, SegmentsConfig
from server.base.clock import HOUR_MS
from server.ingest.profiles import Profile
from server.learn.features import BEHAVIOR_NAMES, BehaviorInputs, behavior_features, behavior_inputs, features_of_inputs
from server.learn.segment_model import SegmentModel, SegmentResult, feature_space, reached_first_value, segment_result

STATE_FORMAT = 3  # 2: marks as tuples; 3: with the first-seen time (expired windows are labeled from the marks)

# ---------------------------------------------------------------------------------------------
# Online models


@dataclass(slots=True)
class _Mark:
    """What the segmenter remembers per subject: when it last learned from the user, whether the
    activation label is known, the latest pre-activation behavior vector, and when the user was first seen
    (so a window that passes without first value is labeled from the mark alone, see
    :meth:`Segmenter.label_expired`)."""

    events: int = -1
    sessions: int = -1
    labeled: bool = False
    snapshot: BehaviorInputs | dict[str, float] | None = None  # a dict in states written before the tuple
    first_seen: int = 0


def _before_label(mark: _Mark, profile: Profile, now_ms: int, x: dict[str, float] | None) -> dict[str, float]:
    """The vector the activation model learns a label from: the user's last snapshot before the label, else
    the current vector (``x`` when already computed)."""
    snap = mark.snapshot
    if snap:
        return snap if isinstance(snap, dict) else features_of_inputs(snap)
    return x if x is not None else behavior_features(profile, now_ms)


@dataclass(slots=True)
class _Models:
    clusterer: object
    activation: object
    cluster_learned: int = 0
    activation_learned: int = 0
    positives: int = 0
    marks: dict[str, _Mark] = field(default_factory=dict)


def _new_models(cfg: SegmentsConfig) -> _Models:
    km = cluster.KMeans(n_clusters=cfg.n_clusters, halflife=cfg.cluster_halflife, seed=cfg.cluster_seed)
    # Draw every centre coordinate now, in a fixed order, so that predictions never draw random
    # numbers later (KMeans fills unknown coordinates lazily) and stay pure and reproducible.
    for k in range(cfg.n_clusters):
        for name in BEHAVIOR_NAMES:
            km.centers[k][name]  # noqa: B018 - touching the defaultdict creates the coordinate
    clusterer = preprocessing.StandardScaler() | km
    activation = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    return _Models(clusterer=clusterer, activation=activation)


_ClusterParts = tuple[preprocessing.StandardScaler, cluster.KMeans]


def _cluster_parts(clusterer: object) -> _ClusterParts | None:
    """The scaler and K-Means of a ``StandardScaler | KMeans`` River pipeline that :func:`_learn_cluster` and
    :func:`_closest_cluster` can run directly (plain scaler, squared Euclidean distance), else None."""
    steps = getattr(clusterer, "steps", None)
    if not isinstance(steps, Mapping) or len(steps) != 2:
        return None
    scaler, km = steps.get("StandardScaler"), steps.get("KMeans")
    if (type(scaler) is not preprocessing.StandardScaler or type(km) is not cluster.KMeans or not scaler.with_std
            or getattr(scaler, "window_size", None) is not None or km.p != 2):
        return None
    return scaler, km


_ActivationParts = tuple[preprocessing.StandardScaler, linear_model.LogisticRegression]


def _activation_parts(activation: object) -> _ActivationParts | None:
    """The scaler and logistic regression of a ``StandardScaler | LogisticRegression`` River pipeline whose
    prediction :class:`SegmentModel` makes (plain scaler, log loss: the sigmoid), else None."""
    steps = getattr(activation, "steps", None)
    if not isinstance(steps, Mapping) or len(steps) != 2:
        return None
    scaler, lr = steps.get("StandardScaler"), steps.get("LogisticRegression")
    if (type(scaler) is not preprocessing.StandardScaler or type(lr) is not linear_model.LogisticRegression
            or not scaler.with_std or getattr(scaler, "window_size", None) is not None
            or type(lr.loss) is not optim.losses.Log):
        return None
    return scaler, lr


def _closest_cluster(km: cluster.KMeans, z: Mapping[str, float]) -> int:
    """``KMeans.predict_one(z)``: the first centre at the least squared distance, the distance summed in
    the centre's key order (River sums in set order, which changes with the process's string hashing)."""
    best, best_d = 0, math.inf
    for c, center in km.centers.items():
        d = 0.0
        for k, ck in center.items():
            diff = ck - z.get(k, 0)
            d += diff * diff
        if not z.keys() <= center.keys():
            for k in list(z):
                if k not in center:
                    diff = center[k] - z[k]  # River draws the missing coordinate the same way
                    d += diff * diff
        if d < best_d:
            best, best_d = c, d
    return best


def _learn_cluster(parts: _ClusterParts, x: Mapping[str, float]) -> None:
    """``(StandardScaler | KMeans).learn_one(x)`` with River's arithmetic on River's own state (so saved states
    keep their format), without the pipeline's per-call dispatch and per-centre key sets."""
    scaler, km = parts
    counts, means, vars_ = scaler.counts, scaler.means, scaler.vars
    z: dict[str, float] = {}
    for i, xi in x.items():
        n = counts[i] + 1
        counts[i] = n
        old_mean = means[i]
        mean = old_mean + (xi - old_mean) / n
        means[i] = mean
        var = vars_[i] + ((xi - old_mean) * (xi - mean) - vars_[i]) / n
        vars_[i] = var
        z[i] = (xi - mean) / var**0.5 if var else 0.0
    center = km.centers[_closest_cluster(km, z)]
    h = km.halflife
    for i, zi in z.items():
        center[i] += h * (zi - center[i])


def _predict_cluster(parts: _ClusterParts, x: Mapping[str, float]) -> int:
    """``(StandardScaler | KMeans).predict_one(x)`` (learns nothing)."""
    scaler, km = parts
    means, vars_ = scaler.means, scaler.vars
    z: dict[str, float] = {}
    for i, xi in x.items():
        var = vars_[i]
        z[i] = (xi - means[i]) / var**0.5 if var else 0.0
    return _closest_cluster(km, z)


class Segmenter:
    """Rule segments plus online River models (StandardScaler | KMeans clusters, StandardScaler |
    LogisticRegression activation) over user profiles, with state that can be saved and restored.

    Learning is cheap and idempotent per profile state: a user's vector is learned by the
    clustering at most once per new session or ``learn_every_events`` events, and by the
    activation model once, when its label becomes known (first value reached: positive, on the
    user's last vector before it; ``activation_window_hours`` passed without it: negative).
    Time is what the caller passes (the learner: the time of the profile changes it learns), never the
    wall clock, so the models are a function of what was learned in which order. Thread-safe.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.config = catalog.segments
        self.space = feature_space(catalog)
        self._m = _new_models(self.config)
        self._lock = threading.Lock()
        self._learn_every = self.config.learn_every_events
        self._window_ms = self.config.activation_window_hours * HOUR_MS
        self._parts_of: object = None  # the clusterer that _parts_cache belongs to
        self._parts_cache: _ClusterParts | None = None
        self._due: list[tuple[int, str]] = []  # heap of (window end, subject) of unlabeled marks; stale ones skipped

    def _parts(self) -> _ClusterParts | None:
        clusterer = self._m.clusterer
        if self._parts_of is not clusterer:  # a new model (e.g. restored from saved state)
            self._parts_cache, self._parts_of = _cluster_parts(clusterer), clusterer
        return self._parts_cache

    # -- learning ------------------------------------------------------------------------------

    def learn_one(self, profile: Profile, now_ms: int) -> None:
        """Learn from a profile that just changed (call after its events are folded in).

        Runs after every commit for each changed profile, so the behavior vector is computed only when a
        model learns from it; otherwise only the small :func:`behavior_inputs` snapshot is kept."""
        with self._lock:
            m = self._m
            mark = m.marks.get(profile.subject)
            if mark is None:
                mark = m.marks[profile.subject] = _Mark()
            x: dict[str, float] | None = None
            if (
                mark.events < 0
                or profile.sessions != mark.sessions
                or profile.event_count - mark.events >= self._learn_every
            ):
                x = behavior_features(profile, now_ms)
                parts = self._parts()
                if parts is not None:
                    _learn_cluster(parts, x)
                else:
                    m.clusterer.learn_one(x)
                m.cluster_learned += 1
                mark.events, mark.sessions = profile.event_count, profile.sessions
            if not mark.labeled:
                self._label(profile, now_ms, x, mark)
            if not mark.labeled and profile.first_seen_ms > 0 and profile.first_seen_ms != mark.first_seen:
                mark.first_seen = profile.first_seen_ms
                heapq.heappush(self._due, (mark.first_seen + self._window_ms, profile.subject))

    def _label(self, profile: Profile, now_ms: int, x: dict[str, float] | None, mark: _Mark) -> None:
        if reached_first_value(profile, self.config):
            self._learn_activation(_before_label(mark, profile, now_ms, x), True, mark)
        elif profile.first_seen_ms > 0 and now_ms - profile.first_seen_ms > self._window_ms:
            self._learn_activation(_before_label(mark, profile, now_ms, x), False, mark)
        else:
            mark.snapshot = behavior_inputs(profile, now_ms)

    def _learn_activation(self, x: dict[str, float], label: bool, mark: _Mark) -> None:
        self._m.activation.learn_one(x, label)
        self._m.activation_learned += 1
        self._m.positives += int(label)
        mark.labeled = True
        mark.snapshot = None

    def label_expired(self, now_ms: int) -> int:
        """Give the negative activation label, on their last vector, to users whose window passed before
        ``now_ms`` without first value (users who went silent never call :meth:`learn_one` again), in the order
        their windows ended (ties by subject). Reads only the marks, so the result depends on the time passed
        and on what was learned before, not on when this runs. Returns how many were labeled."""
        n = 0
        with self._lock:
            due, marks = self._due, self._m.marks
            while due and due[0][0] < now_ms:
                end, subject = heapq.heappop(due)
                mark = marks.get(subject)
                if mark is None or mark.labeled or mark.first_seen + self._window_ms != end:
                    continue  # forgotten, labeled meanwhile, or first seen earlier since (another entry)
                snap = mark.snapshot
                self._learn_activation((snap if isinstance(snap, dict) else features_of_inputs(snap)) if snap else {},
                                       False, mark)
                n += 1
        return n

    def forget(self, subject: str) -> bool:
        """Drop what is remembered about ``subject`` (erasure, or an alias merged into a user)."""
        with self._lock:
            return self._m.marks.pop(subject, None) is not None

    def _predict_models(self, x: dict[str, float]) -> tuple[int | None, float]:
        with self._lock:
            parts = self._parts()
            if not self._m.cluster_learned:
                k = None
            elif parts is not None:
                k = _predict_cluster(parts, x)
            else:
                k = int(self._m.clusterer.predict_one(x))
            if self._m.activation_learned == 0:
                return k, 0.5
            proba = self._m.activation.predict_proba_one(x)
        return k, float(proba.get(True, 0.0))

    def cluster_of(self, profile: Profile, now_ms: int) -> int | None:
        """The user's cluster id, or None before the clustering has learned anything."""
        return self._predict_models(behavior_features(profile, now_ms))[0]

    def activation_probability(self, profile: Profile, now_ms: int) -> float:
        """Estimated probability that the user reaches first value (0.5 before any label)."""
        return self._predict_models(behavior_features(profile, now_ms))[1]

    def predict_one(self, profile: Profile, now_ms: int,
                    request_context: Mapping[str, str] | None = None) -> SegmentResult:
        """Segments, named context features and the feature vector of a user now (learns nothing)."""
        k, p = self._predict_models(behavior_features(profile, now_ms))
        return segment_result(self.catalog, self.space, profile, now_ms, request_context, k, p)

    def context_features(self, profile: Profile, now_ms: int,
                         request_context: Mapping[str, str] | None = None) -> dict[str, float]:
        """The named context features of a user for one request (see :class:`FeatureSpace`)."""
        return self.predict_one(profile, now_ms, request_context).features

    def enrich(self, profile: Profile, now_ms: int) -> tuple[list[str], dict[str, float]]:
        """The server's ``ProfileEnricher`` hook: (segments, features) of a profile now."""
        r = self.predict_one(profile, now_ms)
        return r.segments, r.features

    # -- state ---------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counts of what the models learned: cluster updates, activation labels, positives, users."""
        with self._lock:
            return {
                "cluster_learned": self._m.cluster_learned,
                "activation_learned": self._m.activation_learned,
                "activation_positives": self._m.positives,
                "subjects": len(self._m.marks),
            }

    def model(self) -> SegmentModel:
        """The models as plain numbers (:class:`SegmentModel`), which predict as these River models do: what the
        snapshots for the workers hold. ValueError for models of another shape than :func:`_new_models` builds."""
        with self._lock:
            m = self._m
            parts, act = _cluster_parts(m.clusterer), _activation_parts(m.activation)
            if parts is None or act is None:
                raise ValueError("the segmenter's models are not StandardScaler | KMeans and "
                                 "StandardScaler | LogisticRegression pipelines")
            (scaler, km), (a_scaler, lr) = parts, act
            weights = lr.weights
            seen = {*scaler.means, *scaler.vars, *a_scaler.means, *a_scaler.vars, *weights}
            for center in km.centers.values():
                seen.update(center)
            names = BEHAVIOR_NAMES + tuple(sorted(seen.difference(BEHAVIOR_NAMES)))

            def values(d: Mapping[str, float]) -> np.ndarray:  # .get: River's defaultdicts gain no key
                return np.array([float(d.get(n, 0.0)) for n in names], dtype=np.float64)

            if list(km.centers) != list(range(len(km.centers))):
                raise ValueError("K-Means centres are not numbered 0..k-1 in order")
            centres = np.array([values(center) for center in km.centers.values()], dtype=np.float64)
            return SegmentModel(
                names, values(scaler.means), values(scaler.vars), centres.reshape(len(km.centers), len(names)),
                values(a_scaler.means), values(a_scaler.vars), values(weights), float(lr.intercept),
                m.cluster_learned, m.activation_learned, m.positives)

    def to_state(self, marks: bool = True) -> bytes:
        """The models and (``marks``) the per-user marks as bytes (pickle): with marks for the learner's saved
        state, without for the snapshots workers predict with. Marks go as plain tuples: pickling 100k slotted
        dataclasses one by one is several times slower."""
        with self._lock:
            m = self._m
            row = attrgetter(*(f.name for f in fields(_Mark)))
            marks_state = {s: row(k) for s, k in m.marks.items()} if marks else {}
            return pickle.dumps(
                {"format": STATE_FORMAT, "segments": asdict(self.config), "clusterer": m.clusterer,
                 "activation": m.activation, "counts": (m.cluster_learned, m.activation_learned, m.positives),
                 "marks": marks_state},
                protocol=pickle.HIGHEST_PROTOCOL,
            )

    @classmethod
    def from_state(cls, data: bytes, catalog: Catalog) -> Segmenter:
        """A segmenter restored from :meth:`to_state` bytes (trusted: the learner's own saved state or snapshot).

        Raises ValueError when the bytes are not a segmenter state or were made with different
        ``[segments]`` settings (then start a fresh ``Segmenter(catalog)``).
        """
        try:
            state = pickle.loads(data)
        except Exception as exc:  # pickle raises many types on garbage
            raise ValueError(f"not a segmenter state: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "marks" not in state:
            raise ValueError("not a segmenter state (unknown format)")
        if state["segments"] != asdict(catalog.segments):
            changed = sorted(k for k, v in asdict(catalog.segments).items() if state["segments"].get(k) != v)
            raise ValueError(f"segmenter state was made with other [segments] settings: {', '.join(changed)}")
        cluster_learned, activation_learned, positives = state["counts"]
        models = _Models(clusterer=state["clusterer"], activation=state["activation"],
                         cluster_learned=cluster_learned, activation_learned=activation_learned, positives=positives,
                         marks={s: _Mark(*t) for s, t in state["marks"].items()})
        seg = cls(catalog)
        seg._m = models
        seg._due = [(m.first_seen + seg._window_ms, s) for s, m in models.marks.items() if not m.labeled and m.first_seen]
        heapq.heapify(seg._due)
        return seg
