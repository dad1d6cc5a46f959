"""Decisions as the engine logs them: :class:`Decision` (one answered GetNextStep, as its row is stored) and
:class:`DecisionLogger`, which logs them through the writer thread with group commit and answers only after the
commit (:meth:`server.store.interfaces.ShowHistory.log_decisions`, one call per writer job).

Row columns (:data:`server.store.rows.DECISION_COLUMNS`): decision_id, user_pseudo (keyed pseudonym, never the raw
id), timestamp_ms, surface, step_id ("" when nothing was shown), propensity, reason, policy_version, experiment,
arm, context (JSON {feature: float}), eligible (JSON list of the steps the policy chose among), probabilities (JSON
{step: p} over ``eligible``, summing to 1; empty when nothing was shown) and reward_deadline_ms (0 when nothing was
shown). Rows are built and JSON-encoded on the event loop (:meth:`Decision.flat`): the writer thread then only
stores them.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from dataclasses import dataclass
from typing import Any

from server.store.rows import DECISION_COLUMNS, LoggedDecision
from server.store.writer import Writer

# Group commit (DecisionLogger): a batch waiting behind a commit is sent once its oldest decision has waited this
# long, or once this many wait. Measured at 1000 req/s (docs/benchmarks.md, "the durable decision row"): up to
# about twice the decisions per commit and 0.87-0.91x the CPU per call (1 ms: no gain); it adds at most 2 ms to
# a decision's wait.
GROUP_WINDOW_S = 0.002
GROUP_FULL = 32

# ``user_pseudo`` of a row that holds no id: a decision without a step for someone without tracking consent,
# or their show once the caps no longer need it (ShowHistory.forget_untracked in server/store/interfaces.py)
ANONYMOUS_ROW = ""


@dataclass(slots=True)
class Decision:
    """One answered GetNextStep, as logged."""

    decision_id: str
    user_pseudo: str  # ANONYMOUS_ROW: see there
    timestamp_ms: int
    surface: str
    step_id: str
    propensity: float
    reason: str
    policy_version: str
    experiment: str
    arm: str
    context: dict[str, float] | str  # or its JSON text (json_column), as the row stores it
    eligible: list[str] | str  # (each JSON column: the value, or its JSON text)
    probabilities: dict[str, float] | str
    reward_deadline_ms: int

    def flat(self) -> tuple[Any, ...]:
        """The ``decisions`` row as values in ``DECISION_COLUMNS`` order, the JSON columns already encoded
        exactly as :func:`server.store.decision_log.insert_rows` encodes them. Built on the event loop, so the
        writer thread only runs the INSERT (less Python holding the GIL there, fewer hand-offs with the loop)."""
        return (self.decision_id, self.user_pseudo, self.timestamp_ms, self.surface, self.step_id, self.propensity,
                self.reason, self.policy_version, self.experiment, self.arm, _json_value(self.context),
                _json_value(self.eligible), _json_value(self.probabilities), self.reward_deadline_ms)

    def row(self) -> dict[str, Any]:
        """The ``decisions`` row (JSON columns as plain values; the store serialises them)."""
        return {
            "decision_id": self.decision_id, "user_pseudo": self.user_pseudo, "timestamp_ms": self.timestamp_ms,
            "surface": self.surface, "step_id": self.step_id, "propensity": self.propensity,
            "reason": self.reason, "policy_version": self.policy_version, "experiment": self.experiment,
            "arm": self.arm, "context": self.context, "eligible": self.eligible,
            "probabilities": self.probabilities, "reward_deadline_ms": self.reward_deadline_ms,
        }


class DecisionLogger:
    """Writes decisions through the single writer; :meth:`log` returns once the row is committed.

    At most one decisions job is with the writer at a time: decisions made while it commits wait in one
    batch that becomes the next job when it is done (group commit across concurrent calls, and one queue
    entry, one future and one wake-up of the loop per commit instead of per loop iteration). A decision
    is still answered only after the transaction holding its row has committed.

    That next batch is sent once its oldest decision has waited ``window_s`` (usually at once: it waited
    through the commit before), or as soon as ``full`` decisions wait: under load a commit then holds more
    decisions, and each commit's fixed cost (its ``fdatasync``, the writer's wake-up and the loop's) is
    shared by more of them. A decision made while no job is with the writer is sent at once.
    """

    def __init__(self, writer: Writer, window_s: float = GROUP_WINDOW_S, full: int = GROUP_FULL) -> None:
        self.writer = writer
        self.window_s = window_s
        self.full = full
        self._batch: list[tuple[LoggedDecision, asyncio.Future[bool]]] = []
        self._first_at = 0.0  # loop time when the oldest decision of _batch was queued
        self._timer: asyncio.TimerHandle | None = None  # the _flush of a batch waiting out its window
        self._scheduled = False  # a _flush is queued on the loop (now, or by _timer)
        self._in_flight = False  # a job is with the writer; its completion flushes what waits
        self.batches = 0  # writer jobs submitted (for tests and stats)

    def log(self, item: LoggedDecision) -> asyncio.Future[bool]:
        """Queue a decision (:meth:`~server.store.interfaces.ShowHistory.log_decisions`); the returned future
        (await it) is resolved once its transaction committed (group commit with whatever else is queued): True
        when logged, False when the person's shown history had moved (decide again). A plain function returning
        the future, not a coroutine: one frame less to create and resume per answer."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if not self._batch:
            self._first_at = loop.time()
        self._batch.append((item, fut))
        if not self._scheduled:
            if not self._in_flight:
                self._scheduled = True
                loop.call_soon(self._flush)
        elif self._timer is not None and len(self._batch) >= self.full:  # full before its window ended
            self._timer.cancel()
            self._timer = None
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        self._timer = None
        if self._in_flight:
            return
        batch, self._batch = self._batch, []
        if not batch:
            return
        items = [item for item, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            done = self.writer.submit(lambda store: store.log_decisions(items), weight=len(batch))
        except Exception as exc:  # noqa: BLE001 - e.g. the writer is stopped: every caller gets the error
            _settle(batch, exc)
            return
        self.batches += 1
        self._in_flight = True
        # Straight back to the loop from the writer thread (no asyncio.wrap_future chain per job).
        done.add_done_callback(lambda f: _call_soon_threadsafe(loop, self._done, batch, f))

    def _done(self, batch: list[tuple[LoggedDecision, asyncio.Future[bool]]],
              done: concurrent.futures.Future[list[bool]]) -> None:
        self._in_flight = False
        exc = None if done.cancelled() else done.exception()
        _settle(batch, exc, None if exc is not None or done.cancelled() else done.result())
        if self._batch and not self._scheduled:
            if len(self._batch) < self.full:
                loop = asyncio.get_running_loop()
                wait = self._first_at + self.window_s - loop.time()
                if wait > 0:
                    self._scheduled = True
                    self._timer = loop.call_later(wait, self._flush)
                    return
            self._flush()


# The decisions table's JSON columns, encoded (on the event loop: Decision.flat) exactly as
# ``json.dumps(v, sort_keys=True, separators=(",", ":"))`` would (one shared encoder instead of a new one per value; empty values are
# constants: most answers without a step log "{}" and "[]").
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
# The C encoder _JSON.encode builds on every call, built once (same text; no circular-reference check, which
# a context, list of step ids or probability map never needs).
_JSON_CHUNKS = None if c_make_encoder is None else c_make_encoder(
    None, _JSON.default, encode_basestring_ascii, None, ":", ",", True, False, True)


def _json_value(v: Any) -> Any:
    """One JSON column's stored value: strings (text already encoded, e.g. by :func:`json_column`) and None as
    they are, empty values as constants."""
    if v is None or isinstance(v, str):
        return v
    if not v:
        return "{}" if isinstance(v, dict) else "[]"
    return _JSON.encode(v) if _JSON_CHUNKS is None else "".join(_JSON_CHUNKS(v, 0))


def json_column(v: dict[str, Any] | list[Any]) -> str:
    """The JSON text a decision row stores for ``v`` (e.g. a context to log many times, encoded once)."""
    return _json_value(v)


# Decision.flat lists the columns in this order; fail at import, not with misplaced values, if it changes.
assert DECISION_COLUMNS == ("decision_id", "user_pseudo", "timestamp_ms", "surface", "step_id", "propensity",
                            "reason", "policy_version", "experiment", "arm", "context", "eligible", "probabilities",
                            "reward_deadline_ms"), DECISION_COLUMNS


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed (server stopped): nobody is waiting any more
        pass


def _settle(batch: list[tuple[Any, asyncio.Future[bool]]], exc: BaseException | None,
            results: list[bool] | None = None) -> None:
    for i, (_, fut) in enumerate(batch):
        if fut.done():
            continue
        if exc is None:
            fut.set_result(True if results is None else results[i])
        else:
            fut.set_exception(exc)
