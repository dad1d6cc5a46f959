"""The SQL of per-user state that any worker reads and writes (:class:`~server.store.interfaces.ProfileStore`,
:class:`~server.store.interfaces.ShowHistory`; functions of a SqliteStore, bound as its methods): profile rows
(updated in the transaction that stores the events, with a change row for the learner) and each person's shown
history with a version (caps, cooldowns and gaps hold across workers: a show is logged only if the version it was
decided on is current).

Rows are keyed by the person's pseudonym and hold no raw id. Profile bodies are opaque JSON text made by the
layer above (server/ingest/profiles.py); the shown history is stored in server/store/show_codec.py's binary form
(rows written before it hold JSON text, still read).
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from server.store.rows import (DECISION_COLUMNS, NO_SHOWS, ConsentRow, DecisionInputs, LoggedDecision, ProfileChange,
                               ProfileWrites, Shows, latest_show, merged_shows)
from server.store.show_codec import decode_shows, encode_shows
from server.store.sql import _chunks, _marks, insert_flat

if TYPE_CHECKING:
    from server.store.sqlite import SqliteStore

_HISTORY_COLUMNS = ("pseudo", "version", "shows", "tracked", "last_ms")


# -- profiles -------------------------------------------------------------------------------------------------
def profile_bodies(store: SqliteStore, pseudos: Sequence[str]) -> dict[str, str]:
    """The stored profile bodies of ``pseudos`` (absent ones are left out), as one row of JSON per chunk: a row
    per person is a SQLite step each, and each step gives up and re-takes the GIL (the ingest job reads these
    inside its write transaction, where waiting for the event loop thread holds up every writer)."""
    out: dict[str, str] = {}
    for part in _chunks(list(pseudos)):
        (found,) = store.conn.execute(f"SELECT json_group_object(pseudo, body) FROM profiles WHERE pseudo IN "
                                      f"({_marks(len(part))})", part).fetchone()
        out.update(json.loads(found))
    return out


def profile_body(store: SqliteStore, pseudo: str) -> str | None:
    row = store.conn.execute("SELECT body FROM profiles WHERE pseudo = ?", (pseudo,)).fetchone()
    return None if row is None else row[0]


def put_profiles(store: SqliteStore, rows: Sequence[tuple[str, int, str]]) -> None:
    """Write changed profiles ``(pseudo, timestamp_ms, body)`` and append one change row each for the learner
    (inside the caller's transaction, the one that stored the events)."""
    if not rows:
        return
    flat: list[Any] = []
    for pseudo, _ts, body in rows:
        flat += (pseudo, body)
    insert_flat(store.conn, "profiles", ("pseudo", "body"), flat, verb="INSERT OR REPLACE")
    changes: list[Any] = []
    for row in rows:
        changes += row
    insert_flat(store.conn, "profile_changes", ("pseudo", "timestamp_ms", "body"), changes)


def write_profiles(store: SqliteStore, writes: ProfileWrites) -> None:
    """Delete the merged-away profiles, move their shown histories, then put the changed profiles (the order
    of :class:`~server.store.rows.ProfileWrites`), inside the caller's transaction."""
    if writes.deleted:
        delete_profiles(store, writes.deleted)
    for aliases, into in writes.show_merges:
        merge_show_history(store, aliases, into, writes.show_keep)
    put_profiles(store, writes.puts)


def delete_profiles(store: SqliteStore, pseudos: Sequence[str]) -> int:
    """Delete the profiles of ``pseudos`` and their change rows (merged into another profile, or erased)."""
    n = 0
    for part in _chunks(list(pseudos)):
        marks = _marks(len(part))
        n += store.conn.execute(f"DELETE FROM profiles WHERE pseudo IN ({marks})", part).rowcount
        store.conn.execute(f"DELETE FROM profile_changes WHERE pseudo IN ({marks})", part)
    return n


def iter_profile_bodies(store: SqliteStore) -> Iterator[tuple[str, str]]:
    """Every (pseudo, body) in pseudonym order, streamed in chunks."""
    last = ""
    while True:
        rows = store.conn.execute("SELECT pseudo, body FROM profiles WHERE pseudo > ? ORDER BY pseudo LIMIT 5000",
                                  (last,)).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def profile_count(store: SqliteStore) -> int:
    return store.conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]


def profile_changes_after(store: SqliteStore, after_id: int, limit: int = 5000) -> list[ProfileChange]:
    cur = store.conn.execute("SELECT id, pseudo, timestamp_ms, body FROM profile_changes WHERE id > ? ORDER BY id "
                             "LIMIT ?", (after_id, limit))
    return [ProfileChange(*row) for row in cur]


def prune_profile_changes(store: SqliteStore, upto_id: int) -> int:
    """Delete change rows the learner's saved state already includes."""
    return store.conn.execute("DELETE FROM profile_changes WHERE id <= ?", (upto_id,)).rowcount


# -- shown history ----------------------------------------------------------------------------------------------
def read_shows(store: SqliteStore, pseudo: str) -> Shows:
    row = store.conn.execute("SELECT version, shows FROM show_history WHERE pseudo = ?", (pseudo,)).fetchone()
    if row is None:
        return NO_SHOWS
    return Shows(row[0], decode_shows(row[1]))


