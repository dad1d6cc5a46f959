"""The plain values the store Protocols (server/store/interfaces.py) take and return: frozen dataclasses and the
column order of a decision row, nothing tied to one backend.

Bodies (profiles, snapshots) are opaque to the store: the layer above encodes them (server/ingest/profiles.py,
server/learn/learner.py); the shown history is ``{step_id: times}``, each step's times ascending
(server/store/show_codec.py stores it).
"""
from __future__ import annotations

import json
from array import array
from bisect import insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from struct import Struct
from typing import Any


# A decision row's values in this order (Decision.flat, LoggedDecision.row); context/eligible/probabilities are
# JSON text.
DECISION_COLUMNS = ("decision_id", "user_pseudo", "timestamp_ms", "surface", "step_id", "propensity", "reason",
                    "policy_version", "experiment", "arm", "context", "eligible", "probabilities",
                    "reward_deadline_ms")
OUTCOME_COLUMNS = ("decision_id", "user_pseudo", "reward", "source", "outcome", "timestamp_ms")
JSON_DECISION_COLUMNS = ("context", "eligible", "probabilities")

_encode_properties = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
encode_properties = _encode_properties  # the JSON text of an event's properties as stored


# -- events ----------------------------------------------------------------------------------------------------
IdKey = tuple[int, int]  # the dedupe window's key of an event id: (64-bit key, 32-bit check), see digest


def digest(event_id: str) -> IdKey:
    """The 64-bit key (signed, an SQLite INTEGER) and 32-bit check of an event id in the dedupe window
    (server/store/events.py): two different ids are taken for one only when all 96 bits agree (about 1 in 10^13
    for 10^8 ids in the window). Pure: the pipeline works them out before the write transaction."""
    return _KEY_AND_CHECK(blake2b(event_id.encode(), digest_size=12).digest())  # type: ignore[return-value]


