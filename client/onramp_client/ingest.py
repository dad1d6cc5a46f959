"""The background sender: a bounded event buffer drained in batches over the IngestEventBatches stream.

Every batch is kept until its BatchAck arrives. When the stream fails with a retryable status the sender
re-opens it after an exponential backoff and re-sends every unacknowledged batch first (safe: event_id is
an idempotency key, so the server counts repeats as duplicates). A non-retryable status, or too many
retries without progress, hands every unacknowledged event back through the next flush() as an OnrampError.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp_client.errors import ClientClosed, FlushTimeout, OnrampError, QueueFull
from onramp_client.retry import STREAM_RETRYABLE, Backoff
from onramp_client.values import IngestResult, ResultTally

log = logging.getLogger("onramp_client")

METHOD = "IngestEventBatches"
MAX_BATCH_EVENTS = 10_000  # the contract's limit per EventBatch
CLOSE_GRACE_S = 5.0  # how long close() waits for the server to end the stream after the last ack

# Opens one IngestEventBatches call from a request iterator; returns the call (an iterator of acks).
OpenStream = Callable[[Iterator[pb.EventBatch]], Iterator[pb.BatchAck]]


@dataclass(slots=True)
class _Queued:
    """A buffered event, its position in the order of track() calls, and when it was buffered."""

    ordinal: int
    event: pb.Event
    at: float


@dataclass(slots=True)
class _Batch:
    """A batch sent (or to be re-sent) and not yet acknowledged; ``first`` is its first event's ordinal."""

    first: int
    message: pb.EventBatch

    @property
    def size(self) -> int:
        return len(self.message.events)


@dataclass(slots=True)
class _Stream:
    """State of one attempt of the stream: the last sequence it sent, whether it is over, its call."""

    sent_upto: int = 0
    stopped: bool = False
    cancelled_by_us: bool = False
    call: object | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """Tuning of the sender; see OnrampClient for the meaning of each knob."""

    batch_size: int = 500
    flush_interval: float = 0.2
    max_queue: int = 100_000
    max_retries: int = 8
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size: expected 1..{MAX_BATCH_EVENTS} (got {self.batch_size!r})")
        if not self.flush_interval > 0:
            raise ValueError(f"flush_interval: expected seconds > 0 (got {self.flush_interval!r})")
        if not self.max_queue >= 1:
            raise ValueError(f"max_queue: expected >= 1 (got {self.max_queue!r})")
        if not self.max_retries >= 0:
            raise ValueError(f"max_retries: expected >= 0 (got {self.max_retries!r})")


