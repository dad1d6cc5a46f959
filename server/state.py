"""Checkpoints of the server's in-memory state, and resuming from one: the last checkpoint plus the log
written after it gives the state a server that never stopped would have, so a restarted server decides as
before, and starts in seconds instead of replaying the whole event log.

What a checkpoint holds (one atomic, checksummed file, server/checkpoint.py): the profiles, the decision
engine's learned state (bandit policy, sampling RNG, segmenter models and marks, segment cache), the ids of
the step-showing decisions not yet rewarded, and a :class:`LogMark`: the last ``events.seq``, ``decisions``
rowid and ``outcomes`` rowid it includes, each with the id of that row. Identity links, consent, tombstones,
shown history and pending rewards are not in it: they are read from their tables at every start.

Consistency (the writer thread commits while the event loop owns the state): a checkpoint is a writer job
that reads the LogMark inside its transaction; its after-commit hook (writer thread, jobs are committed and
published in order) queues the snapshot on the event loop *behind* the post-commit callbacks of every job
committed before it, then blocks the writer until the snapshot is pickled. So the snapshot sees every event
and outcome at or below the mark (profiles are published, and the reward joiner's task that learns a
committed outcome is woken, before the snapshot callback runs) and nothing above it (later commits wait).
Decisions are the one thing chosen on the loop *before* they are committed: a bandit decision drew from the
sampling RNG already; it is still pending (unrewarded) at the snapshot, so its id is in the checkpoint and
is not drawn again on resume. The writer pause is the time to pickle the state (see docs/operations.md).

Resuming (:func:`load_checkpoint` at open, :func:`resume` once the engine exists):

1. the file must verify, be made for this database (a random id kept in ``meta``, and the pseudonym key's
   fingerprint) and catalog (``catalog.version``), and the rows named by its mark must still be there (else
   rowids above the mark could have been reused after an erasure) -- otherwise a WARNING and a full rebuild;
2. profiles and engine state come from the file; events after the mark are published in their ingest
   batches (runs of equal ``received_ms``) through the pipeline's own post-commit path, so the segmenter
   learns exactly as it did live (an identify merges the linked anonymous profiles first, as live);
3. every profile is checked against the log (events per subject): a subject erased, merged or otherwise
   changed after the checkpoint is rebuilt from its rows or dropped -- an erased user never comes back;
4. outcomes after the mark are learned by the bandit in commit order, and the bandit decisions after the
   mark (minus those in the checkpoint) draw from the RNG again, so the next draw is the one it would be.

Known limit: two ingest batches committed in the same millisecond are replayed as one batch, so the
segmenter may learn once where it learned twice live (``received_ms`` is the only batch boundary the log
keeps).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import operator
import os
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.checkpoint import encode_checkpoint, read_checkpoint, write_checkpoint
from server.profiles import Profile, ProfileBook
from server.store import SqliteStore, SubjectKeys

if TYPE_CHECKING:
    from server.app import Runtime
    from server.catalog import Catalog
    from server.engine import DecisionEngine
    from server.privacy import Pseudonymizer

log = logging.getLogger(__name__)

KIND = "onramp-state"
STATE_FORMAT = 1
META_DB_ID = "checkpoint_db_id"
BARRIER_TIMEOUT_S = 60.0  # the writer waits at most this long for the loop to take the snapshot


@dataclass(frozen=True, slots=True)
class LogMark:
    """The last row of each log table a checkpoint includes (0 / "" for an empty table)."""

    events_seq: int = 0
    event_id: str = ""
    decisions_rowid: int = 0
    decision_id: str = ""
    outcomes_rowid: int = 0
    outcome_id: str = ""


def read_mark(store: SqliteStore) -> LogMark:
    """The current last rows of ``events``, ``decisions`` and ``outcomes`` (call inside a writer job)."""
    c = store.conn
    ev = c.execute("SELECT seq, event_id FROM events ORDER BY seq DESC LIMIT 1").fetchone() or (0, "")
    de = c.execute("SELECT rowid, decision_id FROM decisions ORDER BY rowid DESC LIMIT 1").fetchone() or (0, "")
    oc = c.execute("SELECT rowid, decision_id FROM outcomes ORDER BY rowid DESC LIMIT 1").fetchone() or (0, "")
    return LogMark(int(ev[0]), ev[1], int(de[0]), de[1], int(oc[0]), oc[1])


def mark_problem(store: SqliteStore, mark: LogMark) -> str | None:
    """Why the log no longer continues ``mark`` (a marked row is gone: rows after it may reuse rowids), or
    None when every row after the mark was written after the checkpoint."""
    c = store.conn
    for table, key, rowid, ident in (("events", "event_id", mark.events_seq, mark.event_id),
                                     ("decisions", "decision_id", mark.decisions_rowid, mark.decision_id),
                                     ("outcomes", "decision_id", mark.outcomes_rowid, mark.outcome_id)):
        if rowid == 0:
            continue
        row = c.execute(f"SELECT {key} FROM {table} WHERE rowid = ?", (rowid,)).fetchone()  # noqa: S608
        if row is None or row[0] != ident:
            return f"row {rowid} of {table} changed since the checkpoint (erased?)"
    return None


def bandit_decisions_after(store: SqliteStore, decisions_rowid: int, reason: str
                           ) -> Iterator[tuple[str, dict[str, float], list[str]]]:
    """(decision_id, context, eligible steps) of the decisions with ``reason`` logged after the mark."""
    cur = store.conn.execute("SELECT decision_id, context, eligible FROM decisions WHERE rowid > ? AND reason = ? "
                             "ORDER BY rowid", (decisions_rowid, reason))
    for decision_id, context, eligible in cur:
        yield decision_id, _context(context), list(json.loads(eligible or "[]"))


def _context(text: str | None) -> dict[str, float]:
    value = json.loads(text) if text and text != "{}" else {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def database_id(store: SqliteStore) -> str:
    """A random id of this database, kept in ``meta`` (created on first use, before the writer starts)."""
    value = store.meta_get(META_DB_ID)
    if value is None:
        value = uuid.uuid4().hex
        store.meta_set(META_DB_ID, value)
    return value


def device_hints(store: SqliteStore) -> Iterator[tuple[str, str]]:
    """(device_id, anonymous_id) of every stored anonymous event with a device, in ``seq`` order (what the
    full rebuild feeds to ``IdentityGraph.note_device``)."""
    yield from store.conn.execute("SELECT device_id, anonymous_id FROM events WHERE user_id = '' AND device_id != '' "
                                  "AND subject LIKE 'anon:%' ORDER BY seq")


def reconcile_profiles(store: SqliteStore, book: ProfileBook) -> int:
    """Make every profile agree with the log: a subject whose event count differs (erased, merged or
    re-keyed after the checkpoint) is rebuilt from its rows, or dropped when it has none. Returns how many
    profiles were changed."""
    counts = dict(store.conn.execute("SELECT subject, COUNT(*) FROM events GROUP BY subject"))
    wrong = [s for s in book.subjects() if (p := book.get(s)) is not None and p.event_count != counts.get(s, 0)]
    wrong.extend(s for s in counts if s not in book)
    for subject in wrong:
        book.drop(subject)
        if counts.get(subject):
            for ev in store.events_about(SubjectKeys((subject,), (), (), (), ())):
                book.apply(ev)
    return len(wrong)


PROFILE_FIELDS = tuple(f.name for f in dataclasses.fields(Profile))


def profiles_to_rows(book: ProfileBook) -> list[tuple[Any, ...]]:
    """Every profile as a tuple of its fields (pickled many times faster than slotted dataclasses). The
    rows share the profiles' dicts and lists: pickle them before the state changes."""
    row = operator.attrgetter(*PROFILE_FIELDS)
    get = book.get
    return [row(get(s)) for s in book.subjects()]


