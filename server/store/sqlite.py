"""The SQLite store (created with sqlite-utils, WAL mode): the event log, identity links, consent, tombstones,
decisions, outcomes, profiles, shown histories, the learner's feeds and snapshots, and a small meta table.

:class:`SqliteStore` implements the Protocols of server/store/interfaces.py. The SQL of the per-user state, the
learner's tables and the decision reads lives in server/store/user_state.py, server/store/learning_log.py and
server/store/decision_log.py (functions of a SqliteStore, bound here as its methods); the event log's layout in
server/store/events.py.

Writes happen on one connection owned by the writer thread (server/store/writer.py), which wraps groups of calls
in one transaction; the methods here never commit themselves. Reads for exports use a separate read-only
connection (:meth:`SqliteStore.reader`).
"""
from __future__ import annotations

import concurrent.futures
import json
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from server.base.clock import now_ms as _now_ms
from server.base.records import StoredEvent
from server.store import decision_log as _decisions
from server.store import learning_log as _learning
from server.store import user_state as _user_state
from server.store.events import DEFAULT_WINDOW_HOURS, EVENT_COLUMNS, EventTable
from server.store.interfaces import DecisionLog, EventLog, SubjectStore
from server.store.rows import (DECISION_COLUMNS, JSON_DECISION_COLUMNS, OUTCOME_COLUMNS, Appended, ConsentRow,
                               Erased, IdKey, IdLookahead, LinkRow, ProfileWrites, Snapshot, SubjectKeys,
                               _encode_properties, encode_properties)
from server.store.sql import _chunks, _marks, insert_flat
from server.store.write_lock import WriteLock, lock_path

__all__ = ["DECISION_COLUMNS", "EVENT_COLUMNS", "OUTCOME_COLUMNS", "TABLES", "ConsentRow", "DecisionLog",
           "EventLog", "LinkRow", "SqliteStore", "SubjectKeys", "SubjectStore", "encode_properties", "insert_flat",
           "open_store"]

TABLES = ("events", "identities", "device_hints", "consents", "consent_history", "tombstones", "meta", "decisions",
          "outcomes", "profiles", "profile_changes", "show_history", "outcome_log", "decision_feed", "unlearn_queue")
BUSY_TIMEOUT_MS = 30_000  # how long a statement waits for a lock held by another connection
SCRUB_WAIT_MS = 1000  # how long scrub_wal waits for readers of older WAL frames (it holds up the writer)

# A decision that showed a step to someone without tracking consent (no reward window) and still holds their
# pseudonym: kept only while the caps need it (SqliteStore.forget_untracked_shows).
_UNTRACKED_SHOW = "reward_deadline_ms = 0 AND step_id != '' AND user_pseudo != ''"
_NOTHING_APPENDED = Appended(frozenset(), frozenset())


