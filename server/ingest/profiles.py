"""Per-user behavioral state, updated online from every stored event.

A :class:`Profile` holds counters and times only (no raw events), so it is cheap to keep in memory
for every user and to rebuild from the event log. :class:`ProfileBook` maps canonical subjects to
profiles and merges two profiles when an ``identify`` event links an anonymous id to a user.

>>> book = ProfileBook()
>>> p = book.apply(StoredEvent("e1", "u1", "feature_used", 1_000, 1_000, feature="reports"))
>>> p.features_used
{'reports': 1}
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

import msgspec

from server.base import records as r
from server.base.records import StoredEvent

MAX_SESSION_TIMES = 64  # recent session start times kept per profile
MAX_SURVEY_SCORES = 32


@dataclass(slots=True)
class Profile:
    """Behavioral state of one canonical subject, across all its devices and channels."""

    subject: str
    first_seen_ms: int = 0  # time of the first event (the signup proxy)
    last_seen_ms: int = 0  # time of the latest event
    previous_seen_ms: int = 0  # time of the event before the latest one (for "returns after N h inactive")
    event_count: int = 0
    sessions: int = 0
    session_starts_ms: list[int] = field(default_factory=list)  # recent session starts, oldest first
    features_used: dict[str, int] = field(default_factory=dict)  # feature -> uses
    feature_first_ms: dict[str, int] = field(default_factory=dict)  # feature -> time of first use
    channels: dict[str, int] = field(default_factory=dict)  # channel -> events
    device_types: dict[str, int] = field(default_factory=dict)  # device type -> events
    screens_skipped: int = 0
    tutorials_completed: int = 0
    steps_completed: dict[str, int] = field(default_factory=dict)  # step -> time completed
    steps_dismissed: dict[str, int] = field(default_factory=dict)  # step -> time dismissed
    survey_scores: list[float] = field(default_factory=list)  # recent numeric survey answers
    custom_events: dict[str, int] = field(default_factory=dict)  # other event names -> count

    def observe(self, ev: StoredEvent) -> None:
        """Fold one event into the profile (events may arrive slightly out of order)."""
        ts = ev.timestamp_ms
        self.event_count += 1
        if self.first_seen_ms == 0 or ts < self.first_seen_ms:
            self.first_seen_ms = ts
        if ts >= self.last_seen_ms:
            self.previous_seen_ms = self.last_seen_ms
            self.last_seen_ms = ts
        elif ts > self.previous_seen_ms:
            self.previous_seen_ms = ts
        key = ev.channel
        if key:
            counts = self.channels
            counts[key] = counts.get(key, 0) + 1
        key = ev.device_type
        if key:
            counts = self.device_types
            counts[key] = counts.get(key, 0) + 1
        name = ev.name
        if name == r.SESSION_START:
            self.sessions += 1
            self.session_starts_ms.append(ts)
            if len(self.session_starts_ms) > MAX_SESSION_TIMES:
                self.session_starts_ms.sort()
                del self.session_starts_ms[0]
        elif name == r.FEATURE_USED:
            if ev.feature:
                self.features_used[ev.feature] = self.features_used.get(ev.feature, 0) + 1
                first = self.feature_first_ms.get(ev.feature)
                if first is None or ts < first:
                    self.feature_first_ms[ev.feature] = ts
        elif name == r.SCREEN_SKIPPED:
            self.screens_skipped += 1
        elif name == r.TUTORIAL_COMPLETED:
            self.tutorials_completed += 1
        elif name == r.STEP_COMPLETED:
            if ev.step_id:
                self.steps_completed.setdefault(ev.step_id, ts)
        elif name == r.STEP_DISMISSED:
            if ev.step_id:
                self.steps_dismissed[ev.step_id] = ts
        elif name == r.SURVEY_RESPONSE:
            score = ev.properties.get("score")
            try:
                value = float(score) if score is not None else math.nan
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):  # "nan" or "inf" is no answer (and JSON has no number for it)
                self.survey_scores.append(value)
                del self.survey_scores[:-MAX_SURVEY_SCORES]
        elif name != r.IDENTIFY and name != r.SCREEN_VIEWED:
            self.custom_events[name] = self.custom_events.get(name, 0) + 1

    def merge(self, other: Profile) -> None:
        """Absorb ``other`` (e.g. an anonymous visitor's profile when it is identified)."""
        if other.event_count == 0:
            return
        if self.event_count == 0:
            subject = self.subject
            for name in self.__slots__:
                setattr(self, name, _copy(getattr(other, name)))
            self.subject = subject
            return
        times = sorted({self.last_seen_ms, self.previous_seen_ms, other.last_seen_ms, other.previous_seen_ms})
        self.last_seen_ms, self.previous_seen_ms = times[-1], times[-2] if len(times) > 1 else 0
        self.first_seen_ms = min(self.first_seen_ms, other.first_seen_ms)
        self.event_count += other.event_count
        self.sessions += other.sessions
        self.session_starts_ms = sorted(self.session_starts_ms + other.session_starts_ms)[-MAX_SESSION_TIMES:]
        for mine, theirs in (
            (self.features_used, other.features_used),
            (self.channels, other.channels),
            (self.device_types, other.device_types),
            (self.custom_events, other.custom_events),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for k, v in other.feature_first_ms.items():
            self.feature_first_ms[k] = min(v, self.feature_first_ms.get(k, v))
        for k, v in other.steps_completed.items():
            self.steps_completed[k] = min(v, self.steps_completed.get(k, v))
        for k, v in other.steps_dismissed.items():
            self.steps_dismissed[k] = max(v, self.steps_dismissed.get(k, v))
        self.screens_skipped += other.screens_skipped
        self.tutorials_completed += other.tutorials_completed
        self.survey_scores = (self.survey_scores + other.survey_scores)[-MAX_SURVEY_SCORES:]


_FIELDS = tuple(Profile.__slots__)  # type: ignore[attr-defined]
_STORED = attrgetter(*_FIELDS[1:])  # the stored fields, as one tuple
# msgspec's JSON codec: the same compact JSON as the standard library's, at a quarter of its cost; profiles are
# decoded and re-encoded in every ingest transaction (once per person of the batch).
_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode


def encode_profile(profile: Profile) -> str:
    """The profile as stored (JSON of its fields after ``subject``: rows are keyed by pseudonym and hold no
    raw id).

    >>> p = Profile("u1", first_seen_ms=5, sessions=1)
    >>> decode_profile("u1", encode_profile(p)) == p
    True
    """
    return _ENCODE(_STORED(profile)).decode()


def decode_profile(subject: str, body: str) -> Profile:
    """The :class:`Profile` of ``subject`` stored as ``body`` (:func:`encode_profile`)."""
    return Profile(subject, *_DECODE(body))


class WrittenProfiles:
    """The profiles an ingest writer last wrote, by pseudonym, each with the body it wrote: a body read back
    unchanged in a later job is taken from here instead of decoded again (each job reads, folds and writes the
    profile of each of its people: decoding was the largest Python cost per person). Another process's write,
    an erasure or a rolled-back job leaves a different body (or none), which is decoded as before: a kept
    profile is handed out only against the exact body encoded from it, and is taken out when handed out (the
    job changes it), so what is kept always decodes from its body. Bounded (about 2.3 KB a profile of 20 events
    measured with tracemalloc: ~23 MB at the default limit); used on the writer thread only."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._kept: dict[str, tuple[str, Profile]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def decode(self, subject: str, pseudo: str, body: str) -> Profile:
        """The profile stored as ``body`` (kept, when it is the body written from it; else decoded)."""
        kept = self._kept.pop(pseudo, None)
        if kept is not None and kept[0] == body:
            return kept[1]
        return decode_profile(subject, body)

    def wrote(self, pseudo: str, body: str, profile: Profile) -> None:
        """Keep ``profile``, just encoded as ``body`` for writing (the caller changes it no more)."""
        if len(self._kept) >= self._limit:
            self._kept.clear()
        self._kept[pseudo] = (body, profile)

    def forget(self, pseudos: Iterable[str]) -> None:
        """Drop what is kept of ``pseudos`` (erasure: nothing of the person kept in memory)."""
        for pseudo in pseudos:
            self._kept.pop(pseudo, None)

    def clear(self) -> None:
        """Drop everything kept (an erasure another process committed; safe from another thread: a profile
        not found here is decoded from its row)."""
        self._kept.clear()


def _copy(value: object) -> object:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


class ProfileBook:
    """In-memory profiles of every subject, keyed by canonical subject."""

    def __init__(self) -> None:
        self._profiles: dict[str, Profile] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, subject: str) -> bool:
        return subject in self._profiles

    def get(self, subject: str) -> Profile | None:
        """The profile of ``subject``, or None if no event of it was stored."""
        return self._profiles.get(subject)

    def get_or_create(self, subject: str) -> Profile:
        p = self._profiles.get(subject)
        if p is None:
            p = self._profiles[subject] = Profile(subject)
        return p

    def apply(self, ev: StoredEvent) -> Profile:
        """Fold a stored event into its subject's profile and return that profile."""
        p = self._profiles.get(ev.subject)
        if p is None:
            p = self._profiles[ev.subject] = Profile(ev.subject)
        p.observe(ev)
        return p

    def link(self, alias_subject: str, user_subject: str) -> Profile:
        """Merge the profile of ``alias_subject`` (e.g. ``anon:abc``) into ``user_subject``'s."""
        target = self.get_or_create(user_subject)
        other = self._profiles.pop(alias_subject, None)
        if other is not None and alias_subject != user_subject:
            target.merge(other)
        return target

    def drop(self, subject: str) -> bool:
        """Forget a subject's profile (erasure). Returns whether one existed."""
        return self._profiles.pop(subject, None) is not None

    def subjects(self) -> list[str]:
        return list(self._profiles)

    def in_subject_order(self) -> Iterator[Profile]:
        """Every profile in subject order (one pass of a segmenter over
        them); subjects are listed first, and a profile dropped while iterating is skipped."""
        for subject in sorted(self._profiles):
            p = self._profiles.get(subject)
            if p is not None:
                yield p
