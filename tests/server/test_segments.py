"""Tests of behavioral segments, context features and the online River models (clusters, activation)."""
from __future__ import annotations

import math
import random
import tomllib
from collections import Counter
from math import comb
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.base.catalog import Catalog, demo_catalog_text, load_catalog, parse_catalog
from server.learn.features import (BEHAVIOR_NAMES, CHANNEL_FEATURES, COUNT_CAP, FIRST_SEEN_CAP_HOURS, LAST_SEEN_CAP_HOURS,
                             MOBILE_DEVICES, FeatureSpace, behavior_features, behavior_inputs, features_of_inputs,
                             request_mobile)
from server.base.records import StoredEvent
from server.ingest.profiles import Profile, ProfileBook
from server.learn.segment_model import distinct_days, is_consistent, rule_segments
from server.learn.segments import Segmenter

H = 3_600_000
DAY = 24 * H
T0 = 1_700_010_000_000  # 2023-11-15T01:00:00Z (one hour after a UTC midnight)


def catalog_with(**sections: dict[str, Any]) -> Catalog:
    raw = tomllib.loads(demo_catalog_text())
    for name, values in sections.items():
        raw[name].update(values)
    return parse_catalog(raw)


def profile_from(events: list[tuple[str, int, dict[str, str]]], subject: str = "u1") -> Profile:
    """Build a profile through ProfileBook from (name, offset_ms, fields) triples."""
    book = ProfileBook()
    p = book.get_or_create(subject)
    for i, (name, dt, extra) in enumerate(events):
        p = book.apply(StoredEvent(f"e{i}", subject, name, T0 + dt, T0 + dt, **extra))
    return p


def feature_events(times: dict[str, int]) -> list[tuple[str, int, dict[str, str]]]:
    return [("session_start", 0, {})] + [("feature_used", t, {"feature": f}) for f, t in times.items()]


# ---------------------------------------------------------------------------------------------
# Rule segments


def test_engaged_when_three_features_within_48h_inclusive() -> None:
    cat = load_catalog(None)
    p = profile_from(feature_events({"reports": 0, "dashboards": H, "templates": 48 * H}))
    assert rule_segments(p, cat)[0] == "engaged"


def test_at_risk_when_third_feature_comes_just_after_48h() -> None:
    cat = load_catalog(None)
    p = profile_from(feature_events({"reports": 0, "dashboards": H, "templates": 48 * H + 1}))
    assert rule_segments(p, cat)[0] == "at_risk"


def test_at_risk_with_repeated_uses_of_few_features() -> None:
    cat = load_catalog(None)
    events = [("session_start", 0, {})] + [("feature_used", i * H, {"feature": "reports"}) for i in range(10)]
    assert rule_segments(profile_from(events), cat)[0] == "at_risk"


def test_engaged_threshold_is_configurable() -> None:
    cat = catalog_with(segments={"engaged_min_features": 2, "engaged_window_hours": 1})
    p = profile_from(feature_events({"reports": 0, "dashboards": H}))
    assert rule_segments(p, cat)[0] == "engaged"
    p = profile_from(feature_events({"reports": 0, "dashboards": H + 1}))
    assert rule_segments(p, cat)[0] == "at_risk"


def test_power_user_when_advanced_feature_within_first_week() -> None:
    cat = load_catalog(None)
    assert "automations" in cat.segments.advanced_features
    p = profile_from(feature_events({"reports": 0, "automations": 7 * DAY}))
    assert rule_segments(p, cat)[1] == "power_user"
    p = profile_from(feature_events({"reports": 0, "automations": 7 * DAY + 1}))
    assert rule_segments(p, cat)[1] == "new_explorer"
    p = profile_from(feature_events({"reports": 0, "dashboards": H, "templates": 2 * H}))
    assert rule_segments(p, cat)[1] == "new_explorer"


def sessions_at(offsets: list[int]) -> Profile:
    return profile_from([("session_start", dt, {}) for dt in offsets])