def profiles_from_rows(rows: list[tuple[Any, ...]]) -> ProfileBook:
    """The :class:`ProfileBook` of :func:`profiles_to_rows` output."""
    book = ProfileBook()
    index = book._profiles  # noqa: SLF001 - bulk load; ProfileBook has no public insert
    for r in rows:
        index[r[0]] = Profile(*r)
    return book


# -- loading -------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Resume:
    """A verified checkpoint, ready to resume from."""

    path: str
    mark: LogMark
    profiles: ProfileBook
    engine_state: dict[str, Any]
    created_ms: int


def load_checkpoint(path: str | os.PathLike[str], store: SqliteStore, pseudonymizer: Pseudonymizer,
                    catalog: Catalog) -> Resume | None:
    """The checkpoint at ``path`` when it is complete and made for this database and catalog and the log
    still continues it; else None (a WARNING says why, except when there is no file)."""
    payload = read_checkpoint(path)
    if payload is None:
        return None
    problem = None
    if payload.get("kind") != KIND or payload.get("format") != STATE_FORMAT:
        problem = "not an Onramp state checkpoint of this version"
    elif payload.get("db_id") != database_id(store) or payload.get("pseudonym") != pseudonymizer.fingerprint:
        problem = f"it was made for another database than {store.path}"
    elif payload.get("catalog_version") != catalog.version:
        problem = (f"it was made for another catalog (version {payload.get('catalog_version')!r}, this server "
                   f"runs {catalog.version!r})")
    else:
        mark = LogMark(**payload["mark"])
        problem = mark_problem(store, mark)
    if problem is not None:
        log.warning("ignoring checkpoint %s: %s; rebuilding from the log", path, problem)
        return None
    try:
        state = pickle.loads(payload["state"])
        if state.get("profile_fields") != list(PROFILE_FIELDS):
            raise ValueError("profiles were stored with other fields (another server version)")
        profiles, engine_state = profiles_from_rows(state["profiles"]), state["engine"]
        if not isinstance(engine_state, dict):
            raise ValueError("unexpected content")
    except Exception as exc:  # noqa: BLE001 - anything wrong inside: rebuild instead
        log.warning("ignoring checkpoint %s: its state cannot be read (%s); rebuilding from the log", path, exc)
        return None
    return Resume(str(path), mark, profiles, engine_state, int(payload.get("created_ms", 0)))


