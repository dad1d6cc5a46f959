"""Checkpoints of the server's in-memory state, and resuming from one: the last checkpoint plus the log
written after it gives the state a server that never stopped would have, so a restarted server decides as
before, and starts in seconds instead of replaying the whole event log.

What a checkpoint holds (one atomic, checksummed file, server/store/checkpoint.py): the profiles, the decision
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
is not drawn again on resume.

Copy-on-write snapshot (``[server] checkpoint_fork``, default on where ``os.fork`` exists), the way Redis
BGSAVE does it: at that same consistent point the event loop forks; the child process pickles the state it
inherited (a copy-on-write image of the parent's memory, frozen at the fork), writes the file atomically and
leaves with ``os._exit``; it never touches gRPC, asyncio, SQLite or logging. The writer and the loop resume
as soon as ``fork()`` returns, so the pause is the fork time, independent of the state size; the loop waits
for the child in a thread and logs the result. gRPC's own fork handlers must be off
(``GRPC_ENABLE_FORK_SUPPORT=0`` before grpc is imported, as the CLI sets it: see :func:`fork_problem`).
Without fork (no ``os.fork``, the key off, or that variable not "0") the loop pickles the state itself and the writer pause is the pickling time (see docs/operations.md).

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
import gc
import json
import logging
import operator
import os
import pickle
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from server.ingest.profiles import Profile, ProfileBook
from server.store.checkpoint import encode_checkpoint, read_checkpoint, remove_temp_files, write_checkpoint
from server.store.marks import LogMark, mark_problem, read_mark
from server.store.sqlite import SqliteStore, SubjectKeys

if TYPE_CHECKING:
    from server.ops.app import Runtime
    from server.base.catalog import Catalog
    from server.decide.engine import DecisionEngine
    from server.store.privacy import Pseudonymizer

log = logging.getLogger(__name__)

KIND = "onramp-state"
STATE_FORMAT = 1
META_DB_ID = "checkpoint_db_id"
BARRIER_TIMEOUT_S = 60.0  # the writer waits at most this long for the loop to take the snapshot


def database_id(store: SqliteStore) -> str:
    """A random id of this database, kept in ``meta`` (created on first use, before the writer starts)."""
    value = store.meta_get(META_DB_ID)
    if value is None:
        value = uuid.uuid4().hex
        store.meta_set(META_DB_ID, value)
    return value


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
    engine_state: dict[str, Any]  # emptied by resume() once loaded (it may hold users erased since)
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
    engine_state, checkpoint.engine_state = checkpoint.engine_state, {}  # not kept: it may hold erased users
    try:
        engine.load_state(engine_state)
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
    pause_s: float  # how long the writer and the event loop waited for the snapshot (fork: the fork time)
    total_s: float
    forked: bool = False  # written by a forked child process (copy-on-write snapshot)
    child_private_bytes: int = 0  # memory the child held alone at its end (copied pages + its buffers; Linux)
    child_peak_rss_bytes: int = 0  # the child's peak resident set (incl. pages still shared with the server)


GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"


def grpc_fork_handlers_off() -> bool:
    """Whether gRPC's own fork handlers are off: ``GRPC_ENABLE_FORK_SUPPORT`` set to a false value (grpcio
    reads it when it is imported; unset, gRPC core's default in grpcio builds is on)."""
    value = os.environ.get(GRPC_FORK_ENV)
    return value is not None and value.strip().lower() in ("0", "false", "no")


def fork_problem() -> str | None:
    """Why checkpoints cannot be written by a forked child in this process, or None when they can.

    gRPC's fork handlers must be off: with ``GRPC_ENABLE_FORK_SUPPORT`` unset, gRPC core's post-fork handler
    restarts its pollers in the child and, with a grpc.aio server busy, crashes it now and then (SIGABRT
    "ev_epoll1_linux.cc: Check failed: next_worker->state == KICKED", or SIGSEGV: 25 of 150 forks under
    load with grpcio 1.85); set to 1, grpcio's pre-fork handler waits 5 s for its threads and the server
    hangs. The child never uses gRPC, so it needs none of them."""
    if not hasattr(os, "fork"):
        return "this platform has no os.fork"
    if not grpc_fork_handlers_off():
        value = os.environ.get(GRPC_FORK_ENV)
        shown = "unset" if value is None else repr(value)
        return (f"{GRPC_FORK_ENV} is {shown}, so gRPC's own fork handlers run at every fork (they crash or hang "
                f"a child forked from a busy grpc.aio server); set {GRPC_FORK_ENV}=0 in the environment before "
                "grpc is imported (`python -m server serve` does)")
    return None