def test_consistent_needs_enough_sessions_on_enough_distinct_days() -> None:
    cat = load_catalog(None)  # 3 sessions on >= 2 distinct days
    assert cat.guardrails.min_sessions_for_personalization == 3
    assert cat.guardrails.min_distinct_days_for_personalization == 2
    assert "consistent" not in rule_segments(sessions_at([0, H, 2 * H]), cat)  # one day
    assert "consistent" not in rule_segments(sessions_at([0, DAY]), cat)  # two sessions only
    assert "consistent" in rule_segments(sessions_at([0, H, DAY]), cat)
    assert not is_consistent(sessions_at([0]), cat.guardrails)


def test_consistent_threshold_is_configurable() -> None:
    cat = catalog_with(guardrails={"min_sessions_for_personalization": 4, "min_distinct_days_for_personalization": 3})
    assert not is_consistent(sessions_at([0, DAY, 2 * DAY]), cat.guardrails)
    assert not is_consistent(sessions_at([0, 1, DAY, DAY + 1]), cat.guardrails)
    assert is_consistent(sessions_at([0, DAY, 2 * DAY, 2 * DAY + 1]), cat.guardrails)


def test_distinct_days_are_utc_calendar_days() -> None:
    midnight = 1_700_006_400_000  # 2023-11-15T00:00:00Z
    assert midnight % DAY == 0
    assert distinct_days([midnight - 1, midnight]) == 2
    assert distinct_days([midnight, midnight + DAY - 1]) == 1


def test_activated_segment_after_first_value() -> None:
    cat = load_catalog(None)
    assert cat.segments.activation_step == "first_project"
    p = profile_from([("session_start", 0, {}), ("step_completed", H, {"step_id": "profile_setup"})])
    assert "activated" not in rule_segments(p, cat)
    p = profile_from([("session_start", 0, {}), ("step_completed", H, {"step_id": "first_project"})])
    assert "activated" in rule_segments(p, cat)


def test_activation_on_a_custom_event() -> None:
    cat = catalog_with(segments={"activation_event": "project_shared", "activation_step": ""})
    assert cat.segments.activation_step is None
    p = profile_from([("session_start", 0, {}), ("project_shared", H, {})])
    assert "activated" in rule_segments(p, cat)


def test_empty_profile_segments() -> None:
    seg = Segmenter(load_catalog(None))
    r = seg.predict_one(Profile("nobody"), T0)
    assert r.segments == ["at_risk", "new_explorer"]
    assert all(math.isfinite(v) for v in r.features.values())


# ---------------------------------------------------------------------------------------------
# Feature space


def test_feature_space_has_stable_names_and_dimension() -> None:
    space = FeatureSpace(4)
    assert space.dim == len(space.names) == 23
    assert len(set(space.names)) == space.dim
    assert space.names[-1] == "bias" and space.names[-2] == "activation_prob"
    assert [n for n in space.names if n.startswith("cluster_")] == ["cluster_0", "cluster_1", "cluster_2", "cluster_3"]
    assert FeatureSpace(2).dim == 21
    assert space.index("bias") == space.dim - 1


def test_predict_one_vector_matches_named_features() -> None:
    seg = Segmenter(load_catalog(None))
    space = seg.space
    profiles = [
        Profile("empty"),
        profile_from(feature_events({"reports": 0, "automations": H, "api": 2 * H})),
        sessions_at([0, DAY, 2 * DAY]),
    ]
    for p in profiles:
        seg.learn_one(p, T0 + 3 * DAY)
    for p in profiles:
        r = seg.predict_one(p, T0 + 3 * DAY)
        assert r.vector.shape == (space.dim,) and r.vector.dtype == np.float64
        assert set(r.features) == set(space.names)
        assert r.vector.tolist() == [r.features[n] for n in space.names]
        assert r.features["bias"] == 1.0
        assert sum(r.features[f"cluster_{k}"] for k in range(4)) == 1.0
        assert f"cluster:{[k for k in range(4) if r.features[f'cluster_{k}'] == 1.0][0]}" in r.segments