# one statement, so one read transaction (one snapshot, one look at the WAL) instead of three; kind 0: the shown
# history, 1: the profile, 2: a consent record
_INPUTS = ("SELECT 0, version, shows, NULL, NULL FROM show_history WHERE pseudo = ?1 "
           "UNION ALL SELECT 1, NULL, body, NULL, NULL FROM profiles WHERE pseudo = ?1 "
           "UNION ALL SELECT 2, granted, purpose, source, timestamp_ms FROM consents WHERE subject = ?2")


def decision_inputs(store: SqliteStore, pseudo: str, subject: str) -> DecisionInputs:
    """What a decision reads of one person (:meth:`~server.store.interfaces.ShowHistory.decision_inputs`)."""
    shows, body, consents = NO_SHOWS, None, []
    for kind, a, b, c, d in store.conn.execute(_INPUTS, (pseudo, subject)):
        if kind == 0:
            shows = Shows(a, decode_shows(b))
        elif kind == 1:
            body = b
        else:
            consents.append(ConsentRow(subject, b, bool(a), c, d))
    consents.sort(key=lambda r: r.purpose)
    return DecisionInputs(shows, body, tuple(consents))


def log_decisions(store: SqliteStore, items: Sequence[LoggedDecision]) -> list[bool]:
    """Log each decision whose shown history is still at its expected version (bumping the version), in
    order; a decision whose version moved (another worker showed this person something meanwhile, or an
    earlier item of ``items``) is not logged: False, decide again. One call, atomic inside the caller's
    transaction: the versions are read with one statement returning one row and the histories written with one
    more (each statement, and each row fetched, releases and re-takes the GIL, which the event loop thread holds
    most of the time)."""
    c = store.conn
    pseudos = list({item.pseudo for item in items if item.pseudo})
    current: dict[str, tuple[int, int]] = {}  # pseudo -> (version, tracked)
    for chunk in _chunks(pseudos):
        # one row (a JSON list) whatever the count: fetching each row of a plain SELECT is one more SQLite step,
        # and each step gives up and re-takes the GIL
        (found,) = c.execute(f"SELECT json_group_array(json_array(pseudo, version, tracked)) FROM show_history "
                             f"WHERE pseudo IN ({_marks(len(chunk))})", chunk).fetchone()
        current.update((p, (v, t)) for p, v, t in json.loads(found))
    ok: list[bool] = []
    flat: list[Any] = []
    feed: list[Any] = []
    histories: dict[str, tuple[Any, ...]] = {}
    for item in items:
        if item.pseudo:
            version, tracked = current.get(item.pseudo, (0, 0))
            if version != item.expected_version:
                ok.append(False)
                continue
            tracked = max(tracked, int(item.tracked))
            current[item.pseudo] = (version + 1, tracked)
            shows = item.shows or {}
            histories[item.pseudo] = (item.pseudo, version + 1, encode_shows(shows), tracked, latest_show(shows))
        flat += item.row
        if item.feed:
            feed.append(item.row[0])
        ok.append(True)
    if histories:
        insert_flat(c, "show_history", _HISTORY_COLUMNS, [v for row in histories.values() for v in row],
                    "INSERT OR REPLACE")
    if flat:
        insert_flat(c, "decisions", DECISION_COLUMNS, flat)
    if feed:
        insert_flat(c, "decision_feed", ("decision_id",), feed)
    return ok


def merge_show_history(store: SqliteStore, from_pseudos: Sequence[str], into: str, keep: int) -> None:
    """Move the shown history of merged visitors to the user they were identified as (caps count the person's
    whole history), bumping the user's version."""
    from_pseudos = [p for p in from_pseudos if p != into]
    if not from_pseudos:
        return
    c = store.conn
    rows = c.execute(f"SELECT pseudo, shows, tracked, last_ms FROM show_history WHERE pseudo IN "
                     f"({_marks(len(from_pseudos))})", from_pseudos).fetchall()
    if not rows:
        return
    target = c.execute("SELECT version, shows, tracked, last_ms FROM show_history WHERE pseudo = ?",
                       (into,)).fetchone()
    version, shows, tracked, last = (0, {}, 0, 0) if target is None else (
        target[0], decode_shows(target[1]), target[2], target[3])
    for _p, body, tr, lm in rows:
        shows = merged_shows(shows, decode_shows(body), keep)
        tracked, last = max(tracked, tr), max(last, lm)
    c.execute("INSERT OR REPLACE INTO show_history (pseudo, version, shows, tracked, last_ms) VALUES (?, ?, ?, ?, ?)",
              (into, version + 1, encode_shows(shows), tracked, last))
    c.execute(f"DELETE FROM show_history WHERE pseudo IN ({_marks(len(from_pseudos))})", from_pseudos)


def forget_untracked_history(store: SqliteStore, before_ms: int) -> int:
    """Delete the shown history of people without tracking consent once no cap, cooldown or gap counts any of
    it (their latest show is older than the guardrails' horizon)."""
    return store.conn.execute("DELETE FROM show_history WHERE tracked = 0 AND last_ms < ?", (before_ms,)).rowcount
