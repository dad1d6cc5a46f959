"""Every validation rule rejects with the field named and the expectation stated; valid input passes."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onramp.v1 import onramp_pb2 as pb
from server.api import validation
from server.base.config import IngestConfig
from server.api.validation import (MIN_TIMESTAMP_MS, ValidationError, validate_batch_size, validate_consent,
                               validate_event, validate_next_step, validate_outcome, validate_subject_request)

NOW = 1_800_000_000_000
LIMITS = IngestConfig()


def ev(**fields: object) -> pb.Event:
    base: dict[str, object] = {"event_id": "e1", "user_id": "u1", "name": "feature_used"}
    base.update(fields)
    return pb.Event(**base)  # type: ignore[arg-type]


def error_of(event: pb.Event, limits: IngestConfig = LIMITS) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        validate_event(event, limits, NOW)
    return err.value


def test_valid_events_pass() -> None:
    validate_event(ev(), LIMITS, NOW)
    validate_event(ev(user_id="", anonymous_id="a1", device_id="d1", channel="ios", device_type="mobile",
                      feature="reports", step_id="welcome", decision_id="abc", timestamp_ms=NOW - 1000,
                      properties={"plan": "pro", "screen.name": "x" * 1024}), LIMITS, NOW)
    validate_event(ev(name="identify", anonymous_id="a1"), LIMITS, NOW)
    validate_event(ev(name="identify", device_id="d1"), LIMITS, NOW)
    validate_event(ev(event_id="A" * 128, timestamp_ms=NOW + LIMITS.max_future_skew_ms), LIMITS, NOW)
    validate_event(ev(timestamp_ms=MIN_TIMESTAMP_MS, properties={f"k{i}": "v" for i in range(64)}), LIMITS, NOW)


@pytest.mark.parametrize("event, field, fragment", [
    (ev(event_id=""), "event_id", "is required"),
    (ev(event_id="has space"), "event_id", "[A-Za-z0-9_.:-]"),
    (ev(event_id="x" * 129), "event_id", "1-128 characters"),
    (ev(name="Feature Used"), "name", "must match ^[a-z][a-z0-9_.:-]{0,63}$ (got 'Feature Used')"),
    (ev(name=""), "name", "must match"),
    (ev(name="a" * 65), "name", "must match"),
    (ev(user_id=""), "user_id", "one of user_id and anonymous_id is required"),
    (ev(user_id="u" * 257), "user_id", "at most 256 characters (got 257)"),
    (ev(user_id="anon:x"), "user_id", "reserved for anonymous subjects"),
    (ev(user_id="bad\nid"), "user_id", "control characters"),
    (ev(user_id=" padded"), "user_id", "whitespace"),
    (ev(user_id="", anonymous_id="a" * 257), "anonymous_id", "at most 256"),
    (ev(device_id="d" * 257), "device_id", "at most 256"),
    (ev(name="identify", anonymous_id="a1", user_id=""), "user_id", "required for an identify event"),
    (ev(name="identify"), "anonymous_id", "needs anonymous_id or device_id"),
    (ev(timestamp_ms=NOW + 5 * 60 * 1000 + 1), "timestamp_ms", "in the future"),
    (ev(timestamp_ms=MIN_TIMESTAMP_MS - 1), "timestamp_ms", "2000-01-01"),
    (ev(timestamp_ms=-5), "timestamp_ms", "2000-01-01"),
    (ev(channel="Web"), "channel", "^[a-z][a-z0-9_-]{0,31}$"),
    (ev(device_type="a b"), "device_type", "must match"),
    (ev(feature="f" * 129), "feature", "at most 128"),
    (ev(step_id="s" * 129), "step_id", "at most 128"),
    (ev(decision_id="d" * 129), "decision_id", "at most 128"),
    (ev(properties={f"k{i}": "v" for i in range(65)}), "properties", "at most 64 entries (got 65)"),
    (ev(properties={"bad key": "v"}), "properties[bad key]", "key must match"),
    (ev(properties={"1st": "v"}), "properties[1st]", "key must match"),
    (ev(properties={"plan": "x" * 1025}), "properties[plan]", "at most 1024 characters (got 1025)"),
])
def test_each_rule_names_its_field(event: pb.Event, field: str, fragment: str) -> None:
    err = error_of(event)
    assert err.field == field
    assert fragment in err.message
    assert str(err) == f"{field}: {err.message}"


def test_limits_come_from_the_ingest_config() -> None:
    tight = IngestConfig(max_properties=2, max_property_value_chars=3, max_id_chars=4, max_feature_chars=5,
                         max_future_skew_ms=0, max_event_id_chars=6)
    assert error_of(ev(properties={"a": "1", "b": "2", "c": "3"}), tight).field == "properties"
    assert error_of(ev(properties={"a": "1234"}), tight).field == "properties[a]"
    assert error_of(ev(user_id="u2345"), tight).field == "user_id"
    assert error_of(ev(user_id="u1", feature="123456"), tight).field == "feature"
    assert error_of(ev(user_id="u1", timestamp_ms=NOW + 1), tight).field == "timestamp_ms"
    assert error_of(ev(user_id="u1", event_id="1234567"), tight).field == "event_id"


def test_within_prefixes_the_field() -> None:
    err = error_of(ev(name="Feature Used")).within("events[3]")
    assert str(err) == "events[3].name: must match ^[a-z][a-z0-9_.:-]{0,63}$ (got 'Feature Used')"


def test_long_bad_values_are_cut_in_messages() -> None:
    err = error_of(ev(name="X" * 500))
    assert "(500 characters)" in err.message and len(err.message) < 200


def test_batch_size_limit() -> None:
    validate_batch_size(10_000, LIMITS)
    with pytest.raises(ValidationError) as err:
        validate_batch_size(10_001, LIMITS)
    assert err.value.field == "events" and "10000" in err.value.message


@pytest.mark.parametrize("request_, field", [
    (pb.OutcomeRequest(decision_id="", reward=1), "decision_id"),
    (pb.OutcomeRequest(decision_id="has space", reward=1), "decision_id"),
    (pb.OutcomeRequest(decision_id="d1", reward=math.nan), "reward"),
    (pb.OutcomeRequest(decision_id="d1", reward=math.inf), "reward"),
    (pb.OutcomeRequest(decision_id="d1", reward=1000.5), "reward"),
    (pb.OutcomeRequest(decision_id="d1", reward=-1001), "reward"),
    (pb.OutcomeRequest(decision_id="d1", outcome="Done!"), "outcome"),
    (pb.OutcomeRequest(decision_id="d1", timestamp_ms=NOW + 10**9), "timestamp_ms"),
])
def test_outcome_rules(request_: pb.OutcomeRequest, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_outcome(request_, LIMITS, NOW)
    assert err.value.field == field


def test_outcome_valid_edges() -> None:
    validate_outcome(pb.OutcomeRequest(decision_id="d1", reward=1000.0, outcome="completed"), LIMITS, NOW)
    validate_outcome(pb.OutcomeRequest(decision_id="d1", reward=-1000.0), LIMITS, NOW)


@pytest.mark.parametrize("request_, field", [
    (pb.ConsentRequest(user_id="u1", purpose="marketing", granted=True), "purpose"),
    (pb.ConsentRequest(user_id="u1", purpose="", granted=True), "purpose"),
    (pb.ConsentRequest(purpose="tracking", granted=True), "user_id"),
    (pb.ConsentRequest(user_id="u1", purpose="tracking", source="s" * 129), "source"),
    (pb.ConsentRequest(user_id="u1", purpose="tracking", timestamp_ms=12), "timestamp_ms"),
])
def test_consent_rules(request_: pb.ConsentRequest, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_consent(request_, LIMITS, NOW)
    assert err.value.field == field


@pytest.mark.parametrize("request_, field", [
    (pb.NextStepRequest(), "user_id"),
    (pb.NextStepRequest(user_id="u1", surface="In App"), "surface"),
    (pb.NextStepRequest(user_id="u1", surface="sms"), "surface"),
    (pb.NextStepRequest(user_id="u1", context={f"k{i}": "v" for i in range(33)}), "context"),
    (pb.NextStepRequest(user_id="u1", context={"bad key": "v"}), "context[bad key]"),
    (pb.NextStepRequest(user_id="u1", timestamp_ms=NOW + 10**9), "timestamp_ms"),
])
def test_next_step_rules(request_: pb.NextStepRequest, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_next_step(request_, LIMITS, NOW)
    assert err.value.field == field


def test_an_unknown_surface_names_itself_and_the_catalog_channels() -> None:
    with pytest.raises(ValidationError) as err:
        validate_next_step(pb.NextStepRequest(user_id="u1", surface="sms"), LIMITS, NOW)
    assert str(err.value) == ("surface: unknown surface 'sms': must be one of the catalog's channels "
                              "(in_app, email, push), or empty for any")
    for surface in ("", "in_app", "email", "push"):
        validate_next_step(pb.NextStepRequest(user_id="u1", surface=surface), LIMITS, NOW)


def test_subject_requests() -> None:
    validate_subject_request(pb.EraseUserRequest(anonymous_id="a1"), LIMITS)
    for req in (pb.EraseUserRequest(), pb.ExportUserDataRequest(), pb.GetUserProfileRequest()):
        with pytest.raises(ValidationError) as err:
            validate_subject_request(req, LIMITS)
        assert err.value.field == "user_id"
    with pytest.raises(ValidationError) as err:
        validate_subject_request(pb.GetUserProfileRequest(anonymous_id="a" * 300), LIMITS)
    assert err.value.field == "anonymous_id"


# The fast paths of validate_event (C string checks, remembered names and words) decide exactly as the regexes.
_ID_CHARS = st.sampled_from(["u", "A", "1", " ", "\t", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "é", "\u2028", "-"])


@settings(max_examples=300, deadline=None)
@given(value=st.text(_ID_CHARS, min_size=1, max_size=6))
def test_fast_id_checks_equal_the_regex_definition(value: str) -> None:
    bad = len(value) > 5 or validation._CONTROL.search(value) is not None or value != value.strip()
    assert validation._bad_id(value, 5) == bad
    assert validation._no_control(value) == (validation._CONTROL.search(value) is None)
    accepted = True
    try:
        validate_event(ev(user_id=value, feature=value, step_id=value, decision_id=value), LIMITS, NOW)
    except ValidationError:
        accepted = False
    assert accepted == (validation._CONTROL.search(value) is None and value == value.strip())


def test_remembered_names_and_words_are_bounded_and_still_checked() -> None:
    validate_event(ev(name="feature_used", channel="web"), LIMITS, NOW)
    assert "feature_used" in validation._known_names and "web" in validation._known_words
    assert error_of(ev(name="Feature_used")).field == "name"  # a near miss is still refused
    assert error_of(ev(channel="Web")).field == "channel"
    for i in range(validation._KNOWN_LIMIT + 10):
        validate_event(ev(name=f"custom_{i}", device_type=f"d{i}"), LIMITS, NOW)
    assert len(validation._known_names) <= validation._KNOWN_LIMIT
    assert len(validation._known_words) <= validation._KNOWN_LIMIT
    validate_event(ev(name=f"custom_{validation._KNOWN_LIMIT + 20}"), LIMITS, NOW)  # still accepted when full
