"""The single writer thread: every change to the store runs here, grouped into few transactions.

Callers submit a job (a function of the store) and get a future resolved only after the transaction that
ran the job has COMMITted (group commit: all jobs waiting in the queue when the thread becomes free share
one transaction, up to ``max_group_weight`` events). A job that raises is isolated: the group is rolled
back and its jobs re-run one transaction each, so only the faulty job fails.

Jobs submitted with :meth:`Writer.submit_combined` and the same ``run_many`` function that follow one another
in a group run as one call of ``run_many(store, [arg, ...])`` (e.g. ingest batches: one duplicate check and
one INSERT for all of them, fewer SQLite calls, each of which gives up and re-takes the GIL). Their ``ahead``
function, when given, is called as ``ahead(store, [arg, ...])`` first, before the transaction begins (so without
the write lock every worker's writer takes turns on): for the reads whose results the jobs can check cheaply
inside it (the dedupe window's parts that change only with a new token, server/store/events.py).

A job submitted with ``scrub_wal=True`` (an erasure) has the WAL checkpointed and truncated right after its
transaction commits, before its future resolves (:meth:`SqliteStore.scrub_wal`): the WAL then holds no older
copy of the rows it deleted. When readers of older frames keep the WAL busy, the scrub is retried after each
later commit until it succeeds.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from server.store.interfaces import Store

T = TypeVar("T")
log = logging.getLogger(__name__)


class WriterClosed(RuntimeError):
    """The writer was stopped; no more jobs are accepted."""


RunMany = Callable[[Store, list[Any]], list[Any]]
RunAhead = Callable[[Store, list[Any]], None]


@dataclass(slots=True)
class Job(Generic[T]):
    """One unit of work: ``run(store)`` inside a transaction, then ``after_commit(result)`` on the writer
    thread once committed, then the future is resolved with the result. A combinable job has ``many`` and
    ``arg`` instead of ``run``: consecutive jobs with the same ``many`` run as ``many(store, [arg, ...])``,
    which returns their results in order."""

    run: Callable[[Store], T] | None
    future: concurrent.futures.Future[T]
    weight: int = 1
    after_commit: Callable[[T], None] | None = None
    many: RunMany | None = None
    arg: Any = None
    scrub_wal: bool = False
    ahead: RunAhead | None = None


_STOP = object()
AHEAD_LOG_EVERY_S = 60.0  # a look-ahead that keeps failing is logged this often at most


class Writer:
    """Owns the write handle of a :class:`~server.store.interfaces.Store` (a SqliteStore's write connection)
    and runs submitted jobs on one thread, between ``begin`` and ``commit``."""

    def __init__(self, store: Store, *, max_group_weight: int = 20_000,
                 on_rollback: Callable[[], None] | None = None, name: str = "onramp-writer",
                 on_transaction: Callable[[float, float], None] | None = None) -> None:
        self.store = store
        self.max_group_weight = max_group_weight
        self.on_rollback = on_rollback
        # called after each transaction with the seconds begin() waited (for another process's writer) and the
        # seconds from then to the commit or rollback (e.g. Metrics.record_transaction)
        self.on_transaction = on_transaction
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._submit_lock = threading.Lock()
        self.commits = 0  # transactions committed (for stats and tests)
        self._ahead_failures = 0
        self._ahead_logged = 0.0  # time.monotonic() of the last look-ahead failure logged
        self.jobs_done = 0

    # -- public API ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def qsize(self) -> int:
        """Jobs waiting (for the ``onramp_queue_depth`` gauge)."""
        return self._queue.qsize()

    def submit(self, run: Callable[[Store], T], *, weight: int = 1,
               after_commit: Callable[[T], None] | None = None,
               scrub_wal: bool = False) -> concurrent.futures.Future[T]:
        """Queue ``run`` and return a future resolved after its transaction commits (and, with
        ``scrub_wal``, after the WAL was truncated, see the module docstring)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._submit_lock:
            if self._closed:
                raise WriterClosed("the writer is stopped")
            self._queue.put(Job(run, future, max(1, weight), after_commit, scrub_wal=scrub_wal))
        return future

    def submit_combined(self, many: RunMany, arg: Any, *, weight: int = 1,
                        after_commit: Callable[[Any], None] | None = None,
                        ahead: RunAhead | None = None) -> concurrent.futures.Future[Any]:
        """Queue ``many(store, [arg])``'s single result as a job that runs together with the jobs of the same
        ``many`` next to it in a group (``many(store, [arg1, arg2, ...])``, one result per arg, in order);
        the future resolves after the transaction commits. If the combined call raises, the group is rolled
        back and every job re-runs alone, as for any job. ``ahead(store, [arg1, arg2, ...])`` runs before the
        transaction (once per group, not again for a re-run); if it raises, the failure is logged and the jobs
        run as they would without it."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._submit_lock:
            if self._closed:
                raise WriterClosed("the writer is stopped")
            self._queue.put(Job(None, future, max(1, weight), after_commit, many, arg, ahead=ahead))
        return future

    async def call(self, run: Callable[[Store], T], *, weight: int = 1,
                   after_commit: Callable[[T], None] | None = None, scrub_wal: bool = False) -> T:
        """Submit ``run`` and await its committed result (from a coroutine)."""
        return await asyncio.wrap_future(self.submit(run, weight=weight, after_commit=after_commit,
                                                     scrub_wal=scrub_wal))

    def run_sync(self, run: Callable[[Store], T], timeout: float | None = None) -> T:
        """Submit ``run`` and block until committed (for code outside the event loop)."""
        return self.submit(run).result(timeout)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, finish (commit) every queued one, then end the thread."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group: list[Job[Any]] = [first]
            stopping = self._take(group)
            self._look_ahead(group)
            stopping = self._run_group(group, top_up=not stopping) or stopping
        # Jobs submitted before the stop mark are all taken by now (FIFO); nothing is left behind.

    def _take(self, group: list[Job[Any]]) -> bool:
        """Add the jobs waiting in the queue to ``group``, up to ``max_group_weight`` events in all; True when the
        stop mark was taken (the thread ends after this group)."""
        weight = sum(job.weight for job in group)
        while weight < self.max_group_weight:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            group.append(item)
            weight += item.weight
        return False

    @staticmethod
    def _spans(group: list[Job[Any]]) -> Iterator[tuple[int, int]]:
        """``(i, j)`` for each job run as one call: a job on its own, or consecutive combined jobs of one
        ``many`` (``group[i:j]``)."""
        i, n = 0, len(group)
        while i < n:
            many = group[i].many
            j = i + 1
            if many is not None:
                while j < n and group[j].many == many:
                    j += 1
            yield i, j
            i = j

    def _look_ahead(self, group: list[Job[Any]]) -> None:
        """Call the ``ahead`` function of each run of combined jobs, before the group's transaction. Failures are
        logged with their traceback and the number so far, at most once a minute."""
        for i, j in self._spans(group):
            ahead = group[i].ahead
            if ahead is not None:
                try:
                    ahead(self.store, [g.arg for g in group[i:j]])
                except Exception:  # noqa: BLE001 - the jobs look everything up inside the transaction instead
                    self._ahead_failures += 1
                    now = time.monotonic()
                    if self._ahead_failures == 1 or now - self._ahead_logged >= AHEAD_LOG_EVERY_S:
                        log.exception("writer look-ahead failed (failure %d; logged once a minute at most); its "
                                      "jobs run without it", self._ahead_failures)
                        self._ahead_logged = now

    def _run_group(self, group: list[Job[Any]], top_up: bool = False) -> bool:
        """Run ``group`` in one transaction. With ``top_up``, the jobs queued while ``begin`` waited for the write
        lock (another process's writer held it) join the group first (they have not looked ahead: they look
        everything up inside). Returns True when that took the stop mark."""
        store = self.store
        results: list[Any] = []
        stopping = False
        asked = began = 0.0
        try:
            asked = time.perf_counter()
            store.begin()
            began = time.perf_counter()
            if top_up:
                stopping = self._take(group)
            for i, j in self._spans(group):
                job = group[i]
                many = job.many
                if many is None:
                    results.append(job.run(store))  # type: ignore[misc]
                    continue
                out = many(store, [g.arg for g in group[i:j]])
                if len(out) != j - i:
                    raise RuntimeError(f"combined writer job returned {len(out)} results for {j - i} jobs")
                results.extend(out)
            store.commit()
        except BaseException as exc:  # noqa: BLE001 - isolate the faulty job below
            store.rollback()
            if began:
                self._timed(began - asked, time.perf_counter() - began)
            if self.on_rollback is not None:
                self.on_rollback()
            if len(group) == 1:
                self._fail(group[0], exc)
                return stopping
            for job in group:  # one transaction each, so only the faulty job fails
                self._run_group([job])
            return stopping
        self._timed(began - asked, time.perf_counter() - began)
        self.commits += 1
        self.jobs_done += len(group)
        scrub = any(job.scrub_wal for job in group)
        if scrub or store.scrub_pending:
            self._scrub_wal(wait=scrub)
        for job, result in zip(group, results):
            if job.after_commit is not None:
                try:
                    job.after_commit(result)
                except Exception:  # noqa: BLE001 - the data is committed; report and go on
                    log.exception("after-commit hook failed")
            if not job.future.set_running_or_notify_cancel():
                continue
            job.future.set_result(result)
        return stopping

    def _timed(self, waited_s: float, held_s: float) -> None:
        if self.on_transaction is not None:
            try:
                self.on_transaction(waited_s, held_s)
            except Exception:  # noqa: BLE001 - a failing probe must not fail the jobs
                log.exception("transaction probe failed")

    def _scrub_wal(self, wait: bool) -> None:
        """Truncate the WAL after a committed erasure (waiting a little for readers when ``wait``); while it
        cannot be, the store keeps it pending and each later commit retries without waiting."""
        store = self.store
        was_pending = store.scrub_pending
        try:
            done = store.scrub_wal() if wait else store.scrub_wal(wait_ms=0)
        except Exception:  # noqa: BLE001 - the erasure is committed; retry after the next commit
            log.exception("WAL checkpoint after an erasure failed; retried after the next commit")
            done = False
        if done and was_pending:
            log.info("WAL checkpointed and truncated after an erasure (deferred while readers held it)")
        elif not done and not was_pending:
            log.warning("erasure committed, but readers still hold older WAL frames with the erased rows; the WAL "
                        "is checkpointed and truncated after a later commit, once they are done")

    def _fail(self, job: Job[Any], exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            exc = RuntimeError(f"writer job interrupted: {exc!r}")
        log.error("writer job failed: %s", exc, exc_info=exc)
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(exc)


