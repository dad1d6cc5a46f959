"""The workers' segment model (server/learn/segment_model.py) predicts what the learner's River models predict, from
the plain numbers a snapshot holds; a worker decides with it, and a snapshot an earlier version wrote (pickled River
models) is skipped with a log line until the learner publishes its next."""
from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.utils.math import sigmoid

from server.base.catalog import load_catalog
from server.learn.features import BEHAVIOR_NAMES
from server.learn.segment_model import SegmentModel
from server.learn.segments import Segmenter
from server.learn.snapshot import STATE_FORMAT, UnusableSnapshot, read_snapshot
from tests.server.engine_support import DAY_MS, HOUR_MS, T0, Harness, run_on

CATALOG = load_catalog(None)
TOLERANCE = 1e-9

# What a behavior vector holds (counts, hours, scores): 0 or at least 1e-9 in magnitude. Below that (e.g. 4e-162) a
# scaler's variance underflows and River's own division overflows, which no profile the server builds reaches.
values = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(min_value=-40.0, max_value=40.0, allow_nan=False)
                   .filter(lambda v: v == 0.0 or abs(v) >= 1e-9))
# Vectors over the behavior features, some of them missing (never seen by the scalers, or absent in a probe).
vectors = st.dictionaries(st.sampled_from(BEHAVIOR_NAMES), values, min_size=1, max_size=len(BEHAVIOR_NAMES))
unseen = st.dictionaries(st.sampled_from(["uses_x", "zz_new"]), values, max_size=2)  # features no model saw
streams = st.lists(st.tuples(vectors, st.one_of(st.none(), st.booleans())), max_size=40)


def trained(stream: list[tuple[dict[str, float], bool | None]]) -> Segmenter:
    """A segmenter whose River pipelines learned ``stream`` through River's own ``learn_one``: every vector by the
    clustering, the labeled ones by the activation model."""
    seg = Segmenter(CATALOG)
    m = seg._m  # noqa: SLF001
    for x, label in stream:
        m.clusterer.learn_one(x)
        m.cluster_learned += 1
        if label is not None:
            m.activation.learn_one(x, label)
            m.activation_learned += 1
            m.positives += int(label)
    return seg


def as_a_worker_reads_it(seg: Segmenter) -> SegmentModel:
    return SegmentModel.from_state(pickle.loads(pickle.dumps(seg.model().to_state())))


def river_distance(seg: Segmenter, x: dict[str, float], c: int) -> float:
    """River's squared distance of ``x`` (scaled) to centre ``c``, as ``KMeans.predict_one`` sums it."""
    scaler, km = seg._m.clusterer.steps["StandardScaler"], seg._m.clusterer.steps["KMeans"]  # noqa: SLF001
    z = scaler.transform_one(x)
    center = km.centers[c]
    return sum((center[k] - z.get(k, 0)) ** 2 for k in {*center, *z})


