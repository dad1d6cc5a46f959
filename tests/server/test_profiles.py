"""Stored profiles: what :func:`encode_profile` writes decodes to the same profile, rows written by the standard
library's JSON encoder (earlier databases) still decode, and a survey score that is no finite number is no
answer."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from server.base import records as r
from server.base.records import StoredEvent
from server.ingest.profiles import _FIELDS, Profile, decode_profile, encode_profile

NAMES = [r.SESSION_START, r.FEATURE_USED, r.STEP_COMPLETED, r.STEP_DISMISSED, r.SURVEY_RESPONSE,
         r.SCREEN_SKIPPED, r.TUTORIAL_COMPLETED, "custom_é", r.SCREEN_VIEWED]
scores = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10),
                   st.sampled_from(["4", "nan", "inf", "-inf", "x", ""]))
events = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 10**13), st.sampled_from(["web", "ios", ""]),
                            st.sampled_from(["reports", "api", "dashboards", "ü"]),
                            st.sampled_from(["s1", "s2", ""]), scores), max_size=40)


def profile_of(evs: list[tuple]) -> Profile:
    p = Profile("u1")
    for name, ts, channel, feature, step, score in evs:
        props = {} if score is None else {"score": score}
        p.observe(StoredEvent("e", "u1", name, ts, ts, channel=channel, device_type="desktop", feature=feature,
                              step_id=step, properties=props))
    return p


@settings(max_examples=200, deadline=None)
@given(events)
def test_a_stored_profile_decodes_to_the_same_profile(evs: list[tuple]) -> None:
    p = profile_of(evs)
    body = encode_profile(p)
    assert decode_profile("u1", body) == p
    # the same values as the standard library reads them, and a row it wrote decodes alike
    values = [getattr(p, name) for name in _FIELDS[1:]]
    assert json.loads(body) == values
    assert decode_profile("u1", json.dumps(values, separators=(",", ":"), ensure_ascii=False)) == p


def test_survey_scores_keep_finite_numbers_only() -> None:
    p = profile_of([(r.SURVEY_RESPONSE, 1, "web", "", "", s) for s in ("4", "nan", "inf", 2.5, "x", None, float("-inf"))])
    assert p.survey_scores == [4.0, 2.5]
