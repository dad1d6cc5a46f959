"""The event log's layout in SQLite: events appended by an increasing key, and the event ids of the dedupe
window in a small log-structured set whose cost per event does not grow with the log or with the window.

``events`` is keyed by ``seq`` (appends only) with one index, on ``(seq >> EPOCH_BITS, subject)``: the log is
cut into epochs of :data:`EPOCH_SIZE` consecutive events, and the index holds each epoch's entries sorted by
subject. A new entry lands in the newest epoch's part of the index (a few hundred pages, all in the cache),
whatever the log holds; an index on ``subject`` alone would put it at the end of its subject's run, spread
over the whole index, so that each page split read pages long out of the cache and each COMMIT wrote one
page per active subject. Per-subject access (export, erasure, re-keying an alias's events) asks each epoch in
turn (:data:`EPOCHS`: one index search per epoch and subject, about 150 at 10M events; SQLite's plan is
checked by tests/server/test_event_log.py). It has no index on ``event_id``: a uuid4 id would land at a random
page of an index as large as the log, one page write per event once that index outgrows a transaction.

Idempotency is promised within a window of event time instead (``[ingest] dedupe_window_hours``): an event
whose ``timestamp_ms`` is at most the window older than the server's clock is stored at most once per
``event_id``; an older one is stored without the check (a re-send of it is stored again) and counted as
``outside_window``. The ids of the window are kept as 96-bit digests (a 64-bit key and a 32-bit check), each
row (key, check, event time) of a small integer-keyed table, in two levels and a tier of sealed runs:

- new ids go to ``event_ids_0`` (kept below :data:`LEVEL_ROWS`\\[0] rows, so its pages stay few and hot),
  which is merged in key order into ``event_ids_1`` when full;
- ``event_ids_1``, once it holds :data:`LEVEL_ROWS`\\[1] ids, is sealed as a run: renamed to
  ``event_ids_r<N>`` (no row is copied) and listed in ``event_id_runs`` with its id count, the newest event
  time it holds and its key filter; a new empty level 1 takes its place;
- a run is never written again: it is dropped whole (``DROP TABLE`` and its row of ``event_id_runs``, in the
  writer's transaction) once its newest event time has left the window.

So an id is written twice (level 0, then the merge into level 1) whatever the window holds, and no
transaction rewrites more than level 1 (at most about :data:`LEVEL_ROWS`\\[1] ids): no step grows with
the window. A lookup probes level 0, then level 1 and each run only for the keys their filters (the sorted
high halves of their keys, :class:`~server.store.id_filter.KeyFilter`; level 1's in ``event_ids_filter``,
rewritten with every merge into it; a run's beside it in ``event_id_runs``, written once; each stored in the
same transaction as the ids) do not rule out: those tables hold nearly every id of the window, far more pages
than the cache, and a new id would otherwise cost a read of a page of each.

Runs are not merged with each other, and have one size: with 100M ids in the window there are 100 runs. A
merge of runs (size-tiered or leveled) would write each id again and, for large runs, hold the writer for
the seconds a large rewrite takes, which is what this layout removes. With several runs, a batch's keys are
first asked of one in-memory filter over all of them (their union: a run sealed is merged into it, one pass,
on a thread of its own once the union is large, the new run asked on its own meanwhile; the keys of runs
dropped or erased from stay until they are a quarter of it, then it is built again from the runs' sorted
arrays; a server builds it when it starts, :meth:`EventTable.preload`), and each run's filter only about the
few keys (about ids/2^32 of them) the union does not rule out: one probe per key (one cache miss, blocks behind
a small top index, :class:`~server.store.id_filter.KeyFilter`; 0.13-0.18 µs on the 2-core machine of
docs/benchmarks.md) whatever the number of runs, where asking each run's filter cost that per run (~1.5 µs per
event at 10 runs).
The filters' memory is 8-9 bytes per id of the runs (each run's and the union), and the point reads after a false
"maybe" stay as few as with one filter (about ids/2^32 per key, summed over runs). Dropping a run writes its
pages once more (``secure_delete`` zeroes them), once per run.

Only level 0 has to be asked holding the write lock. Level 1 and each run change only together with their token
(a merge, a seal or an erasure writes a new one), so the writer looks a batch's ids up in them before it takes
the lock (:meth:`EventTable.look_ahead`, in a read transaction of its own), and the append inside the transaction
reads every token in one row and asks level 0, plus only the parts whose token changed or that are new since.
The filters' probes, the reads of the runs and the union's merges after a seal are then out of the time the
other workers' writers wait for.

The shape is that of a NATS JetStream stream's duplicate window (``Nats-Msg-Id``): :meth:`EventTable.append_new`
is the one atomic operation, "append these events, skipping ids seen within the window".

A log whose subject index is on ``subject`` alone (:data:`OLD_SUBJECT_INDEX`, before the epochs) is converted
on open: that index dropped and the epoch one built, one transaction (143 s, 24 s of it CPU, for 24.5M events on
the loaded machine of docs/benchmarks.md).

Layouts (``meta.event_log_layout``): 3 is this one; 2 (a last level ``event_ids_2`` rewritten by each merge
into it) is converted on open by renaming that level to the first run; 1 (a UNIQUE index on
``events.event_id``) by recording the ids of the window as the first run and dropping the index.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.base.records import StoredEvent
from server.store.id_filter import KeyFilter, Query
from server.store.rows import Appended, IdKey, IdLookahead, digest
from server.store.sql import _chunks, _marks, insert_flat

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "subject", "user_id", "anonymous_id", "device_id", "name", "timestamp_ms",
                 "received_ms", "channel", "device_type", "feature", "step_id", "decision_id", "properties")
_WIDTH = len(EVENT_COLUMNS)
_TS = EVENT_COLUMNS.index("timestamp_ms")
HOUR_MS = 3_600_000
DEFAULT_WINDOW_HOURS = 168  # 7 days of event time, as Amplitude's insert_id
LEVELS = ("event_ids_0", "event_ids_1")
LEVEL_ROWS = (100_000, 1_000_000)  # rows at which level 0 is merged into level 1, and level 1 sealed as a run
FILTER_TABLE = "event_ids_filter"  # level (1) -> (token, KeyFilter bytes); a new token with each body
RUNS_TABLE = "event_id_runs"  # run -> (ids, newest event time, token, KeyFilter bytes); table RUN_PREFIX + run
RUN_PREFIX = "event_ids_r"
LEVEL_1_NEWEST_KEY = "event_ids_1_newest"  # meta: newest event time in level 1 (kept by each merge into it)
LAYOUT_KEY = "event_log_layout"  # meta: 3 = this layout (2: a leveled last level; 1: a UNIQUE index on event_id)
LAYOUT = "3"
OLD_EVENT_ID_INDEX = "idx_events_event_id"
OLD_LAST_LEVEL = "event_ids_2"  # layout 2's last level (its filter was level 2 of FILTER_TABLE) ...
OLD_LAST_LEVEL_ROWS_KEY = "event_ids_2_rows"  # ... and its row count in meta
EPOCH_BITS = 16  # the subject index's epochs: events seq >> EPOCH_BITS
EPOCH_SIZE = 1 << EPOCH_BITS  # 65,536 events: the newest epoch's part of the index stays a few hundred pages
SUBJECT_INDEX = "idx_events_epoch_subject"  # events ((seq >> EPOCH_BITS), subject)
OLD_SUBJECT_INDEX = "idx_events_subject"  # events (subject): converted on open
RunUnion = tuple[frozenset[tuple[int, int]], KeyFilter]  # a filter over runs, and the (run, token) pairs it holds
MERGE_AHEAD_KEYS = 2_000_000  # a runs' union larger than this takes in a new run on a thread of its own
CONVERT_WAIT_MS = 600_000  # how long another process opening the log waits for a conversion that holds the lock
# Every epoch of the log, oldest first, read in the statement that uses it (so a reader sees one snapshot).
EPOCHS = (f"WITH RECURSIVE epoch(e) AS (SELECT (SELECT min(seq) FROM events) >> {EPOCH_BITS} UNION ALL SELECT "
          f"e + 1 FROM epoch WHERE e < (SELECT max(seq) FROM events) >> {EPOCH_BITS}) SELECT e FROM epoch")
_ID_COLUMNS = "(h INTEGER PRIMARY KEY, chk INTEGER NOT NULL, ts INTEGER NOT NULL)"
_ID_NAMES = ("h", "chk", "ts")
_SELECT_EVENT = f"SELECT seq, {', '.join(EVENT_COLUMNS)} FROM events"


def event_from_row(row: Sequence[Any]) -> tuple[int, StoredEvent]:
    """(seq, event) of a row selected as ``seq`` followed by :data:`EVENT_COLUMNS`."""
    seq, eid, subject, uid, aid, did, name, ts, rec, channel, dtype, feature, step, dec, props = row
    return seq, StoredEvent(eid, subject, name, ts, rec, uid, aid, did, channel, dtype, feature, step, dec,
                            json.loads(props) if props and props != "{}" else {})


def subjects_clause(subjects: Sequence[str]) -> tuple[str, list[Any]]:
    """Events belong to the subject they were stored under (the person the event was attributed to then),
    never to whoever else's ids they carry: a shared device or a reused anonymous id links events to
    several people, and export and erasure must cover exactly one of them (docs/decisions.md). The clause asks
    the subject index epoch by epoch (:data:`EPOCHS`)."""
    subjects = [s for s in subjects if s]
    if not subjects:
        return "0", []
    return f"(seq >> {EPOCH_BITS}) IN ({EPOCHS}) AND subject IN ({_marks(len(subjects))})", subjects


def merged_union(held: RunUnion | None, runs: list[Run]) -> RunUnion:
    """The (run, token) pairs of ``runs`` and a filter holding every key of them: ``held`` (an earlier union) with
    the runs it does not hold merged in, or built from the runs alone when there is none or when the keys of runs
    gone or erased from since are over a quarter of it. Pure: runs on any thread."""
    listed = frozenset((run.id, run.token) for run in runs)
    if held is None:
        return listed, KeyFilter.union_of([run.filter for run in runs])
    new = [run.filter for run in runs if (run.id, run.token) not in held[0]]
    union = KeyFilter.union_of([held[1], *new]) if new else held[1]
    if len(union) - sum(len(run.filter) for run in runs) > len(union) // 4:
        union = KeyFilter.union_of([run.filter for run in runs])
    return listed, union


def _resolve(future: concurrent.futures.Future[Any], fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` and resolve ``future`` with what it returns or raises (the body of a helper thread)."""
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - whoever waits for the future reports it
        future.set_exception(exc)


