"""The ingestion pipeline and the per-user data operations: identity resolution -> consent gate -> dedupe ->
event log and profile rows (one transaction), then listeners; plus SetConsent, erasure and export.

Every change runs as a job of the writer thread (server/store/writer.py), in submission order. Identity links,
device hints, consent and tombstones are read from the store by key, per request and per job (a job reads them
inside its write transaction), so every decision and every consent gate sees the SetConsent, identify and
erasure calls any worker process committed before it. Profiles are rows of the store,
updated in the transaction that stores their events (with a change row for the learner): a caller that got
its ack sees its events in the profile any worker reads next.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.base import records as r
from server.base.clock import now_ms
from server.base.config import IngestConfig
from server.base.records import ANON_PREFIX, EventValues, StoredEvent
from server.ingest.consent import OPTED_OUT, PERSONALIZATION, TRACKING, ConsentBook
from server.ingest.identity import ANONYMOUS_ID, DEVICE_ID, MAX_DEVICE_HINTS, IdentityGraph, LinkPlan
from server.ingest.profiles import Profile, ProfileBook, WrittenProfiles, decode_profile, encode_profile
from server.store.interfaces import Store
from server.store.privacy import Pseudonymizer
from server.store.rows import (Appended, ConsentRow, IdKey, IdLookahead, JoinedRow, LinkRow, ProfileWrites,
                               SubjectKeys, digest, encode_properties)
from server.store.writer import Writer

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Erasure:
    """One committed erasure: every key of the person, and their decisions that had an outcome (read before
    the rows were deleted), so that the models can remove what they learned from them."""

    keys: SubjectKeys
    rewarded: tuple[JoinedRow, ...] = ()
    unlearning_id: int = 0  # its entry in the learner's unlearn queue (server/store/learning_log.py)


Listener = Callable[[list[StoredEvent]], None]
ErasureListener = Callable[[Erasure], "Awaitable[None] | None"]
# Operations of a job: ("events", [StoredEvent, ...], None) and ("link", alias_subject, user) are applied to the
# profile rows inside the job; ("erased", Erasure, [awaitables]) is published after commit on the loop thread.
ProfileOp = tuple[str, Any, Any]
CARRIED_SOURCE_PREFIX = "carried:"
PROFILE_ROWS_KEY = "profile_rows"  # meta: profiles are rows (built from the event log once, if older)
DEVICE_HINTS_KEY = "device_hints"  # meta: device hints are rows (noted from the event log once, if older)
SHOW_KEEP = 16  # show times kept per (person, step) when histories merge (the engine sets the catalog's need)


class _Profiles:
    """The profiles one ingest job changes: loaded from the store on first use, folded in order, and handed back
    as :class:`ProfileWrites` (the store writes them with the job's events)."""

    def __init__(self, store: Store, pseudonym: Callable[[str], str], written: WrittenProfiles) -> None:
        self.store = store
        self.pseudonym = pseudonym
        self.written = written  # profiles read back as written by an earlier job are not decoded again
        self.loaded: dict[str, Profile] = {}
        self.changed: dict[str, int] = {}  # subject -> latest event time folded in
        self.merged: dict[str, str] = {}  # merged-away subject -> the user it went to

    def get(self, subject: str) -> Profile:
        p = self.loaded.get(subject)
        if p is None:
            body = self.store.profile_body(self.pseudonym(subject))
            p = self.loaded[subject] = Profile(subject) if body is None else decode_profile(subject, body)
        return p

    def read(self, subjects: Collection[str]) -> None:
        """Load the profiles of ``subjects`` not loaded yet, in one query per chunk (a job's people at once)."""
        todo = {self.pseudonym(s): s for s in subjects if s not in self.loaded}
        bodies = self.store.profile_bodies(list(todo))
        decode = self.written.decode
        for pseudo, subject in todo.items():
            body = bodies.get(pseudo)
            self.loaded[subject] = Profile(subject) if body is None else decode(subject, pseudo, body)

    def observe(self, ev: StoredEvent) -> None:
        subject = ev.subject
        self.get(subject).observe(ev)
        ts = ev.timestamp_ms
        if ts > self.changed.get(subject, -1):
            self.changed[subject] = ts

    def link(self, alias_subject: str, user: str) -> None:
        target = self.get(user)
        if alias_subject != user:
            other = self.get(alias_subject)
            target.merge(other)
            self.merged[alias_subject] = user
            self.loaded.pop(alias_subject, None)
            ts = self.changed.pop(alias_subject, other.last_seen_ms)
            self.changed[user] = max(self.changed.get(user, -1), ts)

    def writes(self, show_keep: int) -> ProfileWrites:
        pseudonym, loaded, wrote = self.pseudonym, self.loaded, self.written.wrote
        writes = ProfileWrites(show_keep, [])
        for s, ts in self.changed.items():
            profile = loaded.get(s)
            if profile is not None:
                pseudo, body = pseudonym(s), encode_profile(profile)
                writes.puts.append((pseudo, ts, body))
                wrote(pseudo, body, profile)
        if self.merged:
            writes.deleted.extend(pseudonym(s) for s in self.merged)
            into: dict[str, list[str]] = {}
            for alias, user in self.merged.items():
                into.setdefault(user, []).append(pseudonym(alias))
            writes.show_merges.extend((aliases, pseudonym(user)) for user, aliases in into.items())
        return writes


@dataclass(slots=True)
class IngestResult:
    """Outcome of a group of events, all committed: counts, drop reasons and the newly stored events.
    ``outside_window`` counts the accepted events older than the dedupe window (stored without the check)."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    stored: list[StoredEvent] = field(default_factory=list)
    outside_window: int = 0

    def add(self, other: "IngestResult") -> None:
        self.received += other.received
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.outside_window += other.outside_window
        self.dropped.update(other.dropped)



@dataclass(slots=True)
class Prepared:
    """What storing a batch needs that no row of the store decides, worked out when it is submitted (on the
    caller's thread, the event loop's), not in the job, so the writer holds the write lock only for what must be
    read and written under it: each event's id digest; and, for an event with a user id (its subject, whatever
    the links and consent say), the stored event and its row of :data:`~server.store.events.EVENT_COLUMNS`
    (None for an event with only an anonymous or device id: its subject is resolved in the job). ``ahead`` is
    set on the writer thread just before the job's transaction (:meth:`Pipeline._look_ahead`)."""

    digests: list[IdKey]
    events: list[StoredEvent | None]
    rows: list[tuple[Any, ...] | None]
    ahead: IdLookahead | None = None