class SqliteStore:
    """The SQLite implementation of :class:`server.store.interfaces.Store`.

    One instance = one connection. The writer thread owns the write instance; :meth:`reader` opens another
    (read-only) instance for exports. Methods do not commit: callers use :meth:`begin`/:meth:`commit`.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "full", readonly: bool = False,
                 dedupe_window_hours: float = DEFAULT_WINDOW_HOURS) -> None:
        self.path = str(path)
        self.readonly = readonly
        self.scrub_pending = False  # a scrub_wal that could not truncate the WAL yet (readers of older frames)
        self.scrub_wait_ms = SCRUB_WAIT_MS  # how long scrub_wal waits for those readers by default
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                    timeout=BUSY_TIMEOUT_MS / 1000)
        self.db = sqlite_utils.Database(self.conn)
        self.events = EventTable(self.conn, dedupe_window_hours, insert_flat)
        # Held from begin() to commit()/rollback(), so a writer of another process waits in the kernel, woken
        # when this one is done, not in SQLite's busy handler (server/store/write_lock.py).
        self.write_lock: WriteLock | None = None
        if readonly:
            self.conn.execute("PRAGMA query_only=ON")
            return
        if self.path != ":memory:":
            self.write_lock = WriteLock(lock_path(self.path))
            self.db.enable_wal()
        self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # Deleted rows are overwritten with zeros, not just unlinked, so an erased person's ids do not stay
        # in free space of the database file (the WAL's older copies go with scrub_wal).
        self.conn.execute("PRAGMA secure_delete=ON")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps the subject index and dedupe levels in memory
        self.create_tables()

    # -- schema ------------------------------------------------------------------------------------------
    def create_tables(self) -> None:
        """Create every table and index (idempotent)."""
        db = self.db
        db.table("identities").create({"alias_kind": str, "alias": str, "user_id": str, "linked_ms": int},
                                      pk=("alias_kind", "alias"), if_not_exists=True)
        db.table("identities").create_index(["user_id"], if_not_exists=True)
        # Anonymous ids seen on a device not linked to anyone: linking the device later links them too.
        self.conn.execute("CREATE TABLE IF NOT EXISTS device_hints (device_id TEXT NOT NULL, anonymous_id TEXT NOT "
                          "NULL, PRIMARY KEY (device_id, anonymous_id)) WITHOUT ROWID")
        self.conn.execute("CREATE INDEX IF NOT EXISTS device_hints_anonymous ON device_hints (anonymous_id)")
        db.table("consents").create({"subject": str, "purpose": str, "granted": int, "source": str,
                                     "timestamp_ms": int}, pk=("subject", "purpose"), if_not_exists=True)
        db.table("consent_history").create(
            {"id": int, "subject": str, "purpose": str, "granted": int, "source": str, "timestamp_ms": int,
             "recorded_ms": int}, pk="id", if_not_exists=True)
        db.table("consent_history").create_index(["subject"], if_not_exists=True)
        db.table("tombstones").create({"user_pseudo": str, "erased_ms": int}, pk="user_pseudo", if_not_exists=True)
        db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
        db.table("decisions").create(
            {"decision_id": str, "user_pseudo": str, "timestamp_ms": int, "surface": str, "step_id": str,
             "propensity": float, "reason": str, "policy_version": str, "experiment": str, "arm": str,
             "context": str, "eligible": str, "probabilities": str, "reward_deadline_ms": int},
            pk="decision_id", if_not_exists=True)
        db.table("decisions").create_index(["user_pseudo"], if_not_exists=True)
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS decisions_untracked_shows ON decisions (timestamp_ms) "
                          f"WHERE {_UNTRACKED_SHOW}")
        db.table("outcomes").create(
            {"decision_id": str, "user_pseudo": str, "reward": float, "source": str, "outcome": str,
             "timestamp_ms": int}, pk="decision_id", if_not_exists=True)
        db.table("outcomes").create_index(["user_pseudo"], if_not_exists=True)
        self.events.create()  # the event log last: converting an older one writes to meta
        self._create_state_tables()

    def _create_state_tables(self) -> None:
        """The per-user state the workers read and the learner's tables (server/store/user_state.py,
        server/store/learning_log.py). Log tables the learner reads by position never reuse a key after a
        deletion (AUTOINCREMENT), so an erasure cannot make it skip a later row."""
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS profiles (pseudo TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID")
        c.execute("CREATE TABLE IF NOT EXISTS profile_changes (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                  "pseudo TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, body TEXT NOT NULL)")
        c.execute("CREATE INDEX IF NOT EXISTS profile_changes_pseudo ON profile_changes (pseudo)")
        c.execute("CREATE TABLE IF NOT EXISTS show_history (pseudo TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                  "shows TEXT NOT NULL, tracked INTEGER NOT NULL, last_ms INTEGER NOT NULL) WITHOUT ROWID")
        c.execute("CREATE TABLE IF NOT EXISTS outcome_log (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                  "decision_id TEXT NOT NULL)")
        c.execute("CREATE INDEX IF NOT EXISTS outcome_log_decision ON outcome_log (decision_id)")
        c.execute("CREATE TABLE IF NOT EXISTS decision_feed (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                  "decision_id TEXT NOT NULL)")
        c.execute("CREATE INDEX IF NOT EXISTS decision_feed_decision ON decision_feed (decision_id)")
        c.execute("CREATE TABLE IF NOT EXISTS unlearn_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                  "body TEXT NOT NULL)")
        c.execute("CREATE TABLE IF NOT EXISTS model_snapshots (version INTEGER PRIMARY KEY, created_ms INTEGER "
                  "NOT NULL, positions TEXT NOT NULL, body BLOB NOT NULL)")
        c.execute("CREATE TABLE IF NOT EXISTS learner_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
                  "created_ms INTEGER NOT NULL, positions TEXT NOT NULL, body BLOB NOT NULL)")

    def backfill_outcome_log(self) -> int:
        """Append to ``outcome_log`` every outcome written without it (a database from before the learner's
        feeds, or rows written by the offline generators), in the order they were written; returns how many."""
        c = self.conn
        if c.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == c.execute(
                "SELECT COUNT(*) FROM outcome_log").fetchone()[0]:
            return 0
        return c.execute("INSERT INTO outcome_log (decision_id) SELECT o.decision_id FROM outcomes o WHERE NOT EXISTS "
                         "(SELECT 1 FROM outcome_log l WHERE l.decision_id = o.decision_id) ORDER BY o.rowid").rowcount

    # -- transactions ------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Take the write lock (waiting for another process's writer to finish), then ``BEGIN IMMEDIATE``."""
        lock = self.write_lock
        if lock is None:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            lock.release()
            raise

    def commit(self) -> None:
        """``COMMIT``, then release the write lock (kept when the COMMIT failed: :meth:`rollback` releases it)."""
        self.conn.execute("COMMIT")
        if self.write_lock is not None:
            self.write_lock.release()

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            if self.write_lock is not None:
                self.write_lock.release()

    def close(self) -> None:
        self.rollback()
        self.conn.close()
        if self.write_lock is not None:
            self.write_lock.close()

    def scrub_wal(self, wait_ms: int | None = None) -> bool:
        """Copy every committed page into the database file and truncate the WAL to zero bytes
        (``PRAGMA wal_checkpoint(TRUNCATE)``), so the WAL keeps no older copy of rows just deleted (an
        erasure). Call outside a transaction, after the commit. Readers are never disturbed: the checkpoint
        waits up to ``wait_ms`` (default :attr:`scrub_wait_ms`) for those still reading older WAL frames and
        returns False when some still are (:attr:`scrub_pending` then stays set and the writer retries after
        its next commits); True when the WAL is empty."""
        if self.path == ":memory:" or self.readonly:
            return True
        self.scrub_pending = True
        lock = self.write_lock
        if lock is not None:  # the other processes' writers wait in the lock meanwhile, not in the busy handler
            lock.acquire()
        try:
            self.conn.execute(f"PRAGMA busy_timeout={int(self.scrub_wait_ms if wait_ms is None else wait_ms)}")
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if lock is not None:
                lock.release()
        self.scrub_pending = busy != 0
        return not self.scrub_pending

    def reader(self) -> "SqliteStore":
        """A new read-only instance on the same file (for exports and checks from other threads)."""
        return SqliteStore(self.path, readonly=True)

    def count(self, table: str) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 (fixed names)

    # -- events (server/store/events.py) ------------------------------------------------------------------
    def preload_id_filters(self) -> concurrent.futures.Future[Any] | None:
        """Start reading the dedupe window's key filters and building their union in the background
        (:meth:`EventTable.preload`); the server calls it before its writer starts. None for a database in memory
        or a read-only store."""
        if self.path == ":memory:" or self.readonly:
            return None
        path = self.path
        return self.events.preload(lambda: SqliteStore(path, readonly=True).conn)

    def look_ahead(self, keys: Sequence[int]) -> IdLookahead:
        """Look up id keys in the dedupe window's level 1 and runs before the writer's transaction
        (:meth:`EventTable.look_ahead`)."""
        return self.events.look_ahead(keys)

    def append_new_events(self, flat: Sequence[Any], now_ms: int, digests: Sequence[IdKey] | None = None,
                          ahead: IdLookahead | None = None) -> Appended:
        """Append events given as their :data:`EVENT_COLUMNS` values one after the other (properties already
        JSON text), skipping ids stored within the dedupe window (:meth:`EventTable.append_new`)."""
        return self.events.append_new(flat, now_ms, digests, ahead)

    def existing_event_ids(self, event_ids: Sequence[str], now_ms: int | None = None) -> set[str]:
        """Which of ``event_ids`` were stored with an event time within the dedupe window (ending now)."""
        return self.events.seen_within_window(event_ids, _now_ms() if now_ms is None else now_ms)

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        """Insert events the caller knows are new (demo data, tests), in order, with few multi-row INSERTs
        (:func:`insert_flat`); an id still in the newest dedupe level raises ``sqlite3.IntegrityError``."""
        encode = _encode_properties
        flat: list[Any] = []
        add = flat.extend
        for e in events:
            add((e.event_id, e.subject, e.user_id, e.anonymous_id, e.device_id, e.name, e.timestamp_ms,
                 e.received_ms, e.channel, e.device_type, e.feature, e.step_id, e.decision_id,
                 encode(e.properties) if e.properties else "{}"))
        self.events.append(flat)

    def rekey_subjects(self, old_subjects: Sequence[str], new_subject: str) -> int:
        """Move events of ``old_subjects`` (e.g. ``anon:abc``) to ``new_subject``; returns rows changed."""
        return self.events.rekey_subjects(old_subjects, new_subject)

    def iter_events(self, after_seq: int = 0, names: Collection[str] | None = None
                    ) -> Iterator[tuple[int, StoredEvent]]:
        """Every event in ``seq`` order (only those named one of ``names``, when given), streamed in chunks
        (startup rebuild, replays, the learner's reward join)."""
        return self.events.iter_events(after_seq, names)

    def events_about(self, keys: SubjectKeys) -> list[StoredEvent]:
        """Every event stored under one of ``keys.subjects`` (never others' events that carry one of the
        person's ids: server/store/events.py, ``subjects_clause``), in ``seq`` order."""
        return self.events.events_about(keys.subjects)

    # -- identities -----------------------------------------------------------------------------------------
    def link_alias(self, alias_kind: str, alias: str, user_id: str, linked_ms: int) -> None:
        """Insert or move the link of an alias to ``user_id``."""
        self.conn.execute("INSERT INTO identities (alias_kind, alias, user_id, linked_ms) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (alias_kind, alias) DO UPDATE SET user_id = excluded.user_id, "
                          "linked_ms = excluded.linked_ms", (alias_kind, alias, user_id, linked_ms))

    def identity_of(self, alias_kind: str, alias: str) -> str | None:
        """The user an alias is linked to, or None."""
        row = self.conn.execute("SELECT user_id FROM identities WHERE alias_kind = ? AND alias = ?",
                                (alias_kind, alias)).fetchone()
        return None if row is None else row[0]

    def device_anonymous_ids(self, device_id: str) -> list[str]:
        """The anonymous ids noted on ``device_id`` (:meth:`note_device_hints`), sorted."""
        return [row[0] for row in self.conn.execute(
            "SELECT anonymous_id FROM device_hints WHERE device_id = ? ORDER BY anonymous_id", (device_id,))]

    def note_device_hints(self, pairs: Sequence[tuple[str, str]], per_device: int) -> None:
        """Note that each (device_id, anonymous_id) was seen together, keeping at most ``per_device`` anonymous
        ids per device."""
        for device_id, anonymous_id in pairs:
            self.conn.execute("INSERT OR IGNORE INTO device_hints (device_id, anonymous_id) SELECT ?, ? WHERE "
                              "(SELECT COUNT(*) FROM device_hints WHERE device_id = ?) < ?",
                              (device_id, anonymous_id, device_id, per_device))

    def unlinked_device_visits(self) -> list[tuple[str, str]]:
        """Every (device_id, anonymous_id) of a stored event of a visitor on a device not linked to anyone, in
        the order first seen: the device hints of a database from before they were rows."""
        return self.conn.execute(
            "SELECT device_id, anonymous_id FROM events WHERE user_id = '' AND device_id != '' AND subject LIKE "
            "'anon:%' AND device_id NOT IN (SELECT alias FROM identities WHERE alias_kind = 'device_id') "
            "GROUP BY device_id, anonymous_id ORDER BY MIN(seq)").fetchall()

    def forget_device_hints(self, device_ids: Sequence[str]) -> None:
        """Drop the hints of devices (now linked to a user)."""
        for part in _chunks(list(device_ids)):
            self.conn.execute(f"DELETE FROM device_hints WHERE device_id IN ({_marks(len(part))})", part)

    def all_links(self) -> Iterator[LinkRow]:
        for row in self.conn.execute("SELECT alias_kind, alias, user_id, linked_ms FROM identities ORDER BY linked_ms"):
            yield LinkRow(*row)

    def links_of(self, user_ids: Sequence[str]) -> list[LinkRow]:
        if not user_ids:
            return []
        cur = self.conn.execute("SELECT alias_kind, alias, user_id, linked_ms FROM identities WHERE user_id IN "
                                f"({_marks(len(user_ids))}) ORDER BY linked_ms, alias_kind, alias", list(user_ids))
        return [LinkRow(*row) for row in cur]

    # -- consent --------------------------------------------------------------------------------------------
    def set_consent(self, row: ConsentRow, recorded_ms: int) -> None:
        """Record the current consent of a subject for a purpose, and append it to the audit history."""
        values = (row.subject, row.purpose, int(row.granted), row.source, row.timestamp_ms)
        self.conn.execute("INSERT INTO consents (subject, purpose, granted, source, timestamp_ms) VALUES "
                          "(?, ?, ?, ?, ?) ON CONFLICT (subject, purpose) DO UPDATE SET granted = excluded.granted, "
                          "source = excluded.source, timestamp_ms = excluded.timestamp_ms", values)
        self.conn.execute("INSERT INTO consent_history (subject, purpose, granted, source, timestamp_ms, "
                          "recorded_ms) VALUES (?, ?, ?, ?, ?, ?)", (*values, recorded_ms))

    def all_consents(self) -> Iterator[ConsentRow]:
        for s, p, g, src, ts in self.conn.execute(
                "SELECT subject, purpose, granted, source, timestamp_ms FROM consents"):
            yield ConsentRow(s, p, bool(g), src, ts)

    def consents_of(self, subjects: Sequence[str]) -> list[ConsentRow]:
        """The current consent records of ``subjects``, by subject and purpose (one query per chunk of ids)."""
        rows: list[ConsentRow] = []
        for part in _chunks(list(subjects)):
            cur = self.conn.execute("SELECT subject, purpose, granted, source, timestamp_ms FROM consents WHERE "
                                    f"subject IN ({_marks(len(part))})", part)
            rows += [ConsentRow(s, p, bool(g), src, ts) for s, p, g, src, ts in cur]
        rows.sort(key=lambda r: (r.subject, r.purpose))
        return rows

    def granted_of(self, subjects: Sequence[str], purpose: str) -> dict[str, bool]:
        """Whether each of ``subjects`` that has a record for ``purpose`` grants it (the ingest job's consent gate:
        one value per person, no row object)."""
        out: dict[str, bool] = {}
        for part in _chunks(list(subjects)):
            # one row of JSON, not a row per person: each row is a SQLite step that gives up and re-takes the GIL
            (found,) = self.conn.execute(
                "SELECT json_group_object(subject, granted) FROM consents WHERE purpose = ? AND subject IN "
                f"({_marks(len(part))})", [purpose, *part]).fetchone()
            out.update((s, g != 0) for s, g in json.loads(found).items())
        return out

    def consent_history_of(self, subjects: Sequence[str]) -> list[ConsentRow]:
        if not subjects:
            return []
        cur = self.conn.execute("SELECT subject, purpose, granted, source, timestamp_ms FROM consent_history "
                                f"WHERE subject IN ({_marks(len(subjects))}) ORDER BY id", list(subjects))
        return [ConsentRow(s, p, bool(g), src, ts) for s, p, g, src, ts in cur]

    # -- tombstones and meta --------------------------------------------------------------------------------
    def add_tombstone(self, user_pseudo: str, erased_ms: int) -> None:
        self.conn.execute("INSERT INTO tombstones (user_pseudo, erased_ms) VALUES (?, ?) ON CONFLICT (user_pseudo) "
                          "DO UPDATE SET erased_ms = excluded.erased_ms", (user_pseudo, erased_ms))

    def remove_tombstone(self, user_pseudo: str) -> bool:
        return self.conn.execute("DELETE FROM tombstones WHERE user_pseudo = ?", (user_pseudo,)).rowcount > 0

    def is_tombstoned(self, user_pseudo: str) -> bool:
        return self.conn.execute("SELECT 1 FROM tombstones WHERE user_pseudo = ?", (user_pseudo,)).fetchone() is not None

    def all_tombstones(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT user_pseudo FROM tombstones")}

    def meta_get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta_set(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                          "value = excluded.value", (key, value))

    def meta_delete(self, key: str) -> bool:
        return self.conn.execute("DELETE FROM meta WHERE key = ?", (key,)).rowcount > 0

    # -- decisions and outcomes -----------------------------------------------------------------------------
    def insert_decisions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Log decisions (dicts with the ``decisions`` columns; context/eligible/probabilities may be JSON
        strings or plain values, which are serialized)."""
        values = []
        for row in rows:
            vals = []
            for col in DECISION_COLUMNS:
                v = row.get(col)
                if col in JSON_DECISION_COLUMNS and v is not None and not isinstance(v, str):
                    v = json.dumps(v, sort_keys=True, separators=(",", ":"))
                vals.append(v)
            values.append(vals)
        self.conn.executemany(f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) VALUES "
                              f"({_marks(len(DECISION_COLUMNS))})", values)

    def insert_outcome(self, row: Mapping[str, Any]) -> bool:
        """Log the outcome of a decision once; False (nothing changed) when it already has one."""
        cur = self.conn.execute(f"INSERT OR IGNORE INTO outcomes ({', '.join(OUTCOME_COLUMNS)}) VALUES "
                                f"({_marks(len(OUTCOME_COLUMNS))})", [row.get(c) for c in OUTCOME_COLUMNS])
        if cur.rowcount > 0:  # the learner learns outcomes in this order (never-reused ids)
            self.conn.execute("INSERT INTO outcome_log (decision_id) VALUES (?)", (row["decision_id"],))
            return True
        return False

    def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        """One logged decision as a dict of its columns (JSON columns still as text), or None."""
        cur = self.conn.execute(f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions WHERE decision_id = ?",
                                (decision_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip(DECISION_COLUMNS, row))

    def forget_untracked_shows(self, before_ms: int) -> int:
        """Remove the pseudonym from the shows of people without tracking consent made before ``before_ms``
        (the caps no longer need them; the row stays, with no id, for counts); returns rows changed."""
        return self.conn.execute(f"UPDATE decisions SET user_pseudo = '' WHERE {_UNTRACKED_SHOW} AND "
                                 "timestamp_ms < ?", (before_ms,)).rowcount

    def get_outcome(self, decision_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM outcomes WHERE decision_id = ?",
                                (decision_id,)).fetchone()
        return None if row is None else dict(zip(OUTCOME_COLUMNS, row))

    def decisions_of(self, pseudonyms: Sequence[str]) -> list[dict[str, Any]]:
        if not pseudonyms:
            return []
        cur = self.conn.execute(f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions WHERE user_pseudo IN "
                                f"({_marks(len(pseudonyms))}) ORDER BY timestamp_ms, decision_id", list(pseudonyms))
        return [dict(zip(DECISION_COLUMNS, row)) for row in cur]

    def outcomes_of(self, pseudonyms: Sequence[str]) -> list[dict[str, Any]]:
        if not pseudonyms:
            return []
        marks = _marks(len(pseudonyms))
        cur = self.conn.execute(
            f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM outcomes WHERE user_pseudo IN ({marks}) OR decision_id IN "
            f"(SELECT decision_id FROM decisions WHERE user_pseudo IN ({marks})) ORDER BY timestamp_ms, decision_id",
            [*pseudonyms, *pseudonyms])
        return [dict(zip(OUTCOME_COLUMNS, row)) for row in cur]

    pending_rows = _decisions.pending_rows  # its SQL: server/store/decision_log.py

    # -- profiles and shown histories (their SQL: server/store/user_state.py) -----------------------------------
    # Bound as methods, so a call costs no extra frame on the hot paths.
    profile_body = _user_state.profile_body
    profile_bodies = _user_state.profile_bodies
    iter_profile_bodies = _user_state.iter_profile_bodies
    profile_count = _user_state.profile_count
    profile_changes_after = _user_state.profile_changes_after
    write_profiles = _user_state.write_profiles
    read_shows = _user_state.read_shows
    decision_inputs = _user_state.decision_inputs
    log_decisions = _user_state.log_decisions

    def append_with_profiles(self, flat: Sequence[Any], now_ms: int,
                             profiles: Callable[[Appended], ProfileWrites],
                             digests: Sequence[IdKey] | None = None, ahead: IdLookahead | None = None) -> Appended:
        """Append events as :meth:`append_new_events` (nothing when ``flat`` is empty), then write the profile
        changes ``profiles`` computes from what was stored, in the caller's transaction."""
        done = self.events.append_new(flat, now_ms, digests, ahead) if flat else _NOTHING_APPENDED
        _user_state.write_profiles(self, profiles(done))
        return done

    def forget_untracked(self, before_ms: int) -> int:
        """Drop the shown history of people without tracking consent, and the pseudonym of their logged shows,
        made before ``before_ms``; returns decision rows changed."""
        _user_state.forget_untracked_history(self, before_ms)
        return self.forget_untracked_shows(before_ms)

    # -- the learner's feeds, state and snapshots (their SQL: server/store/learning_log.py) ---------------------
    feed_end = _learning.feed_end
    decisions_and_events_after = _learning.decisions_and_events_after
    outcomes_after = _learning.outcomes_after
    unlearning_after = _learning.unlearning_after
    latest_snapshot_version = _learning.latest_snapshot_version
    latest_snapshot = _learning.latest_snapshot
    publish_snapshot = _learning.publish_snapshot
    load_learner_state = _learning.load_learner_state
    drop_learner_state = _learning.drop_learner_state

    def save_learner_state(self, state: Snapshot, drop_snapshots: bool = False) -> None:
        """Save the learner's state and delete what its positions include (and, with ``drop_snapshots``,
        every published snapshot)."""
        _learning.save_state_and_prune(self, state, drop_snapshots)

    def last_event_seq(self) -> int:
        """The ``seq`` of the newest stored event (0: none)."""
        row = self.conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    # -- erasure --------------------------------------------------------------------------------------------
    def erase(self, keys: SubjectKeys) -> dict[str, int]:
        """Delete every row about ``keys`` from every table; returns rows deleted per table."""
        c = self.conn
        deleted: dict[str, int] = {"events": self.events.erase(keys.subjects)}
        # The person's aliases are the rows linking to the person's user ids; an alias linked to someone else now
        # is that person's link and stays.
        users = list(keys.user_ids)
        deleted["identities"] = c.execute(
            f"DELETE FROM identities WHERE user_id IN ({_marks(len(users))})", users).rowcount if users else 0
        hinted = [*keys.device_ids, *keys.anonymous_ids]
        if hinted:  # the person's visits noted on devices (derived from the events counted above)
            c.execute(f"DELETE FROM device_hints WHERE device_id IN ({_marks(len(keys.device_ids))}) OR "
                      f"anonymous_id IN ({_marks(len(keys.anonymous_ids))})", hinted)
        subjects = list(keys.subjects)
        for table in ("consents", "consent_history"):
            deleted[table] = c.execute(f"DELETE FROM {table} WHERE subject IN ({_marks(len(subjects))})",
                                       subjects).rowcount if subjects else 0
        pseudos = list(keys.pseudonyms)
        if pseudos:
            marks = _marks(len(pseudos))
            deleted["outcomes"] = c.execute(
                f"DELETE FROM outcomes WHERE user_pseudo IN ({marks}) OR decision_id IN "
                f"(SELECT decision_id FROM decisions WHERE user_pseudo IN ({marks}))", [*pseudos, *pseudos]).rowcount
            for table in ("outcome_log", "decision_feed"):
                c.execute(f"DELETE FROM {table} WHERE decision_id IN (SELECT decision_id FROM decisions WHERE "
                          f"user_pseudo IN ({marks}))", pseudos)
            deleted["decisions"] = c.execute(f"DELETE FROM decisions WHERE user_pseudo IN ({marks})",
                                             pseudos).rowcount
            deleted["profiles"] = c.execute(f"DELETE FROM profiles WHERE pseudo IN ({marks})", pseudos).rowcount
            c.execute(f"DELETE FROM profile_changes WHERE pseudo IN ({marks})", pseudos)
            deleted["show_history"] = c.execute(f"DELETE FROM show_history WHERE pseudo IN ({marks})",
                                                pseudos).rowcount
        else:
            deleted["outcomes"] = deleted["decisions"] = deleted["profiles"] = deleted["show_history"] = 0
        return deleted

    def erase_person(self, keys: SubjectKeys, erased_ms: int) -> Erased:
        """Read the person's rewarded decisions (what the models may have learned), delete every row about
        ``keys``, queue the erasure for the learner and tombstone the pseudonyms, in the caller's transaction."""
        rewarded = tuple(_decisions.rewarded_rows_of(self, keys.pseudonyms))
        outcome_ids = _learning.outcome_ids_of(self, [row.decision_id for row in rewarded])
        counts = self.erase(keys)
        unlearning = _learning.queue_unlearning(self, keys.pseudonyms, rewarded, outcome_ids)
        for p in keys.pseudonyms:
            self.add_tombstone(p, erased_ms)
        return Erased(counts, rewarded, unlearning)

    def rows_about(self, keys: SubjectKeys) -> dict[str, int]:
        """How many rows of each table are about ``keys`` (used by tests and the erase check)."""
        c = self.conn
        out = {"events": self.events.count_about(keys.subjects)}
        users = list(keys.user_ids)
        out["identities"] = c.execute(f"SELECT COUNT(*) FROM identities WHERE user_id IN ({_marks(len(users))})",
                                      users).fetchone()[0] if users else 0
        hinted = [*keys.device_ids, *keys.anonymous_ids]
        out["device_hints"] = c.execute(
            f"SELECT COUNT(*) FROM device_hints WHERE device_id IN ({_marks(len(keys.device_ids))}) OR anonymous_id "
            f"IN ({_marks(len(keys.anonymous_ids))})", hinted).fetchone()[0] if hinted else 0
        subjects = list(keys.subjects)
        for table in ("consents", "consent_history"):
            out[table] = c.execute(f"SELECT COUNT(*) FROM {table} WHERE subject IN ({_marks(len(subjects))})",
                                   subjects).fetchone()[0] if subjects else 0
        pseudos = list(keys.pseudonyms)
        for table in ("decisions", "outcomes"):
            out[table] = c.execute(f"SELECT COUNT(*) FROM {table} WHERE user_pseudo IN ({_marks(len(pseudos))})",
                                   pseudos).fetchone()[0] if pseudos else 0
        for table in ("profiles", "profile_changes", "show_history"):
            out[table] = c.execute(f"SELECT COUNT(*) FROM {table} WHERE pseudo IN ({_marks(len(pseudos))})",
                                   pseudos).fetchone()[0] if pseudos else 0
        return out


def open_store(path: str | Path, synchronous: str = "full",
               dedupe_window_hours: float = DEFAULT_WINDOW_HOURS) -> SqliteStore:
    """Open (creating if needed, converting an older event log) the store at ``path`` for writing."""
    return SqliteStore(path, synchronous=synchronous, dedupe_window_hours=dedupe_window_hours)

