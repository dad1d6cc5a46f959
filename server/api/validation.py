"""Validation of every event and request before anything is stored or decided.

Each check raises :class:`ValidationError` carrying the field at fault and what is expected, so the servicer
can answer INVALID_ARGUMENT with a message such as
``events[3].name: must match ^[a-z][a-z0-9_.:-]{0,63}$ (got 'Feature Used')``. The limits come from the
``[ingest]`` config section.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from onramp.v1 import onramp_pb2 as pb
from server.base import records as r
from server.base.catalog import CHANNELS
from server.base.config import IngestConfig
from server.base.records import EventValues

EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
NAME_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"
WORD_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"  # channel, device_type
KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
DECISION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
OUTCOME_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"

_EVENT_ID_CHARS = re.compile(r"[A-Za-z0-9_.:-]+")
_NAME = re.compile(NAME_PATTERN)
_WORD = re.compile(WORD_PATTERN)
_KEY = re.compile(KEY_PATTERN)
_DECISION_ID = re.compile(DECISION_ID_PATTERN)
_OUTCOME = re.compile(OUTCOME_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
PURPOSES = ("tracking", "personalization")
MAX_REWARD = 1000.0
MAX_CONTEXT_ENTRIES = 32
MAX_SOURCE_CHARS = 128


class ValidationError(ValueError):
    """An invalid field: ``field`` names it (``name``, ``properties[plan]``), ``message`` says what is expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def within(self, prefix: str) -> "ValidationError":
        """The same error with its field placed inside ``prefix`` (e.g. ``events[3]``)."""
        return ValidationError(f"{prefix}.{self.field}" if prefix else self.field, self.message)


