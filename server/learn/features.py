"""Context features of a user for the decision engine: named, finite, bounded numbers computed
from a :class:`~server.ingest.profiles.Profile`, and the fixed-order :class:`FeatureSpace` that turns them
into the numpy vector the bandit sees (so its dimension never changes while the catalog stays).

Two layers: :func:`behavior_features` (counts, recency, channel and device mix — the input of
the online clustering and the activation model) and :func:`context_features` (behavior plus the uses
of each feature the catalog names, rule-segment flags, the request's device, the cluster one-hot, the
activation probability and a bias term). Per-feature uses let the bandit tell apart users who differ
only in which feature they use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from server.base.clock import HOUR_MS
from server.ingest.profiles import Profile

FIRST_SEEN_CAP_HOURS = 720.0  # 30 days: "hours since first seen" is scaled to [0, 1] by this
LAST_SEEN_CAP_HOURS = 168.0  # 7 days: "hours since last seen" is scaled to [0, 1] by this
COUNT_CAP = 1e9  # counts above this are treated as this (keeps log1p finite and bounded)
MAX_TRACKED_FEATURES = 16  # product features with a context feature of their own (uses_<feature>), at most

CHANNEL_FEATURES = ("web", "ios", "android", "email")
DEVICE_FEATURES = ("desktop", "mobile")  # "mobile" counts mobile and tablet
MOBILE_DEVICES = frozenset({"mobile", "tablet", "phone"})
MOBILE_CHANNELS = frozenset({"ios", "android"})

BEHAVIOR_NAMES: tuple[str, ...] = (
    "log_sessions",
    "log_events",
    "log_distinct_features",
    "log_screens_skipped",
    "log_tutorials_completed",
    "since_first_seen",
    "since_last_seen",
    *(f"channel_{c}" for c in CHANNEL_FEATURES),
    *(f"device_{d}" for d in DEVICE_FEATURES),
)
FLAG_NAMES: tuple[str, ...] = ("engaged", "power_user", "consistent", "request_mobile")


@dataclass(frozen=True, slots=True)
class FeatureSpace:
    """The fixed, named order of context features for a catalog with ``n_clusters`` clusters and the product
    ``features`` whose uses are tracked (:func:`tracked_features`).

    >>> space = FeatureSpace(2, ("reports",))
    >>> space.dim, space.index("uses_reports"), space.names[-1]
    (22, 13, 'bias')
    """

    n_clusters: int
    features: tuple[str, ...] = ()
    names: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = (BEHAVIOR_NAMES + tuple(f"uses_{f}" for f in self.features) + FLAG_NAMES
                 + tuple(f"cluster_{k}" for k in range(self.n_clusters)) + ("activation_prob", "bias"))
        object.__setattr__(self, "names", names)  # feature names in vector order, computed once

    @property
    def dim(self) -> int:
        """Vector length d (``len(names)``)."""
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of ``name`` in the vector (ValueError if it is not a feature)."""
        return self.names.index(name)

    def vector(self, features: Mapping[str, float]) -> np.ndarray:
        """The features as a float64 vector in :attr:`names` order (absent names are 0)."""
        return np.fromiter((float(features.get(n, 0.0)) for n in self.names), dtype=np.float64, count=len(self.names))


def tracked_features(step_features: Iterable[str | None], advanced_features: Iterable[str]) -> tuple[str, ...]:
    """The product features that get a context feature of their own: those the catalog's steps are about, then
    the advanced features of the power-user segment, each once, at most :data:`MAX_TRACKED_FEATURES`.

    >>> tracked_features(["reports", None, "api"], ["api", "webhooks"])
    ('reports', 'api', 'webhooks')
    """
    out: list[str] = []
    for f in (*step_features, *advanced_features):
        if f and f not in out:
            out.append(f)
    return tuple(out[:MAX_TRACKED_FEATURES])


_LOG1P_TABLE = tuple(math.log1p(i) for i in range(1024))  # log1p of small counts, looked up (same values)
_CHANNEL_KEYS = tuple((c, f"channel_{c}") for c in CHANNEL_FEATURES)

# What behavior_features reads of a profile, kept so the vector can be computed later (see behavior_inputs):
# (sessions, event_count, distinct features, screens skipped, tutorials completed, first seen, last seen,
#  channel counts, device type counts, now).
BehaviorInputs = tuple[int, int, int, int, int, int, int, tuple[tuple[str, int], ...], tuple[tuple[str, int], ...], int]


def _log_count(n: float) -> float:
    if n.__class__ is int and 0 <= n < 1024:
        return _LOG1P_TABLE[n]
    return math.log1p(min(max(float(n), 0.0), COUNT_CAP))


def _scaled_hours(delta_ms: float, cap_hours: float) -> float:
    hours = max(float(delta_ms), 0.0) / HOUR_MS
    return min(hours, cap_hours) / cap_hours