def _death_signal_arm() -> Callable[[], None] | None:
    """On Linux, a function a forked child calls so that it is killed when the server dies
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); resolved in the parent, so the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # noqa: PLC0415
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    return arm


def _private_bytes() -> int:
    """Memory this process holds alone (Private_Clean + Private_Dirty of /proc/self/smaps_rollup), 0 if unknown:
    in a forked child, the pages copied since the fork plus its own allocations."""
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


class Checkpointer:
    """Writes checkpoints of a running server: every ``interval_s`` seconds, on demand, and at shutdown; by a
    forked child (copy-on-write snapshot, ``fork``) where possible, else by pickling on the event loop."""

    def __init__(self, runtime: Runtime, engine: DecisionEngine, path: str | os.PathLike[str],
                 interval_s: float, *, fork: bool = True) -> None:
        self.runtime = runtime
        self.engine = engine
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.at_stop = True  # write one at graceful shutdown (tests turn it off to simulate a crash)
        self.after_erase = True  # write one right after each erasure (see :meth:`erased`)
        self.written = 0
        self.last: CheckpointInfo | None = None
        problem = fork_problem() if fork else None
        if problem is not None:
            log.warning("server.checkpoint_fork: %s; checkpoints are pickled in the server process instead (ingest "
                        "and decisions pause for the whole pickling)", problem)
        self.fork = fork and problem is None
        self.write_file: Callable[[Path, bytes], int] = write_checkpoint  # the child's writer (tests replace it)
        self._arm_death_signal = _death_signal_arm() if self.fork else None
        self._db_id = database_id(runtime.store)
        self._task: asyncio.Task[None] | None = None
        self._soon: asyncio.Task[Any] | None = None
        self._child: asyncio.Task[CheckpointInfo] | None = None  # waits for the running child, if any
        self._lock = asyncio.Lock()
        removed = remove_temp_files(self.path)  # left by a writer killed before its rename
        if removed:
            log.info("removed %d orphaned checkpoint temp file(s): %s", len(removed), ", ".join(removed))

    def _snapshot(self) -> bytes:
        """The state as pickle bytes (on the event loop thread while the writer waits, or in the forked child)."""
        state = {"profile_fields": list(PROFILE_FIELDS), "profiles": profiles_to_rows(self.runtime.pipeline.profiles),
                 "engine": self.engine.to_state()}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def _payload(self, mark: LogMark) -> dict[str, Any]:
        """The checkpoint file's payload without its ``state``."""
        return {"kind": KIND, "format": STATE_FORMAT, "db_id": self._db_id,
                "pseudonym": self.runtime.pseudonymizer.fingerprint, "catalog_version": self.runtime.catalog.version,
                "policy_version": self.engine.policy_version, "created_ms": time.time_ns() // 1_000_000,
                "mark": dataclasses.asdict(mark)}

    async def checkpoint(self) -> CheckpointInfo:
        """Take a consistent snapshot (module docstring) and write it atomically; returns what was written.
        RuntimeError (the previous file kept) when it fails."""
        async with self._lock:
            if self._child is not None and not self._child.done():  # of a checkpoint() that was cancelled
                await asyncio.wait({self._child})
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            taken = threading.Event()
            box: dict[str, Any] = {}
            fork = self.fork

            def take() -> None:
                if "late" in box:  # the writer gave up waiting, or checkpoint() was cancelled
                    taken.set()
                    return
                try:
                    if fork:
                        self._child = box["child"] = self._start_child(loop, self._payload(box["mark"]), box, started)
                    else:
                        box["blob"] = self._snapshot()
                except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
                    box["error"] = exc
                finally:
                    box["pause_s"] = time.perf_counter() - box["t0"]
                    taken.set()

            def after_commit(mark: LogMark) -> None:
                box["mark"] = mark
                box["t0"] = time.perf_counter()
                try:
                    # call_soon from the loop: runs after the callbacks (and task wake-ups) queued before it
                    loop.call_soon_threadsafe(loop.call_soon, take)
                except RuntimeError as exc:  # loop closed
                    box["error"] = exc
                    return
                if not taken.wait(BARRIER_TIMEOUT_S):
                    box["late"] = True
                    box["error"] = TimeoutError(f"the event loop did not take the snapshot in {BARRIER_TIMEOUT_S} s")

            try:
                mark = await self.runtime.writer.call(read_mark, after_commit=after_commit)
            except asyncio.CancelledError:
                box["late"] = True  # no snapshot any more if it was not taken yet
                if "child" in box:  # forked already: the task still reaps the child
                    box["child"].add_done_callback(_log_abandoned)
                raise
            if "error" in box:
                raise RuntimeError(f"checkpoint failed: {box['error']}") from box["error"]
            if fork:
                child = box["child"]
                try:
                    return await asyncio.shield(child)
                except asyncio.CancelledError:
                    child.add_done_callback(_log_abandoned)
                    raise
            payload = {**self._payload(mark), "state": box["blob"]}
            size = await asyncio.to_thread(lambda: write_checkpoint(self.path, encode_checkpoint(payload)))
            return self._written(CheckpointInfo(str(self.path), mark, size, box.get("pause_s", 0.0),
                                                time.perf_counter() - started))

    def _written(self, info: CheckpointInfo) -> CheckpointInfo:
        self.written += 1
        self.last = info
        how = (f"; by a forked child: {info.child_private_bytes / 2**20:.1f} MiB private (copied) memory, peak RSS "
               f"{info.child_peak_rss_bytes / 2**20:.1f} MiB" if info.forked else "")
        log.info("checkpoint %s written: %d bytes, mark event %d / decision %d / outcome %d, writer paused "
                 "%.3f s, %.2f s in all%s", info.path, info.bytes, info.mark.events_seq, info.mark.decisions_rowid,
                 info.mark.outcomes_rowid, info.pause_s, info.total_s, how)
        return info

    # -- the forked child --------------------------------------------------------------------------------
    def _start_child(self, loop: asyncio.AbstractEventLoop, payload: dict[str, Any], box: dict[str, Any],
                     started: float) -> asyncio.Task[CheckpointInfo]:
        """Fork (on the event loop thread, at the consistent point); the child writes the file, the returned
        task waits for it. The parent's objects are frozen out of its garbage collector while the child runs,
        so full collections do not write to (and copy) every page the child still shares. When the server
        already froze its startup heap (``serve`` does, against long full collections under load), they stay
        frozen afterwards: ``gc.unfreeze()`` would make the startup heap collectable again."""
        parent = os.getpid()
        rfd, wfd = os.pipe()
        unfreeze = gc.get_freeze_count() == 0
        gc.freeze()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: "fork() of a multi-threaded process"
                pid = os.fork()
        except BaseException:
            if unfreeze:
                gc.unfreeze()
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:
            self._child_main(payload, rfd, wfd, parent)
        os.close(wfd)
        return loop.create_task(self._reap(pid, rfd, box, started, unfreeze), name="onramp-checkpoint-child")

    def _child_main(self, payload: dict[str, Any], rfd: int, wfd: int, parent: int) -> NoReturn:
        """The forked child: pickle the inherited state, write the file, report one line on ``wfd``, _exit.
        Touches nothing of the server's (no gRPC, asyncio, SQLite, logging) and never returns."""
        code, report = 1, "error: the child stopped before it could report"
        try:
            gc.disable()
            os.close(rfd)
            if self._arm_death_signal is not None:
                self._arm_death_signal()
                if os.getppid() != parent:  # the server died before the death signal was armed
                    os._exit(1)
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(-1)  # the inherited fd is the server's event loop: never wake it from here
            for sig in (signal.SIGINT, signal.SIGTERM):  # the server stops gracefully and waits for this child
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, signal.SIG_IGN)
            t0 = time.perf_counter()
            payload["state"] = self._snapshot()
            size = self.write_file(self.path, encode_checkpoint(payload))
            report = f"ok {size} {time.perf_counter() - t0:.6f} {_private_bytes()}"
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, then _exit
            report = f"error {type(exc).__name__}: {exc}"
        finally:
            try:
                os.write(wfd, (" ".join(report.split())[:2000] + "\n").encode("utf-8", "replace"))
            finally:
                os._exit(code)

    async def _reap(self, pid: int, rfd: int, box: dict[str, Any], started: float,
                    unfreeze: bool = True) -> CheckpointInfo:
        """Wait for child ``pid`` without blocking the loop, then record what it wrote or raise why it failed
        (orphaned temp files removed, the previous checkpoint file kept)."""
        peak = 0
        try:
            try:
                _, status, usage = await asyncio.to_thread(os.wait4, pid, 0)
                code = os.waitstatus_to_exitcode(status)
                peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            except ChildProcessError:  # reaped by someone else (a wait-for-any child watcher): trust its report
                code = 0
            finally:
                if unfreeze:
                    gc.unfreeze()
            report = os.read(rfd, 4096).decode("utf-8", "replace").strip()
        finally:
            os.close(rfd)
        if code != 0 or not report.startswith("ok "):
            removed = remove_temp_files(self.path)
            how = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
            raise RuntimeError(f"checkpoint failed: its child process (pid {pid}) ended with {how}: "
                               f"{report or 'no report'}; the previous checkpoint file is kept"
                               + (f", {len(removed)} orphaned temp file(s) removed" if removed else ""))
        _, size, _child_s, private = report.split()
        return self._written(CheckpointInfo(str(self.path), box["mark"], int(size), box.get("pause_s", 0.0),
                                            time.perf_counter() - started, forked=True,
                                            child_private_bytes=int(private), child_peak_rss_bytes=peak))

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
        if self._child is not None and not self._child.done():  # a child still writing: let it finish
            await asyncio.wait({self._child})
        if self.at_stop:
            try:
                await self.checkpoint()
            except Exception:  # noqa: BLE001 - the log is complete; the next start rebuilds from it
                log.exception("shutdown checkpoint failed")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _log_abandoned(task: asyncio.Task[CheckpointInfo]) -> None:
    """Log the outcome of a child whose checkpoint() call was cancelled (nobody else sees it)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s", task.exception())