def test_behavior_features_values() -> None:
    events = [
        ("session_start", 0, {"channel": "web", "device_type": "desktop"}),
        ("feature_used", H, {"feature": "reports", "channel": "web", "device_type": "desktop"}),
        ("session_start", 2 * H, {"channel": "ios", "device_type": "mobile"}),
        ("screen_skipped", 3 * H, {"channel": "ios", "device_type": "tablet"}),
    ]
    p = profile_from(events)
    x = behavior_features(p, T0 + 3 * H + 84 * H)
    assert x["log_sessions"] == pytest.approx(math.log1p(2))
    assert x["log_events"] == pytest.approx(math.log1p(4))
    assert x["log_distinct_features"] == pytest.approx(math.log1p(1))
    assert x["log_screens_skipped"] == pytest.approx(math.log1p(1))
    assert x["channel_web"] == 0.5 and x["channel_ios"] == 0.5 and x["channel_email"] == 0.0
    assert x["device_desktop"] == 0.5 and x["device_mobile"] == 0.5  # tablet counts as mobile
    assert x["since_last_seen"] == pytest.approx(84 / 168)
    assert x["since_first_seen"] == pytest.approx(87 / 720)
    assert behavior_features(p, T0 + 400 * DAY)["since_first_seen"] == 1.0  # capped
    assert behavior_features(p, T0 - DAY)["since_last_seen"] == 0.0  # clock behind: no negatives
    assert list(x) == list(BEHAVIOR_NAMES)


def test_request_context_marks_mobile_requests() -> None:
    assert request_mobile({"device_type": "mobile"}) == 1.0
    assert request_mobile({"channel": "android"}) == 1.0
    assert request_mobile({"device_type": "desktop", "channel": "web"}) == 0.0
    assert request_mobile(None) == 0.0
    seg = Segmenter(load_catalog(None))
    p = sessions_at([0])
    assert seg.predict_one(p, T0, {"device_type": "tablet"}).features["request_mobile"] == 1.0
    assert seg.context_features(p, T0, {})["request_mobile"] == 0.0


def test_flags_follow_rule_segments() -> None:
    seg = Segmenter(load_catalog(None))
    p = profile_from(feature_events({"reports": 0, "automations": H, "api": 2 * H}) +
                     [("session_start", DAY, {}), ("session_start", DAY + H, {})])
    segments, features = seg.enrich(p, T0 + 2 * DAY)
    assert {"engaged", "power_user", "consistent"} <= set(segments)
    assert features["engaged"] == features["power_user"] == features["consistent"] == 1.0


counts = st.integers(min_value=0, max_value=10**12)
times = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100


@st.composite
def random_profiles(draw: st.DrawFn) -> Profile:
    p = Profile("h")
    p.first_seen_ms = draw(times)
    p.last_seen_ms = draw(times)
    p.event_count = draw(counts)
    p.sessions = draw(counts)
    p.session_starts_ms = draw(st.lists(times, max_size=8))
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
    p.features_used = draw(st.dictionaries(names, counts, max_size=6))
    p.feature_first_ms = {f: draw(times) for f in p.features_used}
    p.channels = draw(st.dictionaries(st.sampled_from(["web", "ios", "android", "email", "push", "x"]), counts))
    p.device_types = draw(st.dictionaries(st.sampled_from(["desktop", "mobile", "tablet", "tv"]), counts))
    p.screens_skipped = draw(counts)
    p.tutorials_completed = draw(counts)
    p.steps_completed = draw(st.dictionaries(st.sampled_from(["welcome", "first_project"]), times))
    return p


_HYPO_SEGMENTER = Segmenter(load_catalog(None))


@settings(max_examples=150, deadline=None)
@given(profile=random_profiles(), now=st.integers(min_value=-10**13, max_value=10**13),
       ctx=st.dictionaries(st.sampled_from(["device_type", "channel", "locale"]), st.text(max_size=8), max_size=3))
