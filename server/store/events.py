"""The event log's layout in SQLite: events appended by an increasing key, and the event ids of the dedupe
window in a small log-structured set whose cost per event does not grow with the log.

``events`` is keyed by ``seq`` (appends only) with one index, on ``subject`` (export, erasure, re-keying: a
new row lands at the end of its subject's run, one hot page per active subject). It has no index on
``event_id``: a uuid4 id would land at a random page of an index as large as the log, one page write per
event once that index outgrows a transaction.

Idempotency is promised within a window of event time instead (``[ingest] dedupe_window_hours``): an event
whose ``timestamp_ms`` is at most the window older than the server's clock is stored at most once per
``event_id``; an older one is stored without the check (a re-send of it is stored again) and counted as
``outside_window``. The ids of the window are kept as 96-bit digests (a 64-bit key and a 32-bit check) in
three levels, each a small integer-keyed table: new ids go to ``event_ids_0`` (kept below
:data:`LEVEL_ROWS`\\[0] rows, so its pages stay few and hot), which is merged in key order into
``event_ids_1`` when full, which is merged into ``event_ids_2`` when full (at least a quarter of it, so a
merge rewrites level 2 once per so many ids whatever its size); that last merge also drops the ids whose
event time left the window. A lookup probes the three levels. The shape is that of a NATS JetStream
stream's duplicate window (``Nats-Msg-Id``): :meth:`EventTable.append_new` is the one atomic operation,
"append these events, skipping ids seen within the window".
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from hashlib import blake2b
from typing import Any

from server.base.records import StoredEvent
from server.store.rows import Appended

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "subject", "user_id", "anonymous_id", "device_id", "name", "timestamp_ms",
                 "received_ms", "channel", "device_type", "feature", "step_id", "decision_id", "properties")
_WIDTH = len(EVENT_COLUMNS)
_TS = EVENT_COLUMNS.index("timestamp_ms")
HOUR_MS = 3_600_000
DEFAULT_WINDOW_HOURS = 168  # 7 days of event time, as Amplitude's insert_id
LEVELS = ("event_ids_0", "event_ids_1", "event_ids_2")
LEVEL_ROWS = (100_000, 1_000_000)  # rows at which level 0 (1) is merged into level 1 (2) ...
LAST_LEVEL_SHARE = 4  # ... level 1 also not before it holds a quarter of level 2's rows
LAST_LEVEL_ROWS_KEY = "event_ids_2_rows"  # meta: rows of level 2 after its last merge (not counted at open)
LAYOUT_KEY = "event_log_layout"  # meta: 2 = this layout (1, implicit: a UNIQUE index on events.event_id)
LAYOUT = "2"
OLD_EVENT_ID_INDEX = "idx_events_event_id"
_CHUNK = 5000  # bound parameters per IN (...) query
_SELECT_EVENT = f"SELECT seq, {', '.join(EVENT_COLUMNS)} FROM events"


def digest(event_id: str) -> tuple[int, int]:
    """The 64-bit key (signed, an SQLite INTEGER) and 32-bit check of an event id: two different ids are
    taken for one only when all 96 bits agree (about 1 in 10^13 for 10^8 ids in the window)."""
    d = blake2b(event_id.encode(), digest_size=12).digest()
    return int.from_bytes(d[:8], "big", signed=True), int.from_bytes(d[8:], "big")


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def event_from_row(row: Sequence[Any]) -> tuple[int, StoredEvent]:
    """(seq, event) of a row selected as ``seq`` followed by :data:`EVENT_COLUMNS`."""
    seq, eid, subject, uid, aid, did, name, ts, rec, channel, dtype, feature, step, dec, props = row
    return seq, StoredEvent(eid, subject, name, ts, rec, uid, aid, did, channel, dtype, feature, step, dec,
                            json.loads(props) if props and props != "{}" else {})


def subjects_clause(subjects: Sequence[str]) -> tuple[str, list[Any]]:
    """Events belong to the subject they were stored under (the person the event was attributed to then),
    never to whoever else's ids they carry: a shared device or a reused anonymous id links events to
    several people, and export and erasure must cover exactly one of them (docs/decisions.md)."""
    subjects = [s for s in subjects if s]
    if not subjects:
        return "0", []
    return f"subject IN ({_marks(len(subjects))})", subjects


class EventTable:
    """The event log and its dedupe window on one SQLite connection (the caller owns transactions)."""

    def __init__(self, conn: sqlite3.Connection, window_hours: float = DEFAULT_WINDOW_HOURS,
                 insert: Any = None) -> None:
        self.conn = conn
        self.window_ms = int(window_hours * HOUR_MS)
        self._insert = insert  # insert_flat(conn, table, columns, flat) of server/store/sqlite.py
        self._rows = [0, 0, 0]  # rows in each level (counted at open, level 2's read from meta, then kept up to date)

    # -- schema ------------------------------------------------------------------------------------------
    def create(self) -> None:
        """Create the tables and indexes (idempotent) and convert a log written with the unique
        ``event_id`` index (:meth:`convert`)."""
        c = self.conn
        # seq is never handed out twice (AUTOINCREMENT), so the learner, which reads events by seq, cannot miss
        # one appended after the newest events were erased
        c.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, "
                  "subject TEXT NOT NULL, user_id TEXT, anonymous_id TEXT, device_id TEXT, name TEXT NOT NULL, "
                  "timestamp_ms INTEGER, received_ms INTEGER, channel TEXT, device_type TEXT, feature TEXT, "
                  "step_id TEXT, decision_id TEXT, properties TEXT)")
        c.execute("CREATE INDEX IF NOT EXISTS idx_events_subject ON events (subject)")
        for level in LEVELS:
            c.execute(f"CREATE TABLE IF NOT EXISTS {level} (h INTEGER PRIMARY KEY, chk INTEGER NOT NULL, "
                      "ts INTEGER NOT NULL)")
        if c.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                     (OLD_EVENT_ID_INDEX,)).fetchone():
            self.convert()
        last = c.execute("SELECT value FROM meta WHERE key = ?", (LAST_LEVEL_ROWS_KEY,)).fetchone()
        self._rows = [*(c.execute(f"SELECT COUNT(*) FROM {level}").fetchone()[0] for level in LEVELS[:2]),  # noqa: S608
                      int(last[0]) if last else c.execute(f"SELECT COUNT(*) FROM {LEVELS[2]}").fetchone()[0]]

    def convert(self, now_ms: int | None = None) -> int:
        """Convert a log of the earlier layout (every id in a UNIQUE index on ``events``): record the ids of
        the events within the window in the last level, then drop that index. One transaction; returns the
        ids recorded."""
        c = self.conn
        started = time.perf_counter()
        horizon = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.window_ms
        own = not c.in_transaction
        if own:
            c.execute("BEGIN IMMEDIATE")
        try:
            rows: dict[int, tuple[int, int]] = {}
            for eid, ts in c.execute("SELECT event_id, timestamp_ms FROM events WHERE timestamp_ms >= ?", (horizon,)):
                h, chk = digest(eid)
                rows[h] = (chk, ts)
            c.executemany(f"INSERT OR REPLACE INTO {LEVELS[-1]} (h, chk, ts) VALUES (?, ?, ?)",
                          ((h, chk, ts) for h, (chk, ts) in sorted(rows.items())))
            c.execute(f"DROP INDEX {OLD_EVENT_ID_INDEX}")
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                      "excluded.value", (LAYOUT_KEY, LAYOUT))
            if own:
                c.execute("COMMIT")
        except BaseException:
            if own and c.in_transaction:
                c.execute("ROLLBACK")
            raise
        log.info("event log converted to the windowed-dedupe layout: %d ids of the last %.0f h recorded, the "
                 "unique event_id index dropped (%.1f s)", len(rows), self.window_ms / HOUR_MS,
                 time.perf_counter() - started)
        return len(rows)

    # -- the dedupe window -------------------------------------------------------------------------------
    def _seen(self, keys: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(check, newest event time) recorded for each of ``keys`` found in a level."""
        found: dict[int, tuple[int, int]] = {}
        for part in _chunks(list(keys)):
            marks = _marks(len(part))
            for level in LEVELS:
                for h, chk, ts in self.conn.execute(f"SELECT h, chk, ts FROM {level} WHERE h IN ({marks})", part):
                    old = found.get(h)
                    if old is None or ts > old[1]:
                        found[h] = (chk, ts)
        return found

    def _record(self, rows: list[tuple[int, int, int]], now_ms: int) -> None:
        """Add (key, check, event time) rows to level 0 (a key already there takes the new values), merging
        levels down when full."""
        if not rows:
            return
        self.conn.executemany(f"INSERT INTO {LEVELS[0]} (h, chk, ts) VALUES (?, ?, ?) ON CONFLICT (h) DO UPDATE "
                              "SET chk = excluded.chk, ts = excluded.ts", rows)
        self._rows[0] += len(rows)
        if self._rows[0] >= LEVEL_ROWS[0]:
            self._merge(0, now_ms)
            if self._rows[1] >= max(LEVEL_ROWS[1], self._rows[2] // LAST_LEVEL_SHARE):
                self._merge(1, now_ms)

    def _merge(self, level: int, now_ms: int) -> None:
        """Move every row of ``level`` into the next, in key order (each page of the next level is written
        once); into the last level, drop its ids whose event time left the window first."""
        src, dst = LEVELS[level], LEVELS[level + 1]
        c = self.conn
        last = dst == LEVELS[-1]
        if last:
            c.execute(f"DELETE FROM {dst} WHERE ts < ?", (now_ms - self.window_ms,))
        c.execute(f"INSERT INTO {dst} (h, chk, ts) SELECT h, chk, ts FROM {src} WHERE 1 ORDER BY h "
                  "ON CONFLICT (h) DO UPDATE SET chk = excluded.chk, ts = excluded.ts")
        c.execute(f"DELETE FROM {src}")
        self._rows[level] = 0
        self._rows[level + 1] = c.execute(f"SELECT COUNT(*) FROM {dst}").fetchone()[0] if last else \
            self._rows[level + 1] + c.execute("SELECT changes()").fetchone()[0]
        if last:
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                      "excluded.value", (LAST_LEVEL_ROWS_KEY, str(self._rows[2])))

    def seen_within_window(self, event_ids: Sequence[str], now_ms: int) -> set[str]:
        """Which of ``event_ids`` were stored with an event time inside the window ending at ``now_ms``."""
        keyed = {eid: digest(eid) for eid in event_ids}
        found = self._seen([h for h, _ in keyed.values()])
        horizon = now_ms - self.window_ms
        return {eid for eid, (h, chk) in keyed.items()
                if (hit := found.get(h)) is not None and hit[0] == chk and hit[1] >= horizon}

    # -- appending ---------------------------------------------------------------------------------------
    def append_new(self, flat: Sequence[Any], now_ms: int) -> Appended:
        """Append the events given as :data:`EVENT_COLUMNS` values one after the other, in order, skipping
        each whose ``event_id`` was stored with an event time within the window ending at ``now_ms`` (or
        earlier in ``flat``); events older than the window are stored unchecked. Atomic with the caller's
        transaction."""
        n = len(flat) // _WIDTH
        horizon = now_ms - self.window_ms
        ids, times = flat[0::_WIDTH], flat[_TS::_WIDTH]
        keys: list[tuple[int, int] | None] = [digest(ids[i]) if times[i] >= horizon else None for i in range(n)]
        found = self._seen([k[0] for k in keys if k is not None])
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
        rows = [(*digest(eid), ts) for eid, ts in zip(flat[0::_WIDTH], flat[_TS::_WIDTH]) if ts >= horizon]
        if rows:
            self.conn.executemany(f"INSERT INTO {LEVELS[0]} (h, chk, ts) VALUES (?, ?, ?)", rows)
            self._rows[0] += len(rows)
            if self._rows[0] >= LEVEL_ROWS[0]:
                self._merge(0, now)

    # -- per-subject access ------------------------------------------------------------------------------
    def rekey_subjects(self, old_subjects: Sequence[str], new_subject: str) -> int:
        """Move events of ``old_subjects`` (e.g. ``anon:abc``) to ``new_subject``; returns rows changed."""
        n = 0
        for part in _chunks(list(old_subjects)):
            n += self.conn.execute(f"UPDATE events SET subject = ? WHERE subject IN ({_marks(len(part))})",
                                   [new_subject, *part]).rowcount
        return n

    def iter_events(self, after_seq: int = 0) -> Iterator[tuple[int, StoredEvent]]:
        """Every event in ``seq`` order, streamed in chunks (startup rebuild, replays)."""
        last = after_seq
        while True:
            rows = self.conn.execute(f"{_SELECT_EVENT} WHERE seq > ? ORDER BY seq LIMIT 10000", (last,)).fetchall()
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
        keeps nothing of them, and a re-send is judged as for a new person: by consent); returns events
        deleted."""
        where, args = subjects_clause(subjects)
        keys = sorted({digest(eid)[0] for (eid,) in
                       self.conn.execute(f"SELECT event_id FROM events WHERE {where}", args)})
        for part in _chunks(keys):
            for level in LEVELS:
                self.conn.execute(f"DELETE FROM {level} WHERE h IN ({_marks(len(part))})", part)
        return self.conn.execute(f"DELETE FROM events WHERE {where}", args).rowcount
