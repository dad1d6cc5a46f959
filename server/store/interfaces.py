"""The store as the rest of the server uses it: narrow Protocols with plain values in and out
(server/store/rows.py), no SQL and no backend types. :class:`server.store.sqlite.SqliteStore` implements them all
(the embedded default); a second backend (NATS JetStream: streams and key-value buckets) implements the same.

Atomicity: each method that must be atomic is one call, which each backend makes atomic its own way --
:meth:`ShowHistory.log_decisions` ("log this decision if the person's shown-history version is still N"),
:meth:`EventLog.append_with_profiles` ("append these events, skipping ids seen within the dedupe window, and apply
them to the profiles"), :meth:`DecisionLog.insert_outcome` (one outcome per decision),
:meth:`PersonStore.erase_person`, :meth:`LearningLog.publish_snapshot`, :meth:`LearningLog.save_learner_state`.

The writer (server/store/writer.py) runs jobs, functions of a :class:`Store`, between :meth:`Transactions.begin`
and :meth:`Transactions.commit` (several jobs share one commit). The jobs that make several calls get one
transaction from SQLite; what they need from a backend without one:

- an ingest job (server/ingest/pipeline.py) reads identity links, consent and tombstones, then calls
  :meth:`EventLog.append_with_profiles`; an identify event also carries consent over, links aliases
  (:meth:`SubjectStore.link_alias`) and re-keys the person's earlier events (:meth:`EventLog.rekey_subjects`, after
  appending the job's events so far). Without a shared transaction these must run in that order; each is
  idempotent, and a re-sent identify whose event was not stored does them again;
- SetConsent records the consent and, for a tracking grant, removes the tombstone, in that order;
- an outcome job reads the decision (:meth:`DecisionLog.get_decision`) and records the outcome once
  (:meth:`DecisionLog.insert_outcome`: atomic on its own).
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol

from server.base.records import StoredEvent
from server.store.rows import (Appended, ConsentRow, DecisionInputs, Erased, FedDecision, FedOutcome, IdKey,
                               IdLookahead, LinkRow, LoggedDecision, PendingRow, ProfileChange, ProfileWrites, Shows,
                               Snapshot, SubjectKeys, Unlearning)


class EventLog(Protocol):
    """The append-only event log, idempotent by event_id within the dedupe window (server/store/events.py; on
    NATS, a stream's duplicate window with the event id as ``Nats-Msg-Id``)."""

    def look_ahead(self, keys: Sequence[int]) -> IdLookahead | None:
        """Look up id keys (the first half of each :func:`~server.store.rows.digest`) in the parts of the window
        that appends inside a transaction can trust without asking again while no writer changes them; call
        outside the writer's transaction, so the write lock is not held for it. None: nothing to look up ahead
        (the append asks everything)."""
        ...

    def append_new_events(self, flat: Sequence[Any], now_ms: int, digests: Sequence[IdKey] | None = None,
                          ahead: IdLookahead | None = None) -> Appended:
        """Append events given as their EVENT_COLUMNS values one after the other (properties as JSON text),
        skipping ids stored within the window; atomic. ``digests``: each event id's
        :func:`~server.store.rows.digest`, worked out by the caller before the transaction (None: here);
        ``ahead``: what :meth:`look_ahead` found for them before the transaction."""
        ...

    def append_with_profiles(self, flat: Sequence[Any], now_ms: int,
                             profiles: Callable[[Appended], ProfileWrites],
                             digests: Sequence[IdKey] | None = None, ahead: IdLookahead | None = None) -> Appended:
        """Append as :meth:`append_new_events`, then write the profile changes that ``profiles`` computes from
        what was stored: one atomic unit (an acknowledged event is in the profile any worker reads next)."""
        ...

    def existing_event_ids(self, event_ids: Sequence[str], now_ms: int | None = None) -> set[str]: ...

    def append_events(self, events: Sequence[StoredEvent]) -> None: ...

    def rekey_subjects(self, old_subjects: Sequence[str], new_subject: str) -> int: ...

    def iter_events(self, after_seq: int = 0, names: Collection[str] | None = None
                    ) -> Iterator[tuple[int, StoredEvent]]: ...

    def last_event_seq(self) -> int: ...


class SubjectStore(Protocol):
    """Identity links, device hints, consent (current + history), tombstones and meta values, read by key (the
    workers read them per request and per ingest job: any process may have changed them)."""

    def identity_of(self, alias_kind: str, alias: str) -> str | None: ...

    def links_of(self, user_ids: Sequence[str]) -> list[LinkRow]: ...

    def link_alias(self, alias_kind: str, alias: str, user_id: str, linked_ms: int) -> None: ...

    def device_anonymous_ids(self, device_id: str) -> list[str]: ...

    def note_device_hints(self, pairs: Sequence[tuple[str, str]], per_device: int) -> None: ...

    def forget_device_hints(self, device_ids: Sequence[str]) -> None: ...

    def consents_of(self, subjects: Sequence[str]) -> list[ConsentRow]: ...

    def granted_of(self, subjects: Sequence[str], purpose: str) -> dict[str, bool]: ...

    def set_consent(self, row: ConsentRow, recorded_ms: int) -> None: ...

    def is_tombstoned(self, user_pseudo: str) -> bool: ...

    def add_tombstone(self, user_pseudo: str, erased_ms: int) -> None: ...

    def remove_tombstone(self, user_pseudo: str) -> bool: ...

    def meta_get(self, key: str) -> str | None: ...

    def meta_set(self, key: str, value: str) -> None: ...

    def meta_delete(self, key: str) -> bool: ...


class DecisionLog(Protocol):
    """Decisions and their outcomes (one outcome per decision)."""

    def insert_decisions(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def insert_outcome(self, row: Mapping[str, Any]) -> bool:
        """Record the outcome of a decision once (False: it had one); atomic, and appended to the outcome feed
        the learner reads."""
        ...

    def get_decision(self, decision_id: str) -> dict[str, Any] | None: ...

    def pending_rows(self) -> list[PendingRow]: ...


class ProfileStore(Protocol):
    """Profile bodies by pseudonym (opaque text: server/ingest/profiles.py encodes them) and their change feed."""

    def profile_body(self, pseudo: str) -> str | None: ...

    def profile_bodies(self, pseudos: Sequence[str]) -> dict[str, str]: ...

    def iter_profile_bodies(self) -> Iterator[tuple[str, str]]: ...

    def write_profiles(self, writes: ProfileWrites) -> None:
        """Delete, merge shown histories and put profiles (with a change row each), in that order; atomic."""
        ...

    def profile_changes_after(self, after_id: int, limit: int = 5000) -> list[ProfileChange]: ...


class ShowHistory(Protocol):
    """Each person's shown history with a version, so caps, cooldowns and gaps hold across workers (on NATS, a
    key-value bucket whose revision is the version: compare-and-set)."""

    def read_shows(self, pseudo: str) -> Shows: ...

    def decision_inputs(self, pseudo: str, subject: str) -> DecisionInputs:
        """The shown history and profile body of ``pseudo`` and the consent records of ``subject`` (its
        canonical subject), as committed at one point: one read per GetNextStep instead of three."""
        ...

    def log_decisions(self, items: Sequence[LoggedDecision]) -> list[bool]:
        """Log each decision whose person's shown history is still at its expected version (bumping it); False
        for one whose version moved (decide again). Each item is atomic on its own; the call is one unit."""
        ...

    def forget_untracked(self, before_ms: int) -> int:
        """Drop the shown history of people without tracking consent and the pseudonym of their logged shows
        once no guardrail counts them (shown before ``before_ms``); returns decision rows changed."""
        ...


class LearningLog(Protocol):
    """What the learner reads in commit order (positions never reused) and writes: snapshots and its state."""

    def feed_end(self, feed: str) -> int:
        """The newest position of a feed ("decisions", "outcomes", "changes" or "unlearn")."""
        ...

    def decisions_and_events_after(self, decision_pos: int, event_seq: int, names: Collection[str] | None = None,
                                   waiting: bool = True
                                   ) -> tuple[list[FedDecision], list[tuple[int, StoredEvent]], int]:
        """Every decision fed after ``decision_pos`` and the events after ``event_seq`` (only those named one of
        ``names`` when given; none when ``waiting`` is False and no decision was fed), read as of one moment: an
        event is never returned without a decision logged before it. The last item is the newest event's
        position as of that moment (where the next read starts: the events skipped are passed over)."""
        ...

    def outcomes_after(self, after_id: int, limit: int = 5000) -> list[FedOutcome]: ...

    def unlearning_after(self, after_id: int) -> list[tuple[Unlearning, dict[str, int]]]: ...

    def latest_snapshot_version(self) -> int: ...

    def latest_snapshot(self) -> Snapshot | None: ...

    def publish_snapshot(self, created_ms: int, positions: Mapping[str, int], body: bytes) -> int:
        """Store the next snapshot version (never one handed out before) and drop older ones; atomic."""
        ...

    def load_learner_state(self) -> Snapshot | None: ...

    def save_learner_state(self, state: Snapshot, drop_snapshots: bool = False) -> None:
        """Save the learner's state, then delete what its positions include (profile change rows up to
        ``positions["changes"]``, queued erasures up to ``positions["unlearn"]``) and, with ``drop_snapshots``,
        every published snapshot; atomic."""
        ...

    def drop_learner_state(self) -> None: ...


class PersonStore(Protocol):
    """One person's rows, for export and erasure."""

    def events_about(self, keys: SubjectKeys) -> list[StoredEvent]: ...

    def decisions_of(self, pseudonyms: Sequence[str]) -> list[dict[str, Any]]: ...

    def outcomes_of(self, pseudonyms: Sequence[str]) -> list[dict[str, Any]]: ...

    def erase_person(self, keys: SubjectKeys, erased_ms: int) -> Erased:
        """Read the person's rewarded decisions, delete every row about ``keys``, queue the erasure for the
        learner and tombstone the pseudonyms; atomic."""
        ...


class Transactions(Protocol):
    """The unit the writer runs jobs in (server/store/writer.py), and read handles. A backend whose methods are
    atomic on their own may make begin/commit/rollback no-ops."""

    scrub_pending: bool  # an erasure's older copies (the SQLite WAL) could not be dropped yet

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def scrub_wal(self, wait_ms: int | None = None) -> bool:
        """After a committed erasure: drop older copies of the deleted data the backend keeps; False while
        readers still hold them (retried after later commits)."""
        ...

    def reader(self) -> Store:
        """A new read handle (for one thread), seeing everything committed before each read."""
        ...

    def close(self) -> None: ...


class Upgrades(Protocol):
    """Bringing data written by an older version up to date, once, before the writer starts (a backend with no
    older data returns nothing)."""

    def unlinked_device_visits(self) -> list[tuple[str, str]]: ...

    def backfill_outcome_log(self) -> int: ...


class Store(EventLog, SubjectStore, DecisionLog, ProfileStore, ShowHistory, LearningLog, PersonStore, Transactions,
            Upgrades, Protocol):
    """Everything the workers, the learner and the writer use."""