def test_features_are_finite_for_random_profiles(profile: Profile, now: int, ctx: dict[str, str]) -> None:
    seg = _HYPO_SEGMENTER
    seg.learn_one(profile, now)
    r = seg.predict_one(profile, now, ctx)
    assert r.vector.shape == (seg.space.dim,)
    assert np.all(np.isfinite(r.vector))
    x = behavior_features(profile, now)
    for name in BEHAVIOR_NAMES:
        assert 0.0 <= x[name] <= (math.log1p(1e9) if name.startswith("log_") else 1.0)
    assert 0.0 <= r.features["activation_prob"] <= 1.0


def reference_behavior_features(p: Profile, now_ms: int) -> dict[str, float]:
    """behavior_features written the plain way (the specification the fast version must equal exactly)."""
    def log_count(n: float) -> float:
        return math.log1p(min(max(float(n), 0.0), COUNT_CAP))

    def scaled(delta_ms: float, cap: float) -> float:
        return min(max(float(delta_ms), 0.0) / H, cap) / cap

    def shares(counts: dict[str, int], keys: tuple[str, ...], groups: dict[str, frozenset[str]]) -> dict[str, float]:
        total = sum(max(v, 0) for v in counts.values())
        return {k: (sum(max(v, 0) for n, v in counts.items() if n in groups.get(k, {k})) / total if total > 0 else 0.0)
                for k in keys}

    started = p.first_seen_ms > 0
    x = {"log_sessions": log_count(p.sessions), "log_events": log_count(p.event_count),
         "log_distinct_features": log_count(len(p.features_used)), "log_screens_skipped": log_count(p.screens_skipped),
         "log_tutorials_completed": log_count(p.tutorials_completed),
         "since_first_seen": scaled(now_ms - p.first_seen_ms, FIRST_SEEN_CAP_HOURS) if started else 0.0,
         "since_last_seen": scaled(now_ms - p.last_seen_ms, LAST_SEEN_CAP_HOURS) if started else 0.0}
    x.update({f"channel_{c}": v for c, v in shares(p.channels, CHANNEL_FEATURES, {}).items()})
    x.update({f"device_{d}": v for d, v in shares(p.device_types, ("desktop", "mobile"), {"mobile": MOBILE_DEVICES}).items()})
    return x


small_counts = st.one_of(st.integers(min_value=0, max_value=2000), counts)


@settings(max_examples=200, deadline=None)
@given(profile=random_profiles(), now=st.integers(min_value=-10**13, max_value=10**13),
       sessions=small_counts, events=small_counts)
def test_behavior_features_equal_the_reference_and_their_inputs(profile: Profile, now: int, sessions: int,
                                                               events: int) -> None:
    profile.sessions, profile.event_count = sessions, events
    x = behavior_features(profile, now)
    assert list(x.items()) == list(reference_behavior_features(profile, now).items())  # same order, same bits
    inputs = behavior_inputs(profile, now)
    assert features_of_inputs(inputs) == x
    profile.event_count += 1  # the inputs are a copy: later changes of the profile do not reach them
    profile.channels["web"] = profile.channels.get("web", 0) + 5
    profile.device_types.clear()
    assert features_of_inputs(inputs) == x


def test_activation_learns_the_snapshot_taken_before_the_label() -> None:
    """The positive label is learned on the vector of the last learn_one call before first value, not on the
    profile as it is when the label comes (the snapshot is a copy)."""
    cat = load_catalog(None)
    a, b = Segmenter(cat), Segmenter(cat)
    p = profile_from([("session_start", 0, {"channel": "web"}), ("feature_used", H, {"feature": "reports"})])
    a.learn_one(p, T0 + H)
    before = behavior_features(p, T0 + H)
    p.channels["ios"] = 7
    p.event_count += 3
    p.steps_completed["first_project"] = T0 + 2 * H
    a.learn_one(p, T0 + 2 * H)
    b._m.activation.learn_one(before, True)
    probe = behavior_features(p, T0 + 3 * H)
    assert a.stats["activation_learned"] == 1 and a.stats["activation_positives"] == 1
    assert a._m.activation.predict_proba_one(probe) == b._m.activation.predict_proba_one(probe)