# One ingest batch as the writer's combined job gets it: the events, when they were received, and the batch's
# profile operations, stored events (both filled by the job) and prepared values.
Batch = tuple[list[EventValues], int, list[ProfileOp], list[StoredEvent], Prepared]


def prepare(events: Sequence[EventValues], received_ms: int) -> Prepared:
    """The :class:`Prepared` values of validated events received at ``received_ms``."""
    digests: list[IdKey] = []
    stored: list[StoredEvent | None] = []
    rows: list[tuple[Any, ...] | None] = []
    add_digest, add_event, add_row = digests.append, stored.append, rows.append
    for values in events:
        add_digest(digest(values[0]))
        uid = values[1]
        if uid:
            se, row = stored_event(values, uid, received_ms)
            add_event(se)
            add_row(row)
        else:
            add_event(None)
            add_row(None)
    return Prepared(digests, stored, rows)


def stored_event(values: EventValues, subject: str, received_ms: int) -> tuple[StoredEvent, tuple[Any, ...]]:
    """A validated event as stored for ``subject`` (its own copy of the properties; a time of 0 is the receipt
    time), with its row of :data:`~server.store.events.EVENT_COLUMNS` (the properties as JSON text)."""
    eid, uid, aid, did, name, ts, channel, device_type, feature, step_id, decision_id, props = values
    ts = ts or received_ms
    if props:
        properties = dict(props)  # the event's own copy (the caller's dict may be shared)
        text = encode_properties(properties)
    else:
        properties, text = {}, "{}"
    return (StoredEvent(eid, subject, name, ts, received_ms, uid, aid, did, channel, device_type, feature, step_id,
                        decision_id, properties),
            (eid, subject, uid, aid, did, name, ts, received_ms, channel, device_type, feature, step_id, decision_id,
             text))