def resume(runtime: Runtime, engine: DecisionEngine, checkpoint: Resume) -> dict[str, int]:
    """Bring ``engine`` and the runtime's profiles (already the checkpoint's) up to the log: see the module
    docstring. Falls back to a full rebuild (WARNING) when the engine state does not fit this engine."""
    started = time.perf_counter()
    pipeline = runtime.pipeline
    try:
        engine.load_state(checkpoint.engine_state)
    except ValueError as exc:
        log.warning("ignoring checkpoint %s: %s; rebuilding from the log", checkpoint.path, exc)
        pipeline.profiles = ProfileBook()
        n = pipeline.rebuild()
        engine.rebuild()
        return {"events": n, "resumed": 0}
    replayed = pipeline.rebuild(after_seq=checkpoint.mark.events_seq)
    reader = runtime.store.reader()
    try:
        fixed = reconcile_profiles(reader, pipeline.profiles)
    finally:
        reader.close()
    counts = engine.rebuild(replay=True, after=checkpoint.mark)
    log.info("resumed from checkpoint %s (mark: event %d, decision %d, outcome %d): %d later events replayed, "
             "%d profiles reconciled with the log, %d outcomes learned, %d bandit draws repeated in %.2f s",
             checkpoint.path, checkpoint.mark.events_seq, checkpoint.mark.decisions_rowid,
             checkpoint.mark.outcomes_rowid, replayed, fixed, counts["replayed"], counts.get("redrawn", 0),
             time.perf_counter() - started)
    return {"events": replayed, "resumed": 1, "reconciled": fixed, **counts}


# -- writing -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What one checkpoint wrote."""

    path: str
    mark: LogMark
    bytes: int
    pause_s: float  # how long the writer and the event loop waited for the snapshot
    total_s: float