# ---------------------------------------------------------------------------------------------
# Online clustering


def adjusted_rand_index(a: list[int], b: list[int]) -> float:
    n = len(a)
    pairs = sum(comb(v, 2) for v in Counter(zip(a, b)).values())
    sa = sum(comb(v, 2) for v in Counter(a).values())
    sb = sum(comb(v, 2) for v in Counter(b).values())
    expected = sa * sb / comb(n, 2)
    top = (sa + sb) / 2
    return (pairs - expected) / (top - expected) if top != expected else 1.0


def synthetic_user(i: int, group: int, rng: random.Random) -> Profile:
    """Group 0: desktop web explorers with many sessions and features; group 1: mobile skimmers."""
    p = Profile(f"u{i}")
    p.first_seen_ms = T0
    if group == 0:
        p.last_seen_ms = T0 + rng.randint(1, 10) * H
        p.sessions = rng.randint(6, 12)
        p.event_count = p.sessions * rng.randint(8, 15)
        feats = rng.sample(["reports", "automations", "dashboards", "api", "webhooks", "integrations"], rng.randint(3, 6))
        p.features_used = {f: rng.randint(1, 9) for f in feats}
        p.feature_first_ms = {f: T0 + rng.randint(0, 40) * H for f in feats}
        p.channels = {"web": p.event_count}
        p.device_types = {"desktop": p.event_count}
        p.tutorials_completed = rng.randint(1, 4)
    else:
        p.last_seen_ms = T0 + rng.randint(1, 3) * H
        p.sessions = rng.randint(1, 2)
        p.event_count = rng.randint(2, 6)
        p.channels = {"ios": p.event_count}
        p.device_types = {"mobile": p.event_count}
        p.screens_skipped = rng.randint(2, 6)
    return p


@pytest.mark.parametrize("n_clusters", [2, 4])
def test_clustering_separates_two_behavior_groups(n_clusters: int) -> None:
    cat = catalog_with(segments={"n_clusters": n_clusters, "cluster_seed": 3})
    seg = Segmenter(cat)
    rng = random.Random(11)
    users = [synthetic_user(i, i % 2, rng) for i in range(200)]
    rng.shuffle(users)
    now = T0 + DAY
    for p in users:
        seg.learn_one(p, now)
    found = [seg.cluster_of(p, now) for p in users]
    truth = [int(p.subject[1:]) % 2 for p in users]
    assert adjusted_rand_index(truth, found) >= 0.9
    r = seg.predict_one(users[0], now)
    assert f"cluster:{found[0]}" in r.segments


def test_adjusted_rand_index_helper() -> None:
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0.0


def test_direct_cluster_learning_equals_the_river_pipeline() -> None:
    """The segmenter runs StandardScaler | KMeans itself on River's state: same predictions, same state."""
    from server.learn.segments import _cluster_parts, _learn_cluster, _new_models, _predict_cluster
    cfg = load_catalog(None).segments
    river, direct = _new_models(cfg), _new_models(cfg)
    parts = _cluster_parts(direct.clusterer)
    assert parts is not None
    rng = random.Random(3)
    for i in range(600):
        x = {n: rng.random() * (5.0 if i % 3 else 1.0) for n in BEHAVIOR_NAMES}
        assert _predict_cluster(parts, x) == river.clusterer.predict_one(x)
        river.clusterer.learn_one(x)
        _learn_cluster(parts, x)
    (a_scaler, a_km), (b_scaler, b_km) = _cluster_parts(river.clusterer), parts
    assert (a_scaler.counts, a_scaler.means, a_scaler.vars) == (b_scaler.counts, b_scaler.means, b_scaler.vars)
    for k in a_km.centers:
        assert dict(b_km.centers[k]) == pytest.approx(dict(a_km.centers[k]), rel=1e-12, abs=1e-12)
    assert _cluster_parts(river.activation) is None  # anything else goes through River itself


