"""Builds Event messages from keyword arguments: fresh event ids, client timestamps, string properties."""
from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

from onramp.v1 import onramp_pb2 as pb

PropertyValue = str | int | float | bool


def now_ms() -> int:
    """The current time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def new_event_id() -> str:
    """A fresh idempotency key (uuid4, 32 hex characters)."""
    return uuid.uuid4().hex


def property_string(key: str, value: PropertyValue) -> str:
    """Property values travel as strings: str as is, bool as true/false, numbers with str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise TypeError(f"properties[{key}]: expected str, int, float or bool (got {type(value).__name__})")


def build_event(name: str, *, user_id: str = "", anonymous_id: str = "", device_id: str = "", feature: str = "",
                step_id: str = "", decision_id: str = "", channel: str = "", device_type: str = "",
                properties: Mapping[str, PropertyValue] | None = None, timestamp_ms: int | None = None,
                event_id: str | None = None) -> pb.Event:
    """An Event stamped now (unless ``timestamp_ms``) with a fresh event_id (unless given).

    Only what the client can check cheaply is checked here (a name, a subject, property types); the server
    validates the rest and reports invalid events in its acknowledgements.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name: expected a non-empty event name such as 'feature_used'")
    if not user_id and not anonymous_id:
        raise ValueError(f"event {name!r}: one of user_id and anonymous_id is required")
    props = {str(k): property_string(str(k), v) for k, v in (properties or {}).items()}
    return pb.Event(event_id=new_event_id() if event_id is None else event_id, user_id=user_id,
                    anonymous_id=anonymous_id, device_id=device_id, name=name,
                    timestamp_ms=now_ms() if timestamp_ms is None else int(timestamp_ms), channel=channel,
                    device_type=device_type, feature=feature, step_id=step_id, decision_id=decision_id,
                    properties=props)