def shown(value: object, limit: int = 40) -> str:
    """A short printable form of a bad value for error messages (long strings are cut)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)


def _id(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters (got {len(value)})")
    if _CONTROL.search(value):
        raise ValidationError(field, f"must not contain control characters (got {shown(value)})")
    if value != value.strip():
        raise ValidationError(field, f"must not start or end with whitespace (got {shown(value)})")


def _user_id(field: str, value: str, limit: int) -> None:
    _id(field, value, limit)
    if value.startswith(r.ANON_PREFIX):
        raise ValidationError(field, f"must not start with {r.ANON_PREFIX!r}, it is reserved for anonymous "
                                     f"subjects (got {shown(value)})")


def validate_timestamp(field: str, ts: int, now_ms: int, max_future_skew_ms: int) -> None:
    """0 (use the server clock) or a time from 2000-01-01 to ``now + skew``."""
    if ts == 0:
        return
    if ts < MIN_TIMESTAMP_MS:
        raise ValidationError(field, f"must be epoch milliseconds on or after 2000-01-01 ({MIN_TIMESTAMP_MS}), "
                                     f"or 0 for the server's clock (got {ts})")
    if ts > now_ms + max_future_skew_ms:
        raise ValidationError(field, f"must not be more than {max_future_skew_ms} ms in the future "
                                     f"(got {ts}, {ts - now_ms} ms ahead of the server clock)")


def _word(field: str, value: str) -> None:
    if value and not _WORD.match(value):
        raise ValidationError(field, f"must match {WORD_PATTERN} or be empty (got {shown(value)})")


def _string_map(field: str, entries: Mapping[str, str], max_entries: int, max_value: int) -> None:
    if len(entries) > max_entries:
        raise ValidationError(field, f"must have at most {max_entries} entries (got {len(entries)})")
    for key, value in entries.items():
        if not _KEY.match(key):
            raise ValidationError(f"{field}[{key}]", f"key must match {KEY_PATTERN} (got {shown(key)})")
        if len(value) > max_value:
            raise ValidationError(f"{field}[{key}]", f"value must be at most {max_value} characters "
                                                     f"(got {len(value)})")


def _no_control(value: str) -> bool:
    """No control characters (an ASCII printable string has none: checked in C, without the regex)."""
    return (value.isascii() and value.isprintable()) or _CONTROL.search(value) is None


def _bad_id(value: str, limit: int) -> bool:
    """Fast test of a non-empty id: too long, control characters, or leading/trailing whitespace."""
    if len(value) > limit:
        return True
    if value.isascii() and value.isprintable():  # no control characters; the only whitespace left is " "
        return value[0] == " " or value[-1] == " "
    return _CONTROL.search(value) is not None or value[0].isspace() or value[-1].isspace()


_KNOWN_LIMIT = 4096  # distinct valid names and words remembered (bounded: odd input cannot make it grow)
_known_names: set[str] = set()
_known_words: set[str] = set()


def _matches(pattern: re.Pattern[str], seen: set[str], value: str) -> bool:
    """``value`` matches ``pattern``; values seen valid before are a set lookup (events reuse a few names,
    channels and device types), and at most ``_KNOWN_LIMIT`` of them are remembered."""
    if value in seen:
        return True
    if pattern.match(value) is None:
        return False
    if len(seen) < _KNOWN_LIMIT:
        seen.add(value)
    return True


def _text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters (got {len(value)})")
    if _CONTROL.search(value):
        raise ValidationError(field, f"must not contain control characters (got {shown(value)})")


def event_values(ev: pb.Event) -> EventValues:
    """The fields of an event message as :data:`EventValues` (what the pipeline takes), without checks."""
    props = ev.properties
    return (ev.event_id, ev.user_id, ev.anonymous_id, ev.device_id, ev.name, ev.timestamp_ms, ev.channel,
            ev.device_type, ev.feature, ev.step_id, ev.decision_id, dict(props) if props else None)


def validate_event(ev: pb.Event, limits: IngestConfig, now_ms: int) -> EventValues:
    """Check one event against every rule; raises :class:`ValidationError` naming the field. Returns the
    fields it read (:data:`EventValues`).

    Written as one fast pass for valid events (ingestion runs it for every event); the detailed checks that
    build the message run only when something is wrong."""
    eid = ev.event_id
    if not eid:
        raise ValidationError("event_id", f"is required ({EVENT_ID_PATTERN})")
    if len(eid) > limits.max_event_id_chars or not _EVENT_ID_CHARS.fullmatch(eid):
        raise ValidationError("event_id", f"must be 1-{limits.max_event_id_chars} characters of [A-Za-z0-9_.:-] "
                                          f"(got {shown(eid)})")
    name = ev.name
    if not _matches(_NAME, _known_names, name):
        raise ValidationError("name", f"must match {NAME_PATTERN} (got {shown(name)})")
    uid, aid, did = ev.user_id, ev.anonymous_id, ev.device_id
    if not uid and not aid:
        raise ValidationError("user_id", "one of user_id and anonymous_id is required (both are empty)")
    max_id = limits.max_id_chars
    if uid and (_bad_id(uid, max_id) or uid.startswith(r.ANON_PREFIX)):
        _user_id("user_id", uid, max_id)
    if aid and _bad_id(aid, max_id):
        _id("anonymous_id", aid, max_id)
    if did and _bad_id(did, max_id):
        _id("device_id", did, max_id)
    if name == r.IDENTIFY:
        if not uid:
            raise ValidationError("user_id", "is required for an identify event")
        if not aid and not did:
            raise ValidationError("anonymous_id", "an identify event needs anonymous_id or device_id to link "
                                                  "to user_id (both are empty)")
    ts = ev.timestamp_ms
    if ts and (ts < MIN_TIMESTAMP_MS or ts > now_ms + limits.max_future_skew_ms):
        validate_timestamp("timestamp_ms", ts, now_ms, limits.max_future_skew_ms)
    channel = ev.channel
    if channel and not _matches(_WORD, _known_words, channel):
        _word("channel", channel)
    device_type = ev.device_type
    if device_type and not _matches(_WORD, _known_words, device_type):
        _word("device_type", device_type)
    max_f = limits.max_feature_chars
    feature = ev.feature
    if feature and (len(feature) > max_f or not _no_control(feature)):
        _text("feature", feature, max_f)
    step_id = ev.step_id
    if step_id and (len(step_id) > max_f or not _no_control(step_id)):
        _text("step_id", step_id, max_f)
    decision_id = ev.decision_id
    if decision_id and (len(decision_id) > max_f or not _no_control(decision_id)):
        _text("decision_id", decision_id, max_f)
    props = ev.properties
    if props:
        _string_map("properties", props, limits.max_properties, limits.max_property_value_chars)
        return eid, uid, aid, did, name, ts, channel, device_type, feature, step_id, decision_id, dict(props)
    return eid, uid, aid, did, name, ts, channel, device_type, feature, step_id, decision_id, None


def _subject(user_id: str, anonymous_id: str, limits: IngestConfig) -> None:
    if not user_id and not anonymous_id:
        raise ValidationError("user_id", "one of user_id and anonymous_id is required (both are empty)")
    limit = limits.max_id_chars
    # the checks in C first (_bad_id); the full checks, which name the problem, only for an id they flag
    if user_id and (_bad_id(user_id, limit) or user_id.startswith(r.ANON_PREFIX)):
        _user_id("user_id", user_id, limit)
    if anonymous_id and _bad_id(anonymous_id, limit):
        _id("anonymous_id", anonymous_id, limit)


def validate_subject_request(req: pb.EraseUserRequest | pb.ExportUserDataRequest | pb.GetUserProfileRequest,
                             limits: IngestConfig) -> None:
    """EraseUser, ExportUserData, GetUserProfile: one of user_id / anonymous_id, well-formed."""
    _subject(req.user_id, req.anonymous_id, limits)


def validate_surface(surface: str) -> None:
    """A GetNextStep surface is a channel of the catalog's steps (``in_app``, ``email``, ``push``) or empty for
    any: a step is only ever delivered on its channel, so another surface could never get one.

    >>> validate_surface("sms")
    Traceback (most recent call last):
    ...
    server.api.validation.ValidationError: surface: unknown surface 'sms': must be one of the catalog's channels (in_app, email, push), or empty for any
    """
    if surface and surface not in CHANNELS:
        raise ValidationError("surface", f"unknown surface {shown(surface)}: must be one of the catalog's channels "
                                         f"({', '.join(CHANNELS)}), or empty for any")


def validate_next_step(req: pb.NextStepRequest, limits: IngestConfig, now_ms: int) -> None:
    """GetNextStep: subject, surface (a catalog channel or empty), context map (at most 32 entries), timestamp."""
    _subject(req.user_id, req.anonymous_id, limits)
    validate_surface(req.surface)
    _string_map("context", req.context, MAX_CONTEXT_ENTRIES, limits.max_property_value_chars)
    validate_timestamp("timestamp_ms", req.timestamp_ms, now_ms, limits.max_future_skew_ms)


def validate_outcome(req: pb.OutcomeRequest, limits: IngestConfig, now_ms: int) -> None:
    """ReportOutcome: decision_id, finite reward within [-1000, 1000], outcome label, timestamp."""
    if not req.decision_id:
        raise ValidationError("decision_id", "is required (the decision_id of a GetNextStep answer)")
    if not _DECISION_ID.match(req.decision_id):
        raise ValidationError("decision_id", f"must match {DECISION_ID_PATTERN} (got {shown(req.decision_id)})")
    if not math.isfinite(req.reward) or abs(req.reward) > MAX_REWARD:
        raise ValidationError("reward", f"must be a finite number within [-{MAX_REWARD:g}, {MAX_REWARD:g}] "
                                        f"(got {req.reward!r})")
    if req.outcome and not _OUTCOME.match(req.outcome):
        raise ValidationError("outcome", f"must match {OUTCOME_PATTERN} or be empty (got {shown(req.outcome)})")
    validate_timestamp("timestamp_ms", req.timestamp_ms, now_ms, limits.max_future_skew_ms)


def validate_consent(req: pb.ConsentRequest, limits: IngestConfig, now_ms: int) -> None:
    """SetConsent: subject, purpose in {tracking, personalization}, source, timestamp."""
    _subject(req.user_id, req.anonymous_id, limits)
    if req.purpose not in PURPOSES:
        raise ValidationError("purpose", f"must be one of {', '.join(PURPOSES)} (got {shown(req.purpose)})")
    if len(req.source) > MAX_SOURCE_CHARS:
        raise ValidationError("source", f"must be at most {MAX_SOURCE_CHARS} characters (got {len(req.source)})")
    if _CONTROL.search(req.source):
        raise ValidationError("source", f"must not contain control characters (got {shown(req.source)})")
    validate_timestamp("timestamp_ms", req.timestamp_ms, now_ms, limits.max_future_skew_ms)


def validate_batch_size(n: int, limits: IngestConfig) -> None:
    """An EventBatch holds at most ``max_batch_events`` events (default 10,000)."""
    if n > limits.max_batch_events:
        raise ValidationError("events", f"must hold at most {limits.max_batch_events} events per batch (got {n})")


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event of a batch that failed validation (becomes a RejectedEvent of the ack)."""

    index: int
    event_id: str
    field: str
    message: str