def test_no_cluster_before_learning() -> None:
    seg = Segmenter(load_catalog(None))
    p = sessions_at([0])
    assert seg.cluster_of(p, T0) is None
    assert not any(s.startswith("cluster:") for s in seg.predict_one(p, T0).segments)
    assert seg.predict_one(p, T0).features["activation_prob"] == 0.5


def test_learning_is_throttled_per_session_or_n_events() -> None:
    cat = catalog_with(segments={"learn_every_events": 3})
    seg = Segmenter(cat)
    book = ProfileBook()
    p = book.apply(StoredEvent("a", "u", "session_start", T0, T0))
    seg.learn_one(p, T0)
    seg.learn_one(p, T0)  # same state: learned once
    assert seg.stats["cluster_learned"] == 1
    for i in range(2):
        p = book.apply(StoredEvent(f"f{i}", "u", "feature_used", T0 + i + 1, T0, feature="reports"))
        seg.learn_one(p, T0 + i + 1)
    assert seg.stats["cluster_learned"] == 1  # 2 more events, same session
    p = book.apply(StoredEvent("f3", "u", "feature_used", T0 + 5, T0, feature="reports"))
    seg.learn_one(p, T0 + 5)
    assert seg.stats["cluster_learned"] == 2  # 3 events since the last learn
    p = book.apply(StoredEvent("s2", "u", "session_start", T0 + 6, T0))
    seg.learn_one(p, T0 + 6)
    assert seg.stats["cluster_learned"] == 3  # a new session
    assert seg.forget("u") and not seg.forget("u")
    assert seg.stats["subjects"] == 0


# ---------------------------------------------------------------------------------------------
# Activation model


def test_activation_labels_and_probability_ranking() -> None:
    seg = Segmenter(load_catalog(None))
    rng = random.Random(5)
    for i in range(300):
        group = i % 2
        p = synthetic_user(i, group, rng)
        seg.learn_one(p, T0 + DAY)  # snapshot before the label is known
        if group == 0:  # explorers reach first value
            p.steps_completed["first_project"] = T0 + DAY + H
            p.event_count += 1
            seg.learn_one(p, T0 + DAY + H)
        else:  # skimmers go silent; their window closes
            assert seg.label_expired(T0 + 8 * DAY + 1) == 1
    stats = seg.stats
    assert stats["activation_learned"] == 300 and stats["activation_positives"] == 150
    assert seg.label_expired(T0 + 9 * DAY) == 0  # every window labeled once
    probe_rng = random.Random(99)
    explorer = synthetic_user(1000, 0, probe_rng)
    skimmer = synthetic_user(1001, 1, probe_rng)
    p_explorer = seg.activation_probability(explorer, T0 + DAY)
    p_skimmer = seg.activation_probability(skimmer, T0 + DAY)
    assert p_explorer > 0.7 > 0.3 > p_skimmer


def test_activation_label_is_learned_once() -> None:
    seg = Segmenter(load_catalog(None))
    p = profile_from([("session_start", 0, {}), ("step_completed", H, {"step_id": "first_project"})])
    seg.learn_one(p, T0 + H)
    seg.learn_one(p, T0 + 2 * H)
    assert seg.stats["activation_learned"] == 1 and seg.stats["activation_positives"] == 1


def test_negative_label_when_window_passes_on_a_late_event() -> None:
    seg = Segmenter(load_catalog(None))
    p = sessions_at([0])
    seg.learn_one(p, T0)
    assert seg.stats["activation_learned"] == 0
    p2 = sessions_at([0, 8 * DAY])
    seg.learn_one(p2, T0 + 8 * DAY)
    assert seg.stats["activation_learned"] == 1 and seg.stats["activation_positives"] == 0


# ---------------------------------------------------------------------------------------------
# State