class BatchSender:
    """Buffers events (at most ``max_queue`` not yet acknowledged) and streams them from one daemon thread.

    Thread-safe: put(), flush() and close() may be called from any thread. One condition variable guards
    all state; the stream's request generator runs on a gRPC thread and the acks are read on the sender's.
    """

    def __init__(self, open_stream: OpenStream, config: SenderConfig) -> None:
        self._open_stream = open_stream
        self.config = config
        self._cond = threading.Condition()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._unacked: collections.OrderedDict[int, _Batch] = collections.OrderedDict()
        self._pending = 0  # events queued or sent and not acknowledged
        self._next_ordinal = 0
        self._next_sequence = 1
        self._flush_upto = -1  # events with an ordinal up to this one are batched without waiting
        self._tally = ResultTally()  # since the last flush
        self._total = ResultTally()  # since the start
        self._failure: OnrampError | None = None
        self._unsent: list[pb.Event] = []
        self._closing = False
        self._abort = False
        self._stream: _Stream | None = None
        self._thread = threading.Thread(target=self._run, name="onramp-client-sender", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- caller side
    @property
    def pending(self) -> int:
        """Events buffered or in flight, not yet acknowledged."""
        with self._cond:
            return self._pending

    def totals(self) -> IngestResult:
        """Totals of every acknowledgement since the sender started."""
        with self._cond:
            return self._total.snapshot()

    def is_alive(self) -> bool:
        """True while the background thread runs."""
        return self._thread.is_alive()

    def put(self, event: pb.Event, *, block: bool = False, timeout: float | None = None) -> None:
        """Buffers one event. Full buffer: QueueFull at once, or after waiting up to ``timeout`` if ``block``."""
        cfg = self.config
        with self._cond:
            if self._closing:
                raise ClientClosed("track")
            if self._pending >= cfg.max_queue:
                if not block:
                    raise QueueFull(cfg.max_queue)
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._pending >= cfg.max_queue and not self._closing:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFull(cfg.max_queue)
                    self._cond.wait(remaining)
                if self._closing:
                    raise ClientClosed("track")
            self._queue.append(_Queued(self._next_ordinal, event, time.monotonic()))
            self._next_ordinal += 1
            self._pending += 1
            n = len(self._queue)
            if n == 1 or n == cfg.batch_size:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None, *, method: str = "flush") -> IngestResult:
        """Sends everything buffered now and waits until all of it is acknowledged (durable) or failed.

        Returns the totals of the acknowledgements since the previous flush. Raises the pending ingestion
        failure as an OnrampError (with ``unsent_events`` and ``result``), or FlushTimeout when ``timeout``
        seconds pass first (the events stay buffered then).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._next_ordinal - 1
            if target > self._flush_upto:
                self._flush_upto = target
                self._cond.notify_all()
            while self._low_water() <= target and not self._abort:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise FlushTimeout(timeout or 0.0, self._pending, method=method)
                self._cond.wait(remaining)
            failure, unsent = self._failure, self._unsent
            self._failure, self._unsent = None, []
            result = self._tally.take()
        if failure is not None:
            raise OnrampError(failure.code, failure.details, method=METHOD, unsent_events=unsent, result=result)
        return result

    def close(self, timeout: float | None = None) -> IngestResult:
        """Flushes, ends the stream and stops the thread. Events still unacknowledged when ``timeout``
        passes are handed back in the FlushTimeout raised. Calling it again does nothing."""
        with self._cond:
            if self._closing:
                return IngestResult()
            self._closing = True
            self._cond.notify_all()
        start = time.monotonic()
        try:
            return self.flush(timeout, method="close")
        except FlushTimeout as err:
            with self._cond:
                unsent = self._drain_pending()
            raise FlushTimeout(timeout or 0.0, err.pending, method="close", unsent_events=unsent) from None
        finally:
            left = CLOSE_GRACE_S if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            self._thread.join(min(left, CLOSE_GRACE_S) if left > 0 else 0.0)
            if self._thread.is_alive():
                self._stop_now()
                self._thread.join()

    def _stop_now(self) -> None:
        """Aborts: cancels the open call and wakes every waiter so the thread ends promptly."""
        with self._cond:
            self._abort = True
            stream = self._stream
            self._cond.notify_all()
        if stream is not None and stream.call is not None:
            stream.cancelled_by_us = True
            stream.call.cancel()  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- state helpers (hold the lock)
    def _low_water(self) -> int:
        """Smallest ordinal not yet acknowledged or failed (next_ordinal when there is none)."""
        if self._unacked:
            return next(iter(self._unacked.values())).first
        if self._queue:
            return self._queue[0].ordinal
        return self._next_ordinal

    def _drain_pending(self) -> list[pb.Event]:
        """Removes and returns every event not acknowledged, in order."""
        events = [e for b in self._unacked.values() for e in b.message.events]
        events += [q.event for q in self._queue]
        self._unacked.clear()
        self._queue.clear()
        self._pending = 0
        self._cond.notify_all()
        return events

    def _fail(self, error: OnrampError) -> None:
        unsent = self._drain_pending()
        if self._failure is None:
            self._failure = error
        self._unsent.extend(unsent)
        log.error("onramp: %s; %d events handed back through flush()", error, len(unsent))

    def _take_batch(self) -> _Batch:
        n = min(len(self._queue), self.config.batch_size)
        items = [self._queue.popleft() for _ in range(n)]
        batch = _Batch(items[0].ordinal, pb.EventBatch(sequence=self._next_sequence, events=[q.event for q in items]))
        self._unacked[self._next_sequence] = batch
        self._next_sequence += 1
        return batch

    def _batch_due(self, now: float) -> float:
        """0 when the head of the queue must be sent now, else seconds until it is due."""
        cfg = self.config
        head = self._queue[0]
        if len(self._queue) >= cfg.batch_size or head.ordinal <= self._flush_upto or self._closing:
            return 0.0
        return max(0.0, cfg.flush_interval - (now - head.at))

    # ----------------------------------------------------------------- stream side
    def _requests(self, stream: _Stream) -> Iterator[pb.EventBatch]:
        """Request generator of one stream: unacknowledged batches first, then new ones as they fill."""
        while True:
            with self._cond:
                while True:
                    if stream.stopped or self._abort:
                        return
                    batch = next((b for s, b in self._unacked.items() if s > stream.sent_upto), None)
                    if batch is None and self._queue:
                        wait = self._batch_due(time.monotonic())
                        if wait <= 0:
                            batch = self._take_batch()
                        else:
                            self._cond.wait(wait)
                            continue
                    if batch is not None:
                        stream.sent_upto = batch.message.sequence
                        break
                    if self._closing and not self._unacked:
                        return  # everything acknowledged: half-close, the server then ends the stream
                    self._cond.wait()
            yield batch.message

    def _on_ack(self, ack: pb.BatchAck) -> bool:
        """Settles the acknowledged batch; returns False for an ack of no batch in flight."""
        with self._cond:
            batch = self._unacked.pop(ack.sequence, None)
            if batch is None:
                log.warning("onramp: ack for unknown batch %d ignored", ack.sequence)
                return False
            self._pending -= batch.size
            for r in self._tally.add(ack):  # logged before flush() can return (rejections are rare)
                log.warning("onramp: server rejected %s", r)
            self._total.add(ack)
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        """The sender thread: opens the stream while there is work, retries it, gives up when it must."""
        attempt = 0
        while True:
            with self._cond:
                while not (self._abort or self._pending or self._closing):
                    self._cond.wait()
                if self._abort or (self._closing and not self._pending):
                    return
                stream = self._stream = _Stream()
            error: OnrampError | None = None
            progressed = False
            try:
                call = self._open_stream(self._requests(stream))
                stream.call = call
                with self._cond:
                    abort = self._abort
                if abort:
                    stream.cancelled_by_us = True
                    call.cancel()  # type: ignore[attr-defined]
                for ack in call:
                    progressed = self._on_ack(ack) or progressed
            except grpc.RpcError as err:
                error = OnrampError.from_rpc_error(err, METHOD)
            except Exception as err:  # noqa: BLE001 - a bug or a broken channel must not kill the thread silently
                log.exception("onramp: ingestion stream failed")
                error = OnrampError(grpc.StatusCode.INTERNAL, f"client error: {err!r}", method=METHOD)
            finally:
                with self._cond:
                    stream.stopped = True
                    self._cond.notify_all()
            with self._cond:
                if self._abort:
                    return
                if progressed:
                    attempt = 0
                if not self._pending:  # an idle stream ended or broke: reopen it when there is work again
                    if error is not None:
                        log.debug("onramp: idle stream ended: %s", error)
                    attempt = 0
                    continue
                if error is None:
                    if not self._unacked:
                        continue
                    error = OnrampError(grpc.StatusCode.UNAVAILABLE, "stream ended before every batch was "
                                        "acknowledged", method=METHOD)
                retryable = error.code in STREAM_RETRYABLE and not (
                    error.code == grpc.StatusCode.CANCELLED and stream.cancelled_by_us)
                delay = self.config.backoff.delay(attempt)
                if retryable and attempt < self.config.max_retries:
                    attempt += 1
                    log.warning("onramp: %s; retry %d/%d in %.2f s (%d batches to re-send)", error, attempt,
                                self.config.max_retries, delay, len(self._unacked))
                else:
                    if retryable:
                        error = OnrampError(error.code, f"{error.details} (gave up after {attempt} retries)",
                                            method=METHOD)
                    attempt = 0
                    self._fail(error)
                deadline = time.monotonic() + delay
                while not self._abort and not (self._closing and not self._pending):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