@settings(max_examples=200, deadline=None)
@given(stream=streams, probes=st.lists(st.tuples(vectors, unseen), min_size=1, max_size=5))
def test_the_segment_model_predicts_as_the_river_models(stream: list[tuple[dict[str, float], bool | None]],
                                                        probes: list[tuple[dict[str, float], dict[str, Any]]]) -> None:
    seg = trained(stream)
    model = as_a_worker_reads_it(seg)
    m = seg._m  # noqa: SLF001
    assert (model.cluster_learned, model.activation_learned, model.positives) == (
        m.cluster_learned, m.activation_learned, m.positives)
    for x, extra in probes:
        k, p = model.predict(x)
        k_extra, p_extra = model.predict({**x, **extra})
        assert k_extra == k  # a feature no model saw changes nothing
        if not m.cluster_learned:
            assert k is None
        else:
            river_k = m.clusterer.predict_one(x)
            # the same centre, unless two centres are at the same distance (sums added in another order)
            assert k == river_k or math.isclose(river_distance(seg, x, k), river_distance(seg, x, river_k),
                                                rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        river_p = m.activation.predict_proba_one({**x, **extra})[True] if m.activation_learned else 0.5
        assert abs(p_extra - river_p) <= TOLERANCE
        assert abs(p - river_p) <= TOLERANCE


def test_zero_variance_and_missing_features_scale_to_zero() -> None:
    """A feature constant in every vector learned (variance 0) and one missing from the vector count 0 after
    scaling, as River's StandardScaler has them."""
    stream = [({**dict.fromkeys(BEHAVIOR_NAMES, float(i % 5)), "device_mobile": 0.25}, i % 2 == 0) for i in range(30)]
    seg = trained(stream)
    model = as_a_worker_reads_it(seg)
    i = model.names.index("device_mobile")
    assert model.cluster_vars[i] == 0.0 and model.activation_vars[i] == 0.0
    probe = {n: 3.0 for n in BEHAVIOR_NAMES if n != "log_events"}
    probe["device_mobile"] = 9.0
    assert model._scaled(probe)[:, i].tolist() == [0.0, 0.0]  # noqa: SLF001
    assert model._scaled(probe)[:, model.names.index("log_events")].tolist() == [0.0, 0.0]  # noqa: SLF001
    assert model.predict(probe)[0] == seg._m.clusterer.predict_one(probe)  # noqa: SLF001
    assert model.predict(probe)[1] == pytest.approx(seg._m.activation.predict_proba_one(probe)[True],  # noqa: SLF001
                                                    abs=TOLERANCE)


def test_probability_is_rivers_clipped_sigmoid() -> None:
    d = len(BEHAVIOR_NAMES)
    for logit in (-45.0, -30.5, -29.5, -3.0, 0.0, 0.7, 29.5, 30.5, 45.0):
        weights = np.zeros(d)
        weights[0] = logit
        model = SegmentModel(BEHAVIOR_NAMES, np.zeros(d), np.zeros(d), np.zeros((4, d)), np.zeros(d), np.ones(d),
                             weights, 0.0, cluster_learned=0, activation_learned=1)
        x = {n: 1.0 if n == BEHAVIOR_NAMES[0] else 0.0 for n in BEHAVIOR_NAMES}
        assert model.predict(x) == (None, float(sigmoid(logit)))


def test_untrained_models_give_no_cluster_and_one_half() -> None:
    model = as_a_worker_reads_it(Segmenter(CATALOG))
    assert model.predict(dict.fromkeys(BEHAVIOR_NAMES, 1.0)) == (None, 0.5)
    assert SegmentModel.untrained(4).predict({}) == (None, 0.5)


def test_a_state_that_is_no_segment_model_is_refused() -> None:
    state = Segmenter(CATALOG).model().to_state()
    for bad in ({}, {**state, "format": 99}, {**state, "centres": [[1.0, 2.0]]}, {**state, "weights": [1.0]},
                {k: v for k, v in state.items() if k != "intercept"}):
        with pytest.raises(ValueError):
            SegmentModel.from_state(bad)


# -- the engine and snapshots ------------------------------------------------------------------------------------
async def _users(h: Harness, n: int) -> list[str]:
    users = [f"u{i}" for i in range(n)]
    for i, uid in enumerate(users):
        t = await h.consistent_user(uid, day=i % 3)
        channel, device = ("web", "desktop") if i % 2 else (("ios", "mobile"), ("email", "tablet"))[i % 4 // 2]
        for j in range(i % 6):  # more sessions, on other channels and devices, for half the users
            await h.event(uid, "session_start", t + (j + 1) * 5 * HOUR_MS, channel=channel, device_type=device)
            await h.event(uid, "screen_skipped", t + (j + 1) * 5 * HOUR_MS + 1, channel=channel)
        await h.event(uid, "feature_used", t + HOUR_MS, feature=f"f{i % 4}")
        if i % 3 == 0:
            await h.event(uid, "step_completed", t + 2 * HOUR_MS, step_id=h.catalog.segments.activation_step)
    return users


def test_the_engine_segments_users_as_the_learners_river_models(tmp_path: Path) -> None:
    """The engine's segments and context vectors (from the snapshot's numbers) equal those the learner's River
    segmenter computes for the same profiles."""
    async def body(h: Harness, engine: Any) -> None:
        users = await _users(h, 24)
        now = T0 + 20 * DAY_MS
        await h.learn(now)
        assert engine.snapshot_version == h.learner.version > 0
        stats = h.learner.segmenter.stats
        assert stats["cluster_learned"] > 20 and stats["activation_learned"] >= 8
        clusters = set()
        for uid in users:
            profile = h.pipeline.profile(uid)
            ours = engine.segments.predict_one(profile, now, {"device_type": "mobile"})
            river = h.learner.segmenter.predict_one(profile, now, {"device_type": "mobile"})
            assert ours.segments == river.segments
            np.testing.assert_allclose(ours.vector, river.vector, rtol=0, atol=TOLERANCE)
            clusters.add(next(s for s in ours.segments if s.startswith("cluster:")))
        assert len(clusters) > 1
    run_on(tmp_path / "e.db", body)


def _old_snapshot_body(h: Harness, engine: Any) -> bytes:
    """A snapshot as the version before this one wrote it: the River models pickled in ``"segmenter"``."""
    return pickle.dumps({"format": STATE_FORMAT, "catalog": h.catalog.version, "arms": list(engine.arms),
                         "features": list(engine.space.names), "policy": engine.decider.policy.to_state(),
                         "segmenter": h.learner.segmenter.to_state(marks=False), "learned": 0, "demoted_rules": []},
                        protocol=pickle.HIGHEST_PROTOCOL)


def test_a_snapshot_of_the_earlier_version_is_skipped_until_the_learner_publishes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(h: Harness, engine: Any) -> None:
        await _users(h, 6)
        old = _old_snapshot_body(h, engine)
        with pytest.raises(UnusableSnapshot, match="earlier version"):
            read_snapshot(old, h.catalog, engine.arms, engine.space.names)
        version = await h.writer.call(lambda store: store.publish_snapshot(T0, {"outcomes": 0}, old))
        with caplog.at_level(logging.WARNING, logger="server.decide.engine"):
            assert not engine.load_snapshot()
        assert f"model snapshot {version} was written by an earlier version of Onramp" in caplog.text
        assert engine.snapshot_version == version and engine.policy_version.endswith("@0")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="server.decide.engine"):
            assert not engine.load_snapshot()  # said once, not at every poll
        assert caplog.text == ""
        answer = await h.ask("u1", T0 + 10 * DAY_MS)  # decided with the models in use meanwhile
        assert answer.decision_id and answer.policy_version.endswith("@0")
        await h.learn(T0 + 10 * DAY_MS)
        assert engine.snapshot_version == h.learner.version > version
        assert engine.segments.model.cluster_learned == h.learner.segmenter.stats["cluster_learned"] > 0
        answer = await h.ask("u2", T0 + 10 * DAY_MS)
        assert answer.policy_version.endswith(f"@{h.learner.version}")
    run_on(tmp_path / "old.db", body)


def test_a_snapshot_that_cannot_be_read_is_skipped(tmp_path: Path) -> None:
    async def body(h: Harness, engine: Any) -> None:
        for garbage in (b"not a pickle", pickle.dumps([1, 2])):
            with pytest.raises(UnusableSnapshot, match="cannot be read"):
                read_snapshot(garbage, h.catalog, engine.arms, engine.space.names)
            version = await h.writer.call(lambda store, g=garbage: store.publish_snapshot(T0, {}, g))
            assert not engine.load_snapshot() and engine.snapshot_version == version
    run_on(tmp_path / "garbage.db", body)