class Checkpointer:
    """Writes checkpoints of a running server: every ``interval_s`` seconds, on demand, and at shutdown."""

    def __init__(self, runtime: Runtime, engine: DecisionEngine, path: str | os.PathLike[str],
                 interval_s: float) -> None:
        self.runtime = runtime
        self.engine = engine
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.at_stop = True  # write one at graceful shutdown (tests turn it off to simulate a crash)
        self.after_erase = True  # write one right after each erasure (see :meth:`erased`)
        self.written = 0
        self.last: CheckpointInfo | None = None
        self._db_id = database_id(runtime.store)
        self._task: asyncio.Task[None] | None = None
        self._soon: asyncio.Task[Any] | None = None
        self._lock = asyncio.Lock()

    def _snapshot(self) -> bytes:
        """The state as pickle bytes (on the event loop thread, while the writer waits)."""
        state = {"profile_fields": list(PROFILE_FIELDS), "profiles": profiles_to_rows(self.runtime.pipeline.profiles),
                 "engine": self.engine.to_state()}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    async def checkpoint(self) -> CheckpointInfo:
        """Take a consistent snapshot (module docstring) and write it atomically; returns what was written."""
        async with self._lock:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            taken = threading.Event()
            box: dict[str, Any] = {}

            def take() -> None:
                if "late" in box:
                    return
                t0 = time.perf_counter()
                try:
                    box["blob"] = self._snapshot()
                except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
                    box["error"] = exc
                finally:
                    box["snapshot_s"] = time.perf_counter() - t0
                    taken.set()

            def after_commit(_mark: LogMark) -> None:
                t0 = time.perf_counter()
                try:
                    # call_soon from the loop: runs after the callbacks (and task wake-ups) queued before it
                    loop.call_soon_threadsafe(loop.call_soon, take)
                except RuntimeError as exc:  # loop closed
                    box["error"] = exc
                    return
                if not taken.wait(BARRIER_TIMEOUT_S):
                    box["late"] = True
                    box["error"] = TimeoutError(f"the event loop did not take the snapshot in {BARRIER_TIMEOUT_S} s")
                box["pause_s"] = time.perf_counter() - t0

            mark = await self.runtime.writer.call(read_mark, after_commit=after_commit)
            if "error" in box:
                raise RuntimeError(f"checkpoint failed: {box['error']}") from box["error"]
            payload = {"kind": KIND, "format": STATE_FORMAT, "db_id": self._db_id,
                       "pseudonym": self.runtime.pseudonymizer.fingerprint,
                       "catalog_version": self.runtime.catalog.version,
                       "policy_version": self.engine.policy_version, "created_ms": time.time_ns() // 1_000_000,
                       "mark": dataclasses.asdict(mark), "state": box["blob"]}
            size = await asyncio.to_thread(lambda: write_checkpoint(self.path, encode_checkpoint(payload)))
            info = CheckpointInfo(str(self.path), mark, size, box.get("pause_s", 0.0), time.perf_counter() - started)
            self.written += 1
            self.last = info
            log.info("checkpoint %s written: %d bytes, mark event %d / decision %d / outcome %d, writer paused "
                     "%.3f s, %.2f s in all", info.path, size, mark.events_seq, mark.decisions_rowid,
                     mark.outcomes_rowid, info.pause_s, info.total_s)
            return info

    def erased(self) -> None:
        """An erasure was committed: checkpoint now (in the background). The erased user's rows are gone,
        so no replay could repeat what the models learned from them since the last checkpoint; and the old
        file, which still holds the user's profile, is replaced."""
        if not self.after_erase:
            return
        if self._soon is not None and not self._soon.done():
            self._soon.add_done_callback(lambda _t: self.erased())  # one more after the running one
            return
        self._soon = asyncio.get_running_loop().create_task(self._checkpoint_logged(), name="onramp-checkpoint-erase")

    async def _checkpoint_logged(self) -> None:
        try:
            await self.checkpoint()
        except Exception:  # noqa: BLE001 - the next periodic one retries
            log.exception("checkpoint after erasure failed")

    async def _run(self, first_delay_s: float) -> None:
        delay = first_delay_s
        while True:
            await asyncio.sleep(delay)
            delay = self.interval_s
            try:
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving; the next round retries
                log.exception("periodic checkpoint failed")

    def start(self, first_delay_s: float | None = None) -> None:
        """Start the periodic checkpoints (the first after ``first_delay_s``, default one interval)."""
        if self._task is None and self.interval_s > 0:
            delay = self.interval_s if first_delay_s is None else first_delay_s
            self._task = asyncio.get_running_loop().create_task(self._run(delay), name="onramp-checkpoint")

    async def stop(self) -> None:
        """Stop the periodic task and, unless ``at_stop`` is off, write the shutdown checkpoint (call after
        the servicer stopped and before the writer stops)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.after_erase = False
        while self._soon is not None and not self._soon.done():
            await asyncio.gather(self._soon, return_exceptions=True)
        if self.at_stop:
            try:
                await self.checkpoint()
            except Exception:  # noqa: BLE001 - the log is complete; the next start rebuilds from it
                log.exception("shutdown checkpoint failed")