@dataclass(slots=True)
class UserData:
    """Everything held about one person (for ExportUserData)."""

    subject: str
    links: list[LinkRow]
    consents: list[ConsentRow]
    events: list[StoredEvent]
    decisions: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]


class Pipeline:
    """Runs every change through the writer, and reads identities, consent and profiles from the store."""

    def __init__(self, store: Store, writer: Writer, pseudonymizer: Pseudonymizer,
                 ingest: IngestConfig | None = None) -> None:
        self.store = store
        self.writer = writer
        self.pseudonymizer = pseudonymizer
        self.ingest_config = ingest or IngestConfig()
        self.show_keep = SHOW_KEEP
        self._reader: Store | None = None  # profile, identity and consent reads on the event loop thread
        self._listeners: list[Listener] = []
        self._erasure_listeners: list[ErasureListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._written = WrittenProfiles()  # the profiles the writer thread last wrote (ingest jobs only)

    # -- wiring ----------------------------------------------------------------------------------------------
    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Publish profile updates and listener calls on ``loop`` (None: on the writer thread)."""
        self._loop = loop

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(new_events)`` after each commit that stored events (on the event loop thread, in commit
        order). Exceptions are logged and do not affect ingestion."""
        self._listeners.append(fn)

    def add_erasure_listener(self, fn: ErasureListener) -> None:
        """Call ``fn(erasure)`` after each committed erasure (on the event loop thread, in commit order, after
        the profiles were dropped), so that components drop what they hold about the person (the decision
        engine's shown history, pending rewards, caches, what its models learned). ``fn`` may return an
        awaitable: :meth:`erase` returns once it is done. Exceptions are logged."""
        self._erasure_listeners.append(fn)

    def pseudonym(self, subject: str) -> str:
        return self.pseudonymizer.pseudonymize(subject)

    @property
    def identity(self) -> IdentityGraph:
        """The identity links as committed now (read on the event loop thread's connection); keep the object
        for one request at most (it remembers what it read)."""
        return IdentityGraph(self._loop_reader())

    @property
    def consent(self) -> ConsentBook:
        """Consent and tombstones as committed now (read on the event loop thread's connection); keep the
        object for one request at most (it remembers what it read)."""
        return ConsentBook(self._loop_reader())

    def resolve(self, user_id: str, anonymous_id: str, device_id: str = "") -> str:
        """The canonical subject of ids as given in a request (after the identity links committed now)."""
        if user_id:
            return user_id
        return self.identity.resolve(user_id, anonymous_id, device_id)

    # -- startup ---------------------------------------------------------------------------------------------
    def rebuild(self) -> int:
        """Bring an older database up to date, once: note which anonymous ids each device carried (from its
        event log) and build profile rows (returns how many). Call before the writer starts."""
        self._note_old_device_hints()
        return self._build_profile_rows()

    def _note_old_device_hints(self) -> None:
        """Device hints as rows, noted from the event log once (a database from before they were rows)."""
        store = self.store
        if store.meta_get(DEVICE_HINTS_KEY) is not None:
            return
        store.begin()
        try:
            if store.meta_get(DEVICE_HINTS_KEY) is None:  # another worker may have done it meanwhile
                store.note_device_hints(store.unlinked_device_visits(), MAX_DEVICE_HINTS)
                store.meta_set(DEVICE_HINTS_KEY, "1")
            store.commit()
        except BaseException:
            store.rollback()
            raise

    def _build_profile_rows(self) -> int:
        """Profiles as rows, built from the event log once (a database from before they were rows)."""
        store = self.store
        store.begin()
        try:
            store.backfill_outcome_log()
            store.commit()
        except BaseException:
            store.rollback()
            raise
        if store.meta_get(PROFILE_ROWS_KEY) is not None:
            return 0
        book = ProfileBook()
        for _seq, ev in store.iter_events():
            book.apply(ev)
        store.begin()
        try:
            store.write_profiles(ProfileWrites(self.show_keep, [(self.pseudonym(p.subject), p.last_seen_ms,
                                                                 encode_profile(p)) for p in book.in_subject_order()]))
            store.meta_set(PROFILE_ROWS_KEY, "1")
            store.commit()
        except BaseException:
            store.rollback()
            raise
        if len(book):
            log.info("built %d profile rows from the event log (database from before profiles were rows)", len(book))
        return len(book)

    # -- publishing after commit -------------------------------------------------------------------------------
    def _published(self, ops: list[ProfileOp], stored: list[StoredEvent]) -> Callable[[Any], None]:
        def after_commit(_result: Any) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                self._publish(ops, stored)
                return
            try:
                loop.call_soon_threadsafe(self._publish, ops, stored)
            except RuntimeError:  # loop closed meanwhile
                self._publish(ops, stored)
        return after_commit

    def _publish(self, ops: list[ProfileOp], stored: list[StoredEvent]) -> None:
        for kind, a, b in ops:
            if kind == "erased":
                self._erased(a, b)
        if stored:
            for fn in self._listeners:
                try:
                    fn(stored)
                except Exception:  # noqa: BLE001 - a listener must not break ingestion
                    log.exception("event listener %r failed", fn)

    def _erased(self, erasure: Erasure, waits: list[Awaitable[None]]) -> None:
        for s in erasure.keys.subjects:
            self.pseudonymizer.forget(s)  # no raw id kept in the pseudonym cache
        self.close_reader()
        for fn in self._erasure_listeners:
            try:
                done = fn(erasure)
            except Exception:  # noqa: BLE001 - the rows are gone; report and let the others forget too
                log.exception("erasure listener %r failed", fn)
                continue
            if inspect.isawaitable(done):
                waits.append(done)

    # -- ingestion ---------------------------------------------------------------------------------------------
    def submit_events(self, events: Sequence[EventValues], received_ms: int | None = None
                      ) -> concurrent.futures.Future[IngestResult]:
        """Queue validated events (the :data:`EventValues` the API edge read from the messages); the future
        resolves after they are committed (profiles updated first).

        The writer thread (which the ingest rate waits on) only resolves, gates, dedupes and inserts, holding the
        write lock that every worker's writer takes turns on; what needs no store read (id digests, the rows of
        events with a user id) is worked out here first (:func:`prepare`). Batches that wait at the writer
        together are stored by one
        :meth:`_ingest_many` call (one duplicate check and one INSERT for all of them); each keeps its own
        result, publication and future."""
        received = now_ms() if received_ms is None else received_ms
        batch = events if isinstance(events, list) else list(events)
        ops: list[ProfileOp] = []
        stored: list[StoredEvent] = []
        return self.writer.submit_combined(self._ingest_many, (batch, received, ops, stored, prepare(batch, received)),
                                           weight=len(batch), after_commit=self._published(ops, stored),
                                           ahead=self._look_ahead)

    async def ingest(self, events: Sequence[EventValues], received_ms: int | None = None
                     ) -> IngestResult:
        """Store validated events and return their committed counts."""
        return await asyncio.wrap_future(self.submit_events(events, received_ms))

    @staticmethod
    def _look_ahead(store: Store, batches: list[Batch]) -> None:
        """Look the batches' ids up, before their transaction, in the parts of the dedupe window a job can trust
        without asking again while no writer changes them (:meth:`~server.store.interfaces.EventLog.look_ahead`);
        the job then asks only the rest, holding the write lock."""
        ahead = store.look_ahead([key for *_, prepared in batches for key, _check in prepared.digests])
        for *_, prepared in batches:
            prepared.ahead = ahead

    def _ingest_many(self, store: Store, batches: list[Batch]) -> list[IngestResult]:
        """Store batches in order, as if one after the other: resolve identities, gate on consent, append
        skipping ids stored within the dedupe window (or earlier in these batches); fill each batch's ``ops``
        and ``stored``.

        All rows go into one append at the end (or before an identify re-keys earlier events), which also writes
        the profiles (:meth:`~server.store.interfaces.EventLog.append_with_profiles`); the events it skips as
        duplicates are taken out of the profile runs and the results first."""
        pending: list[Any] = []  # EVENT_COLUMNS values of the events not appended yet
        pending_events: list[StoredEvent] = []  # ... their events
        pending_digests: list[IdKey] = []  # ... and their ids' digests
        skipped: set[int] = set()  # id() of the events the appends skipped as duplicates
        outside: set[int] = set()  # id() of the events appended without the check (older than the window)
        add_row, add_pending, add_digest = pending.extend, pending_events.append, pending_digests.append
        identifies: set[str] = set()  # ids of the identify events of this call
        now = now_ms()

        def appended(done: Appended) -> None:
            skipped.update(id(pending_events[i]) for i in done.duplicates)
            outside.update(id(pending_events[i]) for i in done.outside_window)
            pending.clear()
            pending_events.clear()
            pending_digests.clear()

        # the group's look-ahead (a batch re-run alone keeps it; batches that joined once the write lock was
        # taken have none: their ids are looked up in full)
        ahead = next((prepared.ahead for *_, prepared in batches if prepared.ahead is not None), None)

        def append() -> None:
            if pending:
                appended(store.append_new_events(pending, now, pending_digests, ahead))
        hints: dict[tuple[str, str], None] = {}  # (device_id, anonymous_id) seen unlinked, not noted yet
        note_device = hints.setdefault
        # Links and consent as this transaction sees them, read by key once per job
        identity, consent, pseudo = IdentityGraph(store), ConsentBook(store), self.pseudonym
        resolve, gate = identity.resolve, consent.tracking_gate
        consent.read({ev[1] for events, *_ in batches for ev in events if ev[1]})  # the users' records, at once
        results: list[IngestResult] = []
        for events, received_ms, ops, stored, prepared in batches:
            ops.clear()
            stored.clear()
            result = IngestResult(received=len(events))
            dropped = result.dropped
            run: list[StoredEvent] = []  # events applied to the profiles one after the other
            ops.append(("events", run, None))
            keep = stored.append
            digests, ready_events, ready_rows = prepared.digests, prepared.events, prepared.rows
            for i, (eid, uid, aid, did, name, ts, channel, device_type, feature, step_id, decision_id, props) in \
                    enumerate(events):
                se = ready_events[i]
                if se is not None and name != r.IDENTIFY:  # a user's event, built before the lock: only gated here
                    subject = uid
                    reason = gate(uid, pseudo)
                elif name == r.IDENTIFY:
                    # A re-sent identify must not link again (its alias may be linked to someone else since):
                    # looked up before its links are made, not only when appended (identifies are rare).
                    if eid in identifies or store.existing_event_ids([eid], now):
                        continue  # counted as a duplicate
                    identifies.add(eid)
                    n_ops = len(ops)
                    if hints:  # a device linked now brings the visitors seen on it earlier in this job
                        store.note_device_hints(list(hints), MAX_DEVICE_HINTS)
                        hints.clear()
                    reason = self._identify(store, identity, consent, uid, aid, did, ts or received_ms, append, ops)
                    subject = uid
                    if len(ops) != n_ops:  # profiles merged: later events apply after the merge
                        run = []
                        ops.append(("events", run, None))
                else:
                    subject = resolve(uid, aid, did)
                    reason = gate(subject, pseudo)
                if reason is not None:
                    dropped[reason] += 1
                    continue
                if se is None:  # an anonymous or device id's event: its subject is known only now
                    se, row = stored_event(events[i], subject, received_ms)
                else:  # a user's event or an identify (its subject is its user id): its row is ready
                    row = ready_rows[i]  # type: ignore[assignment]
                add_row(row)
                add_digest(digests[i])
                add_pending(se)
                keep(se)
                run.append(se)
                if not uid and did and subject.startswith(ANON_PREFIX):
                    note_device((did, aid))
            result.stored = stored
            results.append(result)
        if hints:
            store.note_device_hints(list(hints), MAX_DEVICE_HINTS)

        def profile_writes(done: Appended) -> ProfileWrites:
            appended(done)
            profiles = _Profiles(store, pseudo, self._written)
            profiles.read({e.subject for _e, _r, _o, stored, _p in batches for e in stored if id(e) not in skipped})
            for result, (_events, _received, ops, stored, _prepared) in zip(results, batches):
                if skipped:
                    stored[:] = [e for e in stored if id(e) not in skipped]
                    for kind, run_events, _ in ops:
                        if kind == "events":
                            run_events[:] = [e for e in run_events if id(e) not in skipped]
                result.accepted = len(stored)
                result.duplicates = result.received - result.accepted - sum(result.dropped.values())
                result.outside_window = sum(1 for e in stored if id(e) in outside) if outside else 0
                for kind, a, b in ops:  # the profile rows, in event order (a merge before the events after it)
                    if kind == "events":
                        for ev in a:
                            profiles.observe(ev)
                    elif kind == "link":
                        profiles.link(a, b)
                ops[:] = [op for op in ops if op[0] not in ("events", "link")]  # applied: nothing to publish
            return profiles.writes(self.show_keep)
        store.append_with_profiles(pending, now, profile_writes, pending_digests, ahead)
        return results

    def _identify(self, store: Store, identity: IdentityGraph, consent: ConsentBook, user_id: str,
                  anonymous_id: str, device_id: str, ts: int, append_pending: Callable[[], None],
                  ops: list[ProfileOp]) -> str | None:
        """Handle an identify event: carry consent over from the anonymous subjects, gate on the user's
        tracking consent, then link the aliases, move their events and merge their profiles. Returns the drop
        reason, or None when the identify event is to be stored."""
        plan = identity.plan_link(user_id, anonymous_id, device_id)
        carried = self._carried_consent(consent, user_id, plan)
        tracking = next((c for c in carried if c.purpose == TRACKING), None)
        if tracking is not None:
            reason = None if tracking.granted else OPTED_OUT
        else:
            reason = consent.tracking_gate(user_id, self.pseudonym)
        if reason is not None:
            return reason
        now = now_ms()
        for row in carried:
            self._write_consent(store, row, now, consent)
        if plan.changes_anything:
            append_pending()  # earlier events of this job must be in the table before they are re-keyed
            for kind, alias in plan.links:
                store.link_alias(kind, alias, user_id, ts)
            store.forget_device_hints([alias for kind, alias in plan.links if kind == DEVICE_ID])
            if plan.merged_subjects:
                store.rekey_subjects(plan.merged_subjects, user_id)
            identity.applied(plan)
            for s in plan.merged_subjects:
                ops.append(("link", s, user_id))
        return None

    @staticmethod
    def _carried_consent(consent: ConsentBook, user_id: str, plan: LinkPlan) -> list[ConsentRow]:
        """Consent given on a merged anonymous subject, for purposes the user has no record of."""
        out: list[ConsentRow] = []
        for purpose in (TRACKING, PERSONALIZATION):
            if consent.get(user_id, purpose) is not None:
                continue
            for s in plan.merged_subjects:
                row = consent.get(s, purpose)
                if row is not None:
                    out.append(ConsentRow(user_id, purpose, row.granted, f"{CARRIED_SOURCE_PREFIX}{row.source}",
                                          row.timestamp_ms))
                    break
        return out

    def _write_consent(self, store: Store, row: ConsentRow, recorded_ms: int,
                       consent: ConsentBook | None = None) -> None:
        """Write a consent record (a tracking grant clears a tombstone); ``consent`` forgets what it read."""
        store.set_consent(row, recorded_ms)
        p = ""
        if row.purpose == TRACKING and row.granted:
            p = self.pseudonym(row.subject)
            store.remove_tombstone(p)
        if consent is not None:
            consent.changed(row.subject, p)

    # -- consent -----------------------------------------------------------------------------------------------
    async def set_consent(self, subject: str, purpose: str, granted: bool, source: str, timestamp_ms: int
                          ) -> list[ConsentRow]:
        """Record a consent decision (always stored: it is the legal record); a tracking grant clears an
        erasure tombstone. Returns the subject's current records."""
        row = ConsentRow(subject, purpose, granted, source, timestamp_ms)

        def job(store: Store) -> list[ConsentRow]:
            consent = ConsentBook(store)
            self._write_consent(store, row, now_ms(), consent)
            return consent.records(subject)
        return await self.writer.call(job)

    # -- erasure and export --------------------------------------------------------------------------------------
    def keys_for(self, subject: str, identity: IdentityGraph | None = None) -> SubjectKeys:
        """Every id and subject of one person: the user, its linked aliases and their anonymous subjects (links
        read through ``identity``, by default as committed now)."""
        subjects = [subject]
        user_ids: list[str] = []
        anonymous_ids: list[str] = []
        device_ids: list[str] = []
        if subject.startswith(ANON_PREFIX):
            anonymous_ids.append(subject.removeprefix(ANON_PREFIX))
        else:
            user_ids.append(subject)
            for link in (identity or self.identity).links_of(subject):
                if link.alias_kind == ANONYMOUS_ID:
                    anonymous_ids.append(link.alias)
                    subjects.append(ANON_PREFIX + link.alias)
                elif link.alias_kind == DEVICE_ID:
                    device_ids.append(link.alias)
        return SubjectKeys(tuple(subjects), tuple(user_ids), tuple(anonymous_ids), tuple(device_ids),
                           tuple(self.pseudonym(s) for s in subjects))

    async def erase(self, subject: str) -> dict[str, int]:
        """Delete every row about ``subject`` and its aliases, drop its profiles, and tombstone its
        pseudonyms so later events are dropped (reason erased) until tracking consent is granted again.
        After the commit the erasure listeners drop what else is held in memory (see
        :meth:`add_erasure_listener`); this returns once they are done."""
        ops: list[ProfileOp] = []
        waits: list[Awaitable[None]] = []

        def job(store: Store) -> dict[str, int]:
            ops.clear()
            keys = self.keys_for(subject, IdentityGraph(store))
            erased = store.erase_person(keys, now_ms())
            self._written.forget(keys.pseudonyms)
            ops.append(("erased", Erasure(keys, erased.rewarded, erased.unlearning_id), waits))
            return erased.counts
        counts = await self.writer.call(job, after_commit=self._published(ops, []), scrub_wal=True)
        for done in waits:  # the listeners ran before this task resumed (published first, in commit order)
            try:
                await done
            except Exception:  # noqa: BLE001 - the rows are gone; report it
                log.exception("erasure listener failed after the erasure committed")
        return counts

    async def export(self, subject: str) -> UserData:
        """Everything held about ``subject`` and its aliases, read on a separate read-only connection."""
        keys = self.keys_for(subject)

        def read() -> UserData:
            reader = self.store.reader()
            try:
                return UserData(subject=subject, links=reader.links_of(keys.user_ids),
                                consents=reader.consents_of(keys.subjects), events=reader.events_about(keys),
                                decisions=reader.decisions_of(keys.pseudonyms),
                                outcomes=reader.outcomes_of(keys.pseudonyms))
            finally:
                reader.close()
        return await asyncio.to_thread(read)

    def _loop_reader(self) -> Store:
        """The event loop thread's read connection: each read sees everything committed before it."""
        reader = self._reader
        if reader is None:
            reader = self._reader = self.store.reader()
        return reader

    def profile(self, subject: str) -> Profile | None:
        """The stored profile of a canonical subject (None when no event of it is stored), read on this
        thread's own connection: everything committed before is in it."""
        body = self._loop_reader().profile_body(self.pseudonym(subject))
        return None if body is None else decode_profile(subject, body)

    def forget_people(self) -> None:
        """Drop every person held in memory (cached pseudonyms, the writer's kept profiles, the read connection
        and its page cache): the engine calls it once a model snapshot includes a newer erasure, which another
        process may have committed (so which people it named is not known here)."""
        self.pseudonymizer.forget_all()
        self._written.clear()
        self.close_reader()

    def close_reader(self) -> None:
        """Close the connection :meth:`profile` reads on (stop, or after an erasure: its page cache held the
        person's rows)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