def _behavior(sessions: int, events: int, distinct_features: int, skipped: int, tutorials: int, first_ms: int,
              last_ms: int, channels: Mapping[str, int], devices: Mapping[str, int], now_ms: int) -> dict[str, float]:
    started = first_ms > 0
    x: dict[str, float] = {
        "log_sessions": _log_count(sessions),
        "log_events": _log_count(events),
        "log_distinct_features": _log_count(distinct_features),
        "log_screens_skipped": _log_count(skipped),
        "log_tutorials_completed": _log_count(tutorials),
        "since_first_seen": _scaled_hours(now_ms - first_ms, FIRST_SEEN_CAP_HOURS) if started else 0.0,
        "since_last_seen": _scaled_hours(now_ms - last_ms, LAST_SEEN_CAP_HOURS) if started else 0.0,
    }
    # Shares of positive counts among channels / device types (mobile counts every MOBILE_DEVICES name).
    total = 0
    for v in channels.values():
        if v > 0:
            total += v
    for c, key in _CHANNEL_KEYS:
        v = channels.get(c, 0)
        x[key] = (v if v > 0 else 0) / total if total > 0 else 0.0
    total = desktop = mobile = 0
    for name, v in devices.items():
        if v > 0:
            total += v
            if name == "desktop":
                desktop += v
            elif name in MOBILE_DEVICES:
                mobile += v
    x["device_desktop"] = desktop / total if total > 0 else 0.0
    x["device_mobile"] = mobile / total if total > 0 else 0.0
    return x


def behavior_features(profile: Profile, now_ms: int) -> dict[str, float]:
    """Counts (log1p), recency (scaled to [0, 1], capped) and channel/device shares of a profile.

    These are the inputs of the clustering and the activation model: every value is finite,
    counts are >= 0 and shares and recencies are within [0, 1].
    """
    return _behavior(profile.sessions, profile.event_count, len(profile.features_used), profile.screens_skipped,
                     profile.tutorials_completed, profile.first_seen_ms, profile.last_seen_ms, profile.channels,
                     profile.device_types, now_ms)


def behavior_inputs(profile: Profile, now_ms: int) -> BehaviorInputs:
    """What :func:`behavior_features` of ``profile`` at ``now_ms`` depends on, as a small tuple: cheaper to take
    than the features themselves, and :func:`features_of_inputs` gives exactly the same features later."""
    return (profile.sessions, profile.event_count, len(profile.features_used), profile.screens_skipped,
            profile.tutorials_completed, profile.first_seen_ms, profile.last_seen_ms,
            tuple(profile.channels.items()), tuple(profile.device_types.items()), now_ms)


def features_of_inputs(inputs: BehaviorInputs) -> dict[str, float]:
    """The :func:`behavior_features` of a profile as it was when :func:`behavior_inputs` was taken."""
    s, e, f, sk, t, first, last, channels, devices, now = inputs
    return _behavior(s, e, f, sk, t, first, last, dict(channels), dict(devices), now)


def request_mobile(request_context: Mapping[str, str] | None) -> float:
    """1.0 when the request comes from a phone or tablet (``device_type`` or ``channel`` context), else 0."""
    if not request_context:
        return 0.0
    device = request_context.get("device_type", "").lower()
    channel = request_context.get("channel", "").lower()
    return 1.0 if device in MOBILE_DEVICES or channel in MOBILE_CHANNELS else 0.0


def context_features(
    profile: Profile,
    now_ms: int,
    request_context: Mapping[str, str] | None,
    *,
    space: FeatureSpace,
    segments: Iterable[str] = (),
    cluster: int | None = None,
    activation_prob: float = 0.5,
) -> dict[str, float]:
    """All context features of ``space`` for one decision, given the user's rule segments, cluster
    and activation probability (the River models' predictions: :class:`server.learn.segment_model.SegmentModel`)."""
    seg = set(segments)
    x = behavior_features(profile, now_ms)
    used = profile.features_used
    for f in space.features:
        n = used.get(f, 0)
        x[f"uses_{f}"] = _LOG1P_TABLE[n] if n < 1024 else math.log1p(min(n, COUNT_CAP))
    x["engaged"] = 1.0 if "engaged" in seg else 0.0
    x["power_user"] = 1.0 if "power_user" in seg else 0.0
    x["consistent"] = 1.0 if "consistent" in seg else 0.0
    x["request_mobile"] = request_mobile(request_context)
    for k in range(space.n_clusters):
        x[f"cluster_{k}"] = 1.0 if cluster == k else 0.0
    p = float(activation_prob)
    x["activation_prob"] = min(max(p, 0.0), 1.0) if math.isfinite(p) else 0.5
    x["bias"] = 1.0
    return x