_KEY_AND_CHECK = Struct(">qI").unpack  # 12 bytes -> (signed 64-bit, unsigned 32-bit), big-endian


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append (:meth:`~server.store.interfaces.EventLog.append_new_events`) did with the rows it was
    given: the positions of those not stored (their id was stored before, within the window, or earlier in the
    same call) and the positions of the stored ones that were outside the window (older event time: stored
    without the check)."""

    duplicates: frozenset[int]
    outside_window: frozenset[int]


@dataclass(frozen=True, slots=True)
class IdLookahead:
    """Event ids looked up before the write transaction (:meth:`~server.store.interfaces.EventLog.look_ahead`),
    in the parts of the dedupe window that change only together with their version token: per part, the token it
    had and what it held of ``keys`` (key -> (check, event time)). An append inside the transaction asks again
    only the parts whose token has changed since, and the part appends write to."""

    keys: frozenset[int]
    parts: Mapping[str, tuple[int, Mapping[int, tuple[int, int]]]]


# -- identity and consent ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConsentRow:
    """The current consent of one subject for one purpose."""

    subject: str
    purpose: str
    granted: bool
    source: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class LinkRow:
    """An identity link: ``alias_kind`` is "anonymous_id" or "device_id"."""

    alias_kind: str
    alias: str
    user_id: str
    linked_ms: int


@dataclass(frozen=True, slots=True)
class SubjectKeys:
    """Everything that identifies one person's rows: canonical subjects (user and ``anon:`` aliases), raw ids
    and pseudonyms."""

    subjects: tuple[str, ...]
    user_ids: tuple[str, ...]
    anonymous_ids: tuple[str, ...]
    device_ids: tuple[str, ...]
    pseudonyms: tuple[str, ...]


# -- profiles --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProfileChange:
    """One committed change of a profile, in commit order (what the learner's River models learn from)."""

    id: int
    pseudo: str
    timestamp_ms: int
    body: str


@dataclass(frozen=True, slots=True)
class ProfileWrites:
    """The profile changes of one ingest job, written in this order: the ``deleted`` profiles (merged into
    another person's), the shown histories moved by ``show_merges`` (``(from_pseudos, into)``: merged visitors
    to the user they were identified as, keeping ``show_keep`` times per step), then ``puts``
    (``(pseudo, timestamp_ms, body)``, each with a change row for the learner)."""

    show_keep: int
    puts: list[tuple[str, int, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    show_merges: list[tuple[list[str], str]] = field(default_factory=list)


# -- shown history ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Shows:
    """One person's shown history as read: ``version`` is 0 when there is none yet; ``shows`` maps each step
    to its show times, ascending (as read from a store, ``array('q')`` values: server/store/show_codec.py)."""

    version: int
    shows: Mapping[str, Sequence[int]]


NO_SHOWS = Shows(0, {})
TIME_CODE = "q"  # the array type code of a step's show times (signed 64-bit)


def times_array(times: Sequence[int]) -> array:
    """A copy of ``times`` as the ``array('q')`` a shown history read from a store holds."""
    return array(TIME_CODE, times)


def with_show(shows: Mapping[str, Sequence[int]], step_id: str, ts_ms: int, keep: int) -> dict[str, Sequence[int]]:
    """A copy of ``shows`` (times ascending) with one more show of ``step_id`` at ``ts_ms``, keeping the latest
    ``keep`` times per step (caps need only the latest ``max_per_day`` of them)."""
    out = dict(shows)
    times = times_array(shows.get(step_id, ()))
    if not times or ts_ms >= times[-1]:
        times.append(ts_ms)
    else:
        insort(times, ts_ms)
    if len(times) > keep:
        del times[:len(times) - keep]
    out[step_id] = times
    return out


def merged_shows(a: Mapping[str, Sequence[int]], b: Mapping[str, Sequence[int]], keep: int
                 ) -> dict[str, Sequence[int]]:
    """The shows of ``a`` and ``b`` together (times ascending, the latest ``keep`` per step)."""
    out: dict[str, Sequence[int]] = {k: times_array(v) for k, v in a.items()}
    for step, times in b.items():
        out[step] = times_array(sorted([*out.get(step, ()), *times])[-keep:])
    return out


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    """What a decision reads of one person, at one point: the shown history, the profile body (None: no event
    of theirs is stored) and their current consent records (by purpose)."""

    shows: Shows
    profile_body: str | None
    consents: tuple[ConsentRow, ...]


def latest_show(shows: Mapping[str, Sequence[int]]) -> int:
    """The latest show time of ``shows`` (times ascending), 0 without any."""
    return max((times[-1] for times in shows.values() if times), default=0)


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """A decision row to log, and -- when it shows a step -- the person's new shown history, written only if
    their history is still at ``expected_version``."""

    row: tuple[Any, ...]  # DECISION_COLUMNS values
    pseudo: str = ""  # the shown history's key ("" = the decision shows nothing: no check, no change)
    expected_version: int = 0
    shows: Mapping[str, Sequence[int]] | None = None
    tracked: bool = True
    feed: bool = False  # the learner waits for its outcome (a shown step with a reward window)


# -- decisions and outcomes, as the learner and erasure read them ------------------------------------------------
@dataclass(frozen=True, slots=True)
class PendingRow:
    """A logged decision that showed a step and has no outcome yet (its context is read with the outcome, when
    the models learn)."""

    decision_id: str
    user_pseudo: str
    timestamp_ms: int
    step_id: str
    reward_deadline_ms: int


@dataclass(frozen=True, slots=True)
class JoinedRow:
    """A decision with its outcome, in the order the outcomes were committed. ``probabilities`` (the logged
    distribution) is read for a proposing rule's decisions only (reason ``boosted:...``, the rule monitor)."""

    decision_id: str
    step_id: str
    context: dict[str, float]
    reward: float
    reason: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    timestamp_ms: int | None = None  # of the decision, the time the bandit learned it at (None: not known)


@dataclass(frozen=True, slots=True)
class FedDecision:
    """A logged decision that waits for an outcome (what the reward joiner matches events and deadlines to; the
    context is read with the outcome, when the models learn)."""

    id: int
    decision_id: str
    user_pseudo: str
    timestamp_ms: int
    step_id: str
    reward_deadline_ms: int


@dataclass(frozen=True, slots=True)
class FedOutcome:
    """A committed outcome joined to its decision, in commit order. ``probabilities`` (the logged distribution)
    is read for a proposing rule's decisions only (reason ``boosted:...``: the rule monitor), else empty."""

    id: int
    decision_id: str
    user_pseudo: str
    timestamp_ms: int
    step_id: str
    context: dict[str, float]
    reward: float
    source: str
    reason: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)


# -- the learner's state, snapshots and erasures ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Snapshot:
    """A published model snapshot (or the learner's saved state, version 0): ``positions`` says which rows of
    each feed the body includes."""

    version: int
    created_ms: int
    positions: dict[str, int]
    body: bytes


@dataclass(frozen=True, slots=True)
class Unlearning:
    """An erasure the learner must take out of its models: the person's pseudonyms and the rewarded decisions
    of theirs that the bandit may have learned from (held only until the learner has removed them)."""

    id: int
    pseudonyms: tuple[str, ...]
    rewarded: tuple[JoinedRow, ...]


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure did: rows deleted per table, the person's rewarded decisions (read before they were
    deleted) and the id of the erasure queued for the learner."""

    counts: dict[str, int]
    rewarded: tuple[JoinedRow, ...]
    unlearning_id: int