@dataclass(frozen=True)
class Run:
    """One sealed run of the window's ids, as listed in :data:`RUNS_TABLE` (its ids never change but by an
    erasure, which writes a new token)."""

    id: int
    token: int
    rows: int
    newest: int  # the newest event time among its ids: the run leaves the window with it
    filter: KeyFilter

    @property
    def table(self) -> str:
        return f"{RUN_PREFIX}{self.id}"


class EventTable:
    """The event log and its dedupe window on one SQLite connection (the caller owns transactions)."""

    def __init__(self, conn: sqlite3.Connection, window_hours: float = DEFAULT_WINDOW_HOURS,
                 insert: Any = None) -> None:
        self.conn = conn
        self.window_ms = int(window_hours * HOUR_MS)
        self._insert = insert or insert_flat  # insert_flat(conn, table, columns, flat[, verb]) of server/store/sql.py
        self._rows = [0, 0]  # rows in each level (counted at open, then kept up to date)
        # level 1's (token, filter) as last read or written here (another process's merge writes a new token)
        self._filters: dict[int, tuple[int, KeyFilter]] = {}
        self._runs: dict[int, Run] = {}  # the runs as last read (each lookup reads the list again)
        # one filter holding every key of the runs listed beside it as (run, token) pairs (and maybe keys of runs
        # since dropped or erased from), see _union_of
        self._union: RunUnion | None = None
        self._preloading: concurrent.futures.Future[tuple[list[Run], RunUnion | None]] | None = None  # preload()
        self._merging: concurrent.futures.Future[RunUnion] | None = None  # a merge on a thread of its own

    # -- schema ------------------------------------------------------------------------------------------
    def create(self) -> None:
        """Create the tables and indexes (idempotent) and convert a log of layout 1 (the unique ``event_id``
        index, :meth:`convert`) or 2 (:meth:`convert_last_level`)."""
        c = self.conn
        # seq is never handed out twice (AUTOINCREMENT), so the learner, which reads events by seq, cannot miss
        # one appended after the newest events were erased
        c.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, "
                  "subject TEXT NOT NULL, user_id TEXT, anonymous_id TEXT, device_id TEXT, name TEXT NOT NULL, "
                  "timestamp_ms INTEGER, received_ms INTEGER, channel TEXT, device_type TEXT, feature TEXT, "
                  "step_id TEXT, decision_id TEXT, properties TEXT)")
        if self._has(OLD_SUBJECT_INDEX, "index"):
            self.convert_subject_index()
        c.execute(f"CREATE INDEX IF NOT EXISTS {SUBJECT_INDEX} ON events ((seq >> {EPOCH_BITS}), subject)")
        for level in LEVELS:
            c.execute(f"CREATE TABLE IF NOT EXISTS {level} {_ID_COLUMNS}")
        c.execute(f"CREATE TABLE IF NOT EXISTS {FILTER_TABLE} (level INTEGER PRIMARY KEY, token INTEGER NOT NULL, "
                  "body BLOB NOT NULL)")
        c.execute(f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (run INTEGER PRIMARY KEY, rows INTEGER NOT NULL, "
                  "newest INTEGER NOT NULL, token INTEGER NOT NULL, body BLOB NOT NULL)")
        if self._has(OLD_EVENT_ID_INDEX, "index"):
            self.convert()
        if self._has(OLD_LAST_LEVEL):
            self.convert_last_level()
        if self._meta(LAYOUT_KEY) != LAYOUT:
            self._set_meta(LAYOUT_KEY, LAYOUT)
        self._rows = [c.execute(f"SELECT COUNT(*) FROM {level}").fetchone()[0] for level in LEVELS]  # noqa: S608

    def _has(self, name: str, kind: str = "table") -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)
                                 ).fetchone() is not None

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                              "excluded.value", (key, value))

    def _transaction(self) -> bool:
        """Begin a write transaction unless the caller holds one; True when this call began it."""
        if self.conn.in_transaction:
            return False
        self.conn.execute("BEGIN IMMEDIATE")
        return True

    def _end(self, own: bool, ok: bool) -> None:
        if own and self.conn.in_transaction:
            self.conn.execute("COMMIT" if ok else "ROLLBACK")

    def convert_subject_index(self) -> None:
        """Replace the index on ``subject`` alone by the epoch index (:data:`SUBJECT_INDEX`), in one transaction.
        Another process opening the log meanwhile waits for it (up to :data:`CONVERT_WAIT_MS`)."""
        c = self.conn
        started = time.perf_counter()
        timeout = c.execute("PRAGMA busy_timeout").fetchone()[0]
        c.execute(f"PRAGMA busy_timeout={CONVERT_WAIT_MS}")
        try:
            own = self._transaction()
            try:
                if self._has(OLD_SUBJECT_INDEX, "index"):  # another process may have converted it meanwhile
                    c.execute(f"DROP INDEX {OLD_SUBJECT_INDEX}")
                    c.execute(f"CREATE INDEX IF NOT EXISTS {SUBJECT_INDEX} ON events ((seq >> {EPOCH_BITS}), subject)")
                self._end(own, True)
            except BaseException:
                self._end(own, False)
                raise
        finally:
            c.execute(f"PRAGMA busy_timeout={timeout}")
        log.info("event log's subject index converted to epochs of %d events (%.1f s)", EPOCH_SIZE,
                 time.perf_counter() - started)

    def convert(self, now_ms: int | None = None) -> int:
        """Convert a log of layout 1 (every id in a UNIQUE index on ``events``): record the ids of the events
        within the window as a run, then drop that index. One transaction; returns the ids recorded."""
        c = self.conn
        started = time.perf_counter()
        horizon = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.window_ms
        own = self._transaction()
        try:
            rows: dict[int, tuple[int, int]] = {}
            if self._has(OLD_EVENT_ID_INDEX, "index"):  # another process may have converted it meanwhile
                for eid, ts in c.execute("SELECT event_id, timestamp_ms FROM events WHERE timestamp_ms >= ?",
                                         (horizon,)):
                    h, chk = digest(eid)
                    rows[h] = (chk, ts)
                if rows:
                    run = self._next_run()
                    c.execute(f"CREATE TABLE {RUN_PREFIX}{run} {_ID_COLUMNS}")
                    keys = sorted(rows)
                    c.executemany(f"INSERT INTO {RUN_PREFIX}{run} (h, chk, ts) VALUES (?, ?, ?)",
                                  ((h, *rows[h]) for h in keys))
                    self._store_run(run, len(keys), max(ts for _, ts in rows.values()), KeyFilter.of_sorted(keys))
                c.execute(f"DROP INDEX {OLD_EVENT_ID_INDEX}")
                self._set_meta(LAYOUT_KEY, LAYOUT)
            self._end(own, True)
        except BaseException:
            self._end(own, False)
            raise
        log.info("event log converted to the windowed-dedupe layout: %d ids of the last %.0f h recorded, the "
                 "unique event_id index dropped (%.1f s)", len(rows), self.window_ms / HOUR_MS,
                 time.perf_counter() - started)
        return len(rows)

    def convert_last_level(self) -> int:
        """Convert a log of layout 2 (a last level ``event_ids_2``, rewritten by every merge into it): that
        level becomes the first run (renamed, its filter moved to the run's row; its newest event time read
        once). One transaction; returns the ids it holds."""
        c = self.conn
        own = self._transaction()
        n = 0
        try:
            if self._has(OLD_LAST_LEVEL):  # another process may have converted it meanwhile
                n, newest = c.execute(f"SELECT COUNT(*), max(ts) FROM {OLD_LAST_LEVEL}").fetchone()
                if n:
                    body = c.execute(f"SELECT body FROM {FILTER_TABLE} WHERE level = 2").fetchone()
                    run = self._next_run()
                    c.execute(f"ALTER TABLE {OLD_LAST_LEVEL} RENAME TO {RUN_PREFIX}{run}")
                    kept = KeyFilter.from_bytes(body[0]) if body else \
                        KeyFilter.of_sorted(self._keys(f"{RUN_PREFIX}{run}"))
                    self._store_run(run, n, newest, kept)
                else:
                    c.execute(f"DROP TABLE {OLD_LAST_LEVEL}")
                c.execute(f"DELETE FROM {FILTER_TABLE} WHERE level = 2")
                self._set_meta(OLD_LAST_LEVEL_ROWS_KEY, None)
                self._set_meta(LAYOUT_KEY, LAYOUT)
            self._end(own, True)
        except BaseException:
            self._end(own, False)
            raise
        log.info("event log converted to sealed runs of ids: the last level's %d ids are the first run", n)
        return n

    # -- the dedupe window -------------------------------------------------------------------------------
    def id_tables(self) -> list[str]:
        """The tables holding the window's ids: the levels, then the runs oldest first."""
        return [*LEVELS, *(run.table for run in self._runs_now())]

    def _seen(self, keys: Sequence[int], write: bool = False, ahead: IdLookahead | None = None
              ) -> dict[int, tuple[int, int]]:
        """(check, newest event time) recorded for each of ``keys`` found in a level or run (level 1 and the
        runs asked only about the keys their filters do not rule out). ``write``: inside the writer's
        transaction (a missing filter of level 1 is then built and stored). ``ahead``: what :meth:`look_ahead`
        found for some or all of these keys. Level 0 is always asked. For the keys it looked up, its answers
        stand for each part whose token is unchanged, and only the parts that are new or have a new token (a
        merge, a seal, an erasure) are asked again; a part gone since (a run dropped) is out of the window. The
        keys it did not look up are asked of every part."""
        keys = list(keys)
        found = self._ask(LEVELS[0], keys)
        if ahead is None:
            parts = self._lookup(keys, self._filter(1, write), self._runs_now())
        else:
            if not ahead.keys.issuperset(keys):  # keys it did not look up are asked of every part
                covered = ahead.keys
                parts = self._lookup([k for k in keys if k not in covered], self._filter(1, write), self._runs_now())
                keys = [k for k in keys if k in covered]
            else:
                parts = []
            tokens = self._tokens()
            stale = [part for part, token in tokens.items()
                     if (held := ahead.parts.get(part)) is None or held[0] != token]
            parts += [hits for part, (token, hits) in ahead.parts.items() if tokens.get(part) == token]
            if LEVELS[1] not in tokens:  # no filter stored yet: level 1 is asked about every key
                stale.append(LEVELS[1])
            if stale:
                query = Query.of(keys) if keys else None
                runs = {run.table: run for run in self._runs_now()} if set(stale) - {LEVELS[1]} else {}
                for part in stale:
                    if part == LEVELS[1]:
                        parts.append(self._ask(part, self._maybe(self._filter(1, write), keys, query)))
                    elif part in runs:
                        parts.append(self._ask(part, self._maybe(runs[part].filter, keys, query)))
        for hits in parts:
            for h, hit in hits.items():
                old = found.get(h)
                if old is None or hit[1] > old[1]:
                    found[h] = hit
        return found

    def look_ahead(self, keys: Sequence[int]) -> IdLookahead:
        """What level 1 and the runs hold of ``keys``, with each one's token, read in one read transaction of its
        own (call it outside the writer's transaction: the write lock is not taken). An append given it asks
        only level 0 and the parts changed since (:meth:`_seen`), so the filters' probes and the reads of the runs
        happen before the write lock is taken."""
        c = self.conn
        keys = list(keys)
        own = not c.in_transaction
        if own:
            c.execute("BEGIN")  # tokens and contents as of one snapshot
        try:
            level_1 = self._filter(1, write=False)  # None: no filter stored yet, the append asks level 1 itself
            runs = self._runs_now()
            found = self._lookup(keys, level_1, runs, level_1 is not None)
            parts: dict[str, tuple[int, Mapping[int, tuple[int, int]]]] = {
                run.table: (run.token, found[i + 1]) for i, run in enumerate(runs)}
            if level_1 is not None:
                parts[LEVELS[1]] = (self._filters[1][0], found[0])
        finally:
            if own:
                c.execute("COMMIT")
        return IdLookahead(frozenset(keys), parts)

    def _lookup(self, keys: list[int], level_1: KeyFilter | None, runs: list[Run], ask_level_1: bool = True
                ) -> list[dict[int, tuple[int, int]]]:
        """What level 1 (``level_1``: its filter; not asked unless ``ask_level_1``) and then each of ``runs`` hold
        of ``keys``: each asked only about the keys its filter does not rule out; with several runs, the runs the
        union holds only about the keys it does not rule out, the others (sealed or erased from since it was
        built) about all of them."""
        query = Query.of(keys) if keys else None
        asks = [(LEVELS[1], self._maybe(level_1, keys, query) if ask_level_1 else [])]
        if len(runs) > 1 and query is not None:
            held, union = self._union_of(runs)
            maybe = self._maybe(union, keys, query)
            maybe_query = Query.of(maybe) if maybe else None
            asks += [(run.table, self._maybe(run.filter, maybe, maybe_query) if (run.id, run.token) in held
                      else self._maybe(run.filter, keys, query)) for run in runs]
        else:
            asks += [(run.table, self._maybe(run.filter, keys, query)) for run in runs]
        return [self._ask(table, asked) for table, asked in asks]

    def _ask(self, table: str, keys: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(check, event time) of each of ``keys`` that ``table`` (a level or run) holds."""
        found: dict[int, tuple[int, int]] = {}
        for part in _chunks(keys):
            for h, chk, ts in self.conn.execute(f"SELECT h, chk, ts FROM {table} WHERE h IN "  # noqa: S608
                                                f"({_marks(len(part))})", part):
                found[h] = (chk, ts)
        return found

    def _tokens(self) -> dict[str, int]:
        """The token of level 1's filter and of each run, by table, as committed: one row (each row read gives up
        and re-takes the GIL, and this is read holding the write lock)."""
        try:
            (text,) = self.conn.execute(
                f"SELECT json_group_object(part, token) FROM (SELECT ? AS part, token FROM {FILTER_TABLE} WHERE "
                f"level = 1 UNION ALL SELECT ? || run, token FROM {RUNS_TABLE})", (LEVELS[1], RUN_PREFIX)).fetchone()
        except sqlite3.OperationalError:  # a read-only connection to a log no writer of this layout opened
            return {}
        return json.loads(text)

    @staticmethod
    def _maybe(kept: KeyFilter | None, keys: list[int], query: Query | None) -> list[int]:
        """The keys of ``keys`` (whose :class:`Query` is ``query``) that ``kept`` does not rule out (all of them
        when there is no filter)."""
        if kept is None:
            return keys
        return [keys[i] for i in kept.hits(query).tolist()] if query is not None else []

    def _union_of(self, runs: list[Run]) -> RunUnion:
        """One filter that holds every key of the runs it lists as (run, token) pairs: a new key is ruled out by
        one probe, not one per run (the runs' own filters are then asked only about the few it does not rule
        out). It takes in a run it does not hold (sealed, or listed again under a new token after an erasure)
        with one pass over both: at once while it is small, and on a thread of its own once it holds more than
        :data:`MERGE_AHEAD_KEYS` keys (0.1-1 s at 50M keys), the lookups meanwhile asking that run's own filter
        about every key (a merge that fails there is done here instead). The keys of runs dropped or erased from
        since stay in it (the runs' own filters rule them out) until they are over a quarter of it: it is then
        built from the runs again, the same way."""
        listed = frozenset((run.id, run.token) for run in runs)
        merging = self._merging
        if merging is not None and merging.done():
            self._merging = None
            try:
                self._union = merging.result()
            except Exception:  # noqa: BLE001 - merged on this thread instead, below
                log.exception("merging runs into the dedupe window's union on a thread of its own failed; merging "
                              "them on the writer's")
                self._union = merged_union(self._union, runs)
        held = self._union
        if held is not None and held[0] == listed:
            return held
        if held is None or len(held[1]) <= MERGE_AHEAD_KEYS:
            self._union = merged_union(held, runs)
            return self._union
        if self._merging is None:
            self._merging = concurrent.futures.Future()
            threading.Thread(target=_resolve, args=(self._merging, merged_union, held, runs), name="onramp-id-union",
                             daemon=True).start()
        return held

    def preload(self, connect: Callable[[], sqlite3.Connection]) -> concurrent.futures.Future[Any]:
        """Read the runs' filters and build their union (:meth:`_union_of`) on a thread of its own, on the
        read-only connection that ``connect`` opens (and this closes); the first lookup takes both instead of
        doing it then: with tens of millions of ids in the window that takes seconds, which a worker's first
        ingest batch after a start would wait for. Call before the thread that owns this table uses it. The
        future resolves to the runs and their union (None: fewer than two runs)."""
        def build() -> tuple[list[Run], RunUnion | None]:
            conn = connect()
            try:
                conn.execute("BEGIN")  # the list of runs and their filters as of one snapshot
                runs = EventTable(conn, self.window_ms / HOUR_MS)._runs_now()
                conn.execute("COMMIT")
            finally:
                conn.close()
            return runs, (merged_union(None, runs) if len(runs) > 1 else None)
        self._preloading = concurrent.futures.Future()
        threading.Thread(target=_resolve, args=(self._preloading, build), name="onramp-id-filters",
                         daemon=True).start()
        return self._preloading

    def _adopt_preload(self) -> None:
        """Wait for :meth:`preload`'s runs and union and take them (on the thread that owns this table)."""
        future, self._preloading = self._preloading, None
        try:
            runs, union = future.result()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - read and built when first needed instead
            log.exception("reading the dedupe window's key filters ahead failed; reading them when first needed")
            return
        for run in runs:
            self._runs.setdefault(run.id, run)
        if self._union is None:
            self._union = union

    def _runs_now(self) -> list[Run]:
        """The runs as committed (a run's filter read again only when its token changed), oldest first."""
        if self._preloading is not None:
            self._adopt_preload()
        try:
            listed = self.conn.execute(f"SELECT run, token, rows, newest FROM {RUNS_TABLE} ORDER BY run").fetchall()
        except sqlite3.OperationalError:  # a read-only connection to a log no writer of this layout opened
            return []
        runs: dict[int, Run] = {}
        for run, token, rows, newest in listed:
            mine = self._runs.get(run)
            if mine is None or mine.token != token:
                body = self.conn.execute(f"SELECT body FROM {RUNS_TABLE} WHERE run = ?", (run,)).fetchone()[0]
                mine = Run(run, token, rows, newest, KeyFilter.from_bytes(body))
            runs[run] = mine
        self._runs = runs
        return list(runs.values())

    def _filter(self, level: int, write: bool) -> KeyFilter | None:
        """The filter of ``level`` (1) as committed (read again when another process wrote a new one; built
        and stored when there is none yet and ``write``); None = ask the level about every key."""
        try:
            row = self.conn.execute(f"SELECT token FROM {FILTER_TABLE} WHERE level = ?", (level,)).fetchone()
        except sqlite3.OperationalError:  # a read-only connection to a log no writer has opened since
            return None
        if row is None:
            return self._store_filter(level, self._scan_filter(level)) if write else None
        mine = self._filters.get(level)
        if mine is None or mine[0] != row[0]:
            body = self.conn.execute(f"SELECT body FROM {FILTER_TABLE} WHERE level = ?", (level,)).fetchone()[0]
            mine = self._filters[level] = (row[0], KeyFilter.from_bytes(body))
        return mine[1]

    def _scan_filter(self, level: int) -> KeyFilter:
        """The filter of ``level`` built from all its keys."""
        return KeyFilter.of_sorted(self._keys(LEVELS[level]))

    def _keys(self, table: str, chunk: int = 500_000) -> np.ndarray:
        """Every key of a level or run, ascending: as text from SQLite (``group_concat``), parsed by numpy, a
        chunk at a time (several times faster than a row each)."""
        parts: list[np.ndarray] = []
        last: int | None = None
        while True:
            after = "" if last is None else "WHERE h > ?"
            text, top, n = self.conn.execute(f"SELECT group_concat(h), max(h), count(*) FROM (SELECT h FROM {table} "
                                             f"{after} ORDER BY h LIMIT {chunk})", () if last is None else (last,)
                                             ).fetchone()
            if n:
                parts.append(np.fromstring(text, dtype=np.int64, sep=","))
            if n < chunk:
                return np.concatenate(parts) if parts else np.zeros(0, np.int64)
            last = top

    def _store_filter(self, level: int, kept: KeyFilter) -> KeyFilter:
        """Store ``kept`` as the filter of ``level`` with a new token (in the caller's transaction)."""
        token = secrets.randbits(62) + 1
        self.conn.execute(f"INSERT INTO {FILTER_TABLE} (level, token, body) VALUES (?, ?, ?) ON CONFLICT (level) "
                          "DO UPDATE SET token = excluded.token, body = excluded.body", (level, token, kept.to_bytes()))
        self._filters[level] = (token, kept)
        return kept

    def _next_run(self) -> int:
        return self.conn.execute(f"SELECT coalesce(max(run), 0) + 1 FROM {RUNS_TABLE}").fetchone()[0]

    def _store_run(self, run: int, rows: int, newest: int, kept: KeyFilter) -> None:
        """List (or list again, with a new token) run ``run`` (in the caller's transaction)."""
        token = secrets.randbits(62) + 1
        self.conn.execute(f"INSERT INTO {RUNS_TABLE} (run, rows, newest, token, body) VALUES (?, ?, ?, ?, ?) "
                          "ON CONFLICT (run) DO UPDATE SET rows = excluded.rows, newest = excluded.newest, "
                          "token = excluded.token, body = excluded.body", (run, rows, newest, token, kept.to_bytes()))
        self._runs[run] = Run(run, token, rows, newest, kept)

    def _drop_run(self, run: Run) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {run.table}")
        self.conn.execute(f"DELETE FROM {RUNS_TABLE} WHERE run = ?", (run.id,))
        self._runs.pop(run.id, None)

    def _record(self, rows: list[tuple[int, int, int]], now_ms: int, upsert: bool = True) -> None:
        """Add (key, check, event time) rows to level 0 (a key already there takes the new values, unless not
        ``upsert``: then it raises ``sqlite3.IntegrityError``), merging level 0 into level 1 when full,
        sealing level 1 as a run when full, and dropping the runs that left the window. Multi-row INSERTs, not
        executemany (one SQLite step per row, each giving up and re-taking the GIL: under load from the event
        loop thread the writer waited for it once per id, holding the write lock)."""
        if rows:
            # a row replaced is the row upserted: the table has no other column, index or trigger
            self._insert(self.conn, LEVELS[0], _ID_NAMES, [v for row in rows for v in row],
                         "INSERT OR REPLACE" if upsert else "INSERT")
            self._rows[0] += len(rows)
            if self._rows[0] >= LEVEL_ROWS[0]:
                self._merge()
                if self._rows[1] >= LEVEL_ROWS[1]:
                    self._seal()
        horizon = now_ms - self.window_ms
        for run in [r for r in self._runs.values() if r.newest < horizon]:
            self._drop_run(run)

    def _merge(self) -> None:
        """Move every row of level 0 into level 1, in key order (each page of level 1 is written once); level
        1's filter gains level 0's keys, its newest event time level 0's."""
        src, dst = LEVELS
        c = self.conn
        grown = (self._filter(1, write=True) or KeyFilter.of_sorted(())).with_sorted(self._keys(src))
        newest = c.execute(f"SELECT max(ts) FROM {src}").fetchone()[0]
        c.execute(f"INSERT INTO {dst} (h, chk, ts) SELECT h, chk, ts FROM {src} WHERE 1 ORDER BY h "
                  "ON CONFLICT (h) DO UPDATE SET chk = excluded.chk, ts = excluded.ts")
        self._rows[1] += c.execute("SELECT changes()").fetchone()[0]
        c.execute(f"DELETE FROM {src}")
        self._rows[0] = 0
        self._store_filter(1, grown)
        if newest is not None:
            self._set_meta(LEVEL_1_NEWEST_KEY, str(max(newest, self._level_1_newest() or newest)))

    def _level_1_newest(self) -> int | None:
        kept = self._meta(LEVEL_1_NEWEST_KEY)
        return int(kept) if kept is not None else self.conn.execute(f"SELECT max(ts) FROM {LEVELS[1]}").fetchone()[0]

    def _seal(self) -> None:
        """Seal level 1 as the newest run: the table renamed (no row copied), listed with its filter, its id
        count and its newest event time; an empty level 1 in its place."""
        c = self.conn
        newest = self._level_1_newest()
        if newest is None:  # empty
            return
        kept = self._filter(1, write=True) or self._scan_filter(1)
        run = self._next_run()
        c.execute(f"ALTER TABLE {LEVELS[1]} RENAME TO {RUN_PREFIX}{run}")
        c.execute(f"CREATE TABLE {LEVELS[1]} {_ID_COLUMNS}")
        self._store_run(run, c.execute(f"SELECT COUNT(*) FROM {RUN_PREFIX}{run}").fetchone()[0], newest, kept)
        self._store_filter(1, KeyFilter.of_sorted(()))
        self._set_meta(LEVEL_1_NEWEST_KEY, None)
        self._rows[1] = 0

    def seen_within_window(self, event_ids: Sequence[str], now_ms: int) -> set[str]:
        """Which of ``event_ids`` were stored with an event time inside the window ending at ``now_ms``."""
        keyed = {eid: digest(eid) for eid in event_ids}
        found = self._seen([h for h, _ in keyed.values()])
        horizon = now_ms - self.window_ms
        return {eid for eid, (h, chk) in keyed.items()
                if (hit := found.get(h)) is not None and hit[0] == chk and hit[1] >= horizon}

    # -- appending ---------------------------------------------------------------------------------------
    def append_new(self, flat: Sequence[Any], now_ms: int, digests: Sequence[IdKey] | None = None,
                   ahead: IdLookahead | None = None) -> Appended:
        """Append the events given as :data:`EVENT_COLUMNS` values one after the other, in order, skipping
        each whose ``event_id`` was stored with an event time within the window ending at ``now_ms`` (or
        earlier in ``flat``); events older than the window are stored unchecked. ``digests``: the ids'
        :func:`~server.store.rows.digest`, one per event, when the caller worked them out already (before
        the transaction); ``ahead``: what :meth:`look_ahead` found for them before it. Atomic with the caller's
        transaction."""
        n = len(flat) // _WIDTH
        horizon = now_ms - self.window_ms
        times = flat[_TS::_WIDTH]
        if digests is None:
            ids = flat[0::_WIDTH]
            keys: list[IdKey | None] = [digest(ids[i]) if times[i] >= horizon else None for i in range(n)]
        else:
            keys = [digests[i] if times[i] >= horizon else None for i in range(n)]
        found = self._seen([k[0] for k in keys if k is not None], write=True, ahead=ahead)
        duplicates: set[int] = set()
        record: dict[int, tuple[int, int, int]] = {}
        outside: set[int] = set()
        for i, key in enumerate(keys):
            if key is None:
                outside.add(i)
                continue
            h, chk = key
            hit = found.get(h)
            if hit is not None and hit[0] == chk and hit[1] >= horizon:
                duplicates.add(i)
                continue
            found[h] = (chk, times[i])
            record[h] = (h, chk, times[i])
        if duplicates:
            keep = [v for i in range(n) if i not in duplicates for v in flat[i * _WIDTH:(i + 1) * _WIDTH]]
        else:
            keep = flat
        if keep:
            self._insert(self.conn, "events", EVENT_COLUMNS, keep)
        self._record(list(record.values()), now_ms)
        return Appended(frozenset(duplicates), frozenset(outside))

    def append(self, flat: Sequence[Any], now_ms: int | None = None) -> None:
        """Append events the caller knows are new (demo data, tests) and record their ids; an id still in
        level 0 raises ``sqlite3.IntegrityError``."""
        self._insert(self.conn, "events", EVENT_COLUMNS, flat)
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        horizon = now - self.window_ms
        self._runs_now()
        self._record([(*digest(eid), ts) for eid, ts in zip(flat[0::_WIDTH], flat[_TS::_WIDTH]) if ts >= horizon],
                     now, upsert=False)

    # -- per-subject access ------------------------------------------------------------------------------
    def rekey_subjects(self, old_subjects: Sequence[str], new_subject: str) -> int:
        """Move events of ``old_subjects`` (e.g. ``anon:abc``) to ``new_subject``; returns rows changed."""
        n = 0
        for part in _chunks(list(old_subjects)):
            where, args = subjects_clause(part)
            n += self.conn.execute(f"UPDATE events SET subject = ? WHERE {where}", [new_subject, *args]).rowcount
        return n

    def iter_events(self, after_seq: int = 0, names: Collection[str] | None = None
                    ) -> Iterator[tuple[int, StoredEvent]]:
        """Every event in ``seq`` order (only those named one of ``names``, when given: SQLite skips the others
        without building them), streamed in chunks (startup rebuild, replays, the learner's reward join)."""
        last = after_seq
        where, extra = ("seq > ?", []) if names is None else (f"seq > ? AND name IN ({_marks(len(names))})",
                                                              sorted(names))
        while True:
            rows = self.conn.execute(f"{_SELECT_EVENT} WHERE {where} ORDER BY seq LIMIT 10000",
                                     (last, *extra)).fetchall()
            if not rows:
                return
            for row in rows:
                yield event_from_row(row)
            last = rows[-1][0]

    def events_about(self, subjects: Sequence[str]) -> list[StoredEvent]:
        """Every event stored under one of ``subjects``, in ``seq`` order."""
        where, args = subjects_clause(subjects)
        rows = self.conn.execute(f"{_SELECT_EVENT} WHERE {where} ORDER BY seq", args).fetchall()
        return [event_from_row(r)[1] for r in rows]

    def count_about(self, subjects: Sequence[str]) -> int:
        where, args = subjects_clause(subjects)
        return self.conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}", args).fetchone()[0]

    def erase(self, subjects: Sequence[str]) -> int:
        """Delete the events stored under ``subjects`` and their ids from the dedupe window (so the window
        keeps nothing of them, and a re-send is judged as for a new person: by consent; the filter of a level
        or run they were in is rebuilt, a scan of its keys, and a run left empty is dropped); returns events
        deleted."""
        where, args = subjects_clause(subjects)
        keys = sorted({digest(eid)[0] for (eid,) in
                       self.conn.execute(f"SELECT event_id FROM events WHERE {where}", args)})
        runs = self._runs_now() if keys else []
        tables = [*LEVELS, *(run.table for run in runs)]
        deleted = [0] * len(tables)
        for part in _chunks(keys):
            for i, table in enumerate(tables):
                deleted[i] += self.conn.execute(f"DELETE FROM {table} WHERE h IN ({_marks(len(part))})", part).rowcount
        self._rows[0] -= deleted[0]
        self._rows[1] -= deleted[1]
        if deleted[1]:  # the level's filter keeps no part of their keys either
            self._store_filter(1, self._scan_filter(1))
        for run, gone in zip(runs, deleted[len(LEVELS):]):
            if gone and gone >= run.rows:
                self._drop_run(run)
            elif gone:
                self._store_run(run.id, run.rows - gone, run.newest, KeyFilter.of_sorted(self._keys(run.table)))
        return self.conn.execute(f"DELETE FROM events WHERE {where}", args).rowcount