def trained_segmenter(cat: Catalog) -> tuple[Segmenter, list[Profile]]:
    seg = Segmenter(cat)
    rng = random.Random(21)
    users = [synthetic_user(i, i % 2, rng) for i in range(60)]
    for p in users:
        seg.learn_one(p, T0 + DAY)
        if int(p.subject[1:]) % 2 == 0:
            p.steps_completed["first_project"] = T0 + 2 * DAY
            seg.learn_one(p, T0 + 2 * DAY)
    return seg, users


def test_state_round_trip_gives_same_predictions() -> None:
    cat = load_catalog(None)
    seg, users = trained_segmenter(cat)
    restored = Segmenter.from_state(seg.to_state(), cat)
    assert restored.stats == seg.stats
    now = T0 + 3 * DAY
    for p in users:
        a, b = seg.predict_one(p, now), restored.predict_one(p, now)
        assert a.segments == b.segments
        assert np.array_equal(a.vector, b.vector)
    # Both keep learning identically.
    extra = synthetic_user(500, 0, random.Random(1))
    seg.learn_one(extra, now)
    restored.learn_one(extra, now)
    for p in users[:10]:
        assert np.array_equal(seg.predict_one(p, now).vector, restored.predict_one(p, now).vector)


def test_state_from_other_segment_settings_is_refused() -> None:
    seg, _ = trained_segmenter(load_catalog(None))
    other = catalog_with(segments={"n_clusters": 3})
    with pytest.raises(ValueError, match="n_clusters"):
        Segmenter.from_state(seg.to_state(), other)
    with pytest.raises(ValueError, match="not a segmenter state"):
        Segmenter.from_state(b"garbage", other)


def test_state_ignores_unrelated_catalog_changes() -> None:
    seg, users = trained_segmenter(load_catalog(None))
    other = catalog_with(bandit={"epsilon": 0.05})
    restored = Segmenter.from_state(seg.to_state(), other)
    assert restored.cluster_of(users[0], T0 + DAY) == seg.cluster_of(users[0], T0 + DAY)


def _type_user(feature: str, i: int) -> Profile:
    """A user of one hidden type: three sessions, then five uses of ``feature`` (the only difference)."""
    events = [("session_start", k * 20 * H, {}) for k in range(3)]
    events += [("feature_used", 50 * H + k * H, {"feature": feature}) for k in range(5)]
    return profile_from(events, subject=f"{feature}-{i}")


def test_two_types_differing_only_in_the_feature_they_use_are_told_apart() -> None:
    """Users who differ only in which feature they use: behavior features (the River models' input) are the
    same, the context has each catalog feature's uses, and the server's bandit learns to give each type the
    step that works for it."""
    from bandits.policies import build_policy

    catalog = load_catalog(None)
    seg = Segmenter(catalog)
    now = T0 + 60 * H
    a, b = _type_user("reports", 0), _type_user("dashboards", 0)
    assert behavior_features(a, now) == behavior_features(b, now)
    xa, xb = (seg.predict_one(p, now).vector for p in (a, b))
    space = seg.space
    assert xa[space.index("uses_reports")] > 0 and xb[space.index("uses_reports")] == 0
    assert xb[space.index("uses_dashboards")] > 0 and xa[space.index("uses_dashboards")] == 0
    b_cfg = catalog.bandit
    policy = build_policy(b_cfg.algorithm, 2, space.dim, alpha=b_cfg.alpha, l2=b_cfg.l2)
    rng = random.Random(3)
    for i in range(200):  # type "reports" succeeds with step 0, type "dashboards" with step 1
        feature = rng.choice(("reports", "dashboards"))
        x = seg.predict_one(_type_user(feature, i), now).vector
        arm = rng.randrange(2)
        policy.learn_one(x, arm, float(arm == (0 if feature == "reports" else 1)))
    assert int(np.argmax(policy.scores(xa))) == 0 and int(np.argmax(policy.scores(xb))) == 1
