"""Plain values that flow between the server's parts: a stored event and its well-known names."""
from __future__ import annotations

from dataclasses import dataclass, field

# Well-known event names (any other valid name is stored as a custom event).
SESSION_START = "session_start"
SCREEN_VIEWED = "screen_viewed"
SCREEN_SKIPPED = "screen_skipped"
FEATURE_USED = "feature_used"
TUTORIAL_COMPLETED = "tutorial_completed"
STEP_COMPLETED = "step_completed"
STEP_DISMISSED = "step_dismissed"
SURVEY_RESPONSE = "survey_response"
IDENTIFY = "identify"

ANON_PREFIX = "anon:"


def subject_for(user_id: str, anonymous_id: str) -> str:
    """The canonical subject key before identity resolution: the user id, else ``anon:<anonymous_id>``.

    >>> subject_for("u1", "a1"), subject_for("", "a1")
    ('u1', 'anon:a1')
    """
    return user_id if user_id else ANON_PREFIX + anonymous_id


@dataclass(slots=True)
class StoredEvent:
    """One validated event as committed to the event log.

    ``subject`` is the canonical user after identity resolution (a user id, or ``anon:<id>``);
    ``timestamp_ms`` is the client time (or the receive time when the client gave none).
    """

    event_id: str
    subject: str
    name: str
    timestamp_ms: int
    received_ms: int
    user_id: str = ""
    anonymous_id: str = ""
    device_id: str = ""
    channel: str = ""
    device_type: str = ""
    feature: str = ""
    step_id: str = ""
    decision_id: str = ""
    properties: dict[str, str] = field(default_factory=dict)


EventValues = tuple[str, str, str, str, str, int, str, str, str, str, str, "dict[str, str] | None"]
"""The fields of a valid event as read once by :func:`validate_event`: event_id, user_id, anonymous_id,
device_id, name, timestamp_ms (0: the server's clock), channel, device_type, feature, step_id, decision_id,
properties (a dict, None when empty), as the API edge's ``validate_event`` read them. ``Pipeline.submit_events``
takes these instead of the messages, so the writer thread does not read every protobuf field a second time (each read makes a new str). They hold only
str, int, None and str-to-str dicts, none of which the garbage collector tracks, and no reference to the
message, so batches waiting for their commit add little to each collection."""
