"""The reward joiner: gives every decision that showed a step exactly one outcome, and passes each joined
outcome to the learner (the bandit).

An outcome comes from the first of:

- ``reported``: ReportOutcome(decision_id, reward);
- ``event``: a stored event within the decision's reward window that is the step's success event (the
  catalog's ``success_event``: a ``step_completed`` of that step, a ``feature_used`` of its feature, ...),
  either carrying the decision's id or, without one, from the same user (the latest pending decision of
  that step gets the credit; an identified visitor's pending decisions count as the user's from the
  ``identify`` event on); a ``step_dismissed`` of the step gets the step's default reward (outcome
  ``dismissed``);
- ``default``: the window closed (deadline + a short grace for reports in flight, ``[rewards]
  grace_seconds``) with no success; the step's ``default_reward`` applies. A periodic sweep (every
  ``[rewards] sweep_interval_seconds``) closes windows, and the first sweep at startup closes those that
  passed while the server was down.

Uniqueness is the ``outcomes`` primary key: whichever outcome commits first wins, a later one is a
duplicate. Outcomes are written only while their decision row still exists (an erased user's decision is
never given an orphan outcome).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.base.catalog import Catalog, Rewards, Step
from server.base.metrics import Metrics
from server.base.records import IDENTIFY, STEP_COMPLETED, STEP_DISMISSED, StoredEvent
from server.store.interfaces import Store
from server.store.writer import Writer

log = logging.getLogger(__name__)

REPORTED = "reported"
EVENT = "event"
DEFAULT = "default"
# A window counts as closed this long after its deadline (reports in flight): ``[rewards] grace_seconds``.
DEFAULT_GRACE_MS = int(round(Rewards().grace_seconds * 1000))

Learner = Callable[[str, "np.ndarray | None", float, int], None]  # (step_id, context vector, reward, decision ms)


@dataclass(slots=True)
class Pending:
    """A decision that showed a step and waits for its outcome. ``x`` is the context vector the bandit saw
    (None when the decision had no context, e.g. a user without a profile)."""

    decision_id: str
    user_pseudo: str
    timestamp_ms: int
    step_id: str
    deadline_ms: int
    x: np.ndarray | None = None
    claimed: bool = False  # an outcome write for it is in flight


@dataclass(frozen=True, slots=True)
class Outcome:
    """An outcome about to be written."""

    decision_id: str
    reward: float
    source: str
    outcome: str
    timestamp_ms: int


def write_outcomes(store: Store, outcomes: list[Outcome]) -> list[bool | None]:
    """Record each outcome if its decision has none yet (inside the caller's transaction): True when recorded,
    False when the decision already had one, None when the decision does not exist (unknown or erased)."""
    out: list[bool | None] = []
    for o in outcomes:
        d = store.get_decision(o.decision_id)
        if d is None:
            out.append(None)
            continue
        out.append(store.insert_outcome({
            "decision_id": o.decision_id, "user_pseudo": d["user_pseudo"], "reward": o.reward,
            "source": o.source, "outcome": o.outcome, "timestamp_ms": o.timestamp_ms}))
    return out


class RewardJoiner:
    """Pending decisions in memory (by id, by user, by deadline), matched against reports, events and the
    clock; every joined outcome is committed through the writer, then learned."""

    def __init__(self, writer: Writer, catalog: Catalog, pseudonym: Callable[[str], str], learn: Learner,
                 metrics: Metrics | None = None, grace_ms: int | None = None,
                 aliases: Callable[[str], Iterable[str]] | None = None) -> None:
        self.writer = writer
        self.catalog = catalog
        self.pseudonym = pseudonym
        # the anonymous subjects linked to a user: an identify moves their pending decisions to the user
        self.aliases = aliases
        self.learn = learn
        self.metrics = metrics
        self.grace_ms = int(round(catalog.rewards.grace_seconds * 1000)) if grace_ms is None else int(grace_ms)
        if self.grace_ms < 0:
            raise ValueError(f"grace_ms: must be >= 0 (got {self.grace_ms})")
        self.success_reward = catalog.rewards.success_reward
        self._steps: dict[str, Step] = {s.id: s for s in catalog.steps}
        self._names = frozenset({s.success_event for s in catalog.steps} | {STEP_DISMISSED, IDENTIFY})
        self._pending: dict[str, Pending] = {}
        self._by_user: dict[str, list[Pending]] = {}
        self._deadlines: list[tuple[int, str]] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self.joined = {REPORTED: 0, EVENT: 0, DEFAULT: 0}

    # -- pending decisions ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, decision_id: str) -> bool:
        return decision_id in self._pending

    def add(self, p: Pending) -> None:
        """Wait for the outcome of a decision (after it is logged)."""
        self._pending[p.decision_id] = p
        lst = self._by_user.get(p.user_pseudo)
        if lst is None:
            self._by_user[p.user_pseudo] = [p]
        else:
            lst.append(p)
        heapq.heappush(self._deadlines, (p.deadline_ms, p.decision_id))

    def load(self, rows: Iterable[Pending]) -> int:
        """Add decisions found without outcome at startup; returns how many."""
        n = 0
        for p in sorted(rows, key=lambda r: r.timestamp_ms):
            self.add(p)
            n += 1
        return n

    def _remove(self, decision_id: str) -> Pending | None:
        p = self._pending.pop(decision_id, None)
        if p is not None:
            lst = self._by_user.get(p.user_pseudo)
            if lst is not None:
                try:
                    lst.remove(p)
                except ValueError:
                    pass
                if not lst:
                    del self._by_user[p.user_pseudo]
        return p

    def settle(self, decision_id: str) -> Pending | None:
        """Stop waiting for a decision whose outcome committed (whoever wrote it); returns it if it was pending."""
        return self._remove(decision_id)

    def discard(self, decision_id: str) -> bool:
        """Stop waiting for a decision (its row could not be logged). Returns whether it was pending."""
        return self._remove(decision_id) is not None

    def forget_user(self, user_pseudo: str) -> int:
        """Drop the pending decisions of a user, their deadlines included (erasure); returns how many."""
        lst = self._by_user.pop(user_pseudo, [])
        if lst:
            gone = {p.decision_id for p in lst}
            for decision_id in gone:
                self._pending.pop(decision_id, None)
            self._deadlines = [d for d in self._deadlines if d[1] not in gone]
            heapq.heapify(self._deadlines)
        return len(lst)

    def has_user(self, user_pseudo: str) -> bool:
        """Whether a user has pending decisions."""
        return user_pseudo in self._by_user

    def pending_of(self, user_pseudo: str) -> list[Pending]:
        """The pending decisions of a user, oldest first."""
        return list(self._by_user.get(user_pseudo, ()))

    def merge_user(self, from_pseudo: str, into_pseudo: str) -> int:
        """Move the pending decisions of ``from_pseudo`` to ``into_pseudo`` (an identified visitor: the
        user's success events may now reward what the visitor was shown); returns how many moved."""
        if from_pseudo == into_pseudo:
            return 0
        moved = self._by_user.pop(from_pseudo, None)
        if not moved:
            return 0
        for p in moved:
            p.user_pseudo = into_pseudo
        mine = self._by_user.get(into_pseudo)
        self._by_user[into_pseudo] = moved if not mine else sorted(mine + moved, key=lambda p: p.timestamp_ms)
        return len(moved)

    def _identified(self, user_id: str) -> None:
        if self.aliases is None or not user_id:
            return
        into = self.pseudonym(user_id)
        for subject in self.aliases(user_id):
            self.merge_user(self.pseudonym(subject), into)

    # -- writing and learning -------------------------------------------------------------------------------
    _write = staticmethod(lambda store, outcomes: write_outcomes(store, outcomes))

    def _joined(self, outcomes: list[Outcome], results: list[bool | None]) -> None:
        """After commit (on the event loop): learn from the recorded outcomes, forget settled decisions."""
        for o, res in zip(outcomes, results):
            if res is True:
                p = self._remove(o.decision_id)
                self.joined[o.source] = self.joined.get(o.source, 0) + 1
                if self.metrics is not None:
                    self.metrics.record_reward(source=o.source, reward=o.reward)
                if p is not None:
                    try:
                        self.learn(p.step_id, p.x, o.reward, p.timestamp_ms)
                    except Exception:  # noqa: BLE001 - the outcome is stored; learning must not break joining
                        log.exception("learning from decision %s failed", o.decision_id)
            else:  # duplicate (already rewarded) or decision gone: nothing more to wait for
                self._remove(o.decision_id)

    def _unclaim(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            p = self._pending.get(o.decision_id)
            if p is not None:
                p.claimed = False
                heapq.heappush(self._deadlines, (p.deadline_ms, p.decision_id))

    async def _commit(self, outcomes: list[Outcome]) -> list[bool | None]:
        try:
            results = await self.writer.call(lambda store: self._write(store, outcomes), weight=len(outcomes))
        except BaseException:
            self._unclaim(outcomes)
            raise
        self._joined(outcomes, results)
        return results

    def _commit_soon(self, outcomes: list[Outcome]) -> None:
        """Commit outcomes in the background (from a synchronous listener)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(self._commit(outcomes))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
            return
        # No event loop (the pipeline runs listeners on the writer thread once the server is stopped):
        # write without waiting; learning then happens on the writer thread.
        try:
            fut = self.writer.submit(lambda store: self._write(store, outcomes), weight=len(outcomes))
        except Exception:  # noqa: BLE001 - writer stopped: the startup sweep will settle them
            self._unclaim(outcomes)
            return

        def done(f: concurrent.futures.Future[list[bool | None]]) -> None:
            if f.exception() is None:
                self._joined(outcomes, f.result())
            else:
                self._unclaim(outcomes)
        fut.add_done_callback(done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("writing outcomes failed: %s", task.exception())

    async def drain(self) -> None:
        """Wait for outcome writes started by events (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- the three sources ------------------------------------------------------------------------------------
    async def report(self, decision_id: str, reward: float, outcome: str, timestamp_ms: int) -> bool | None:
        """ReportOutcome: True when recorded, False when the decision already had an outcome (duplicate),
        None when no such decision is logged."""
        results = await self._commit([Outcome(decision_id, float(reward), REPORTED, outcome, timestamp_ms)])
        return results[0]

    def on_events(self, events: list[StoredEvent]) -> None:
        """Pipeline listener: join success (or dismissal) events to pending decisions."""
        if not self._pending:
            return
        names = self._names
        found: list[Outcome] = []
        for ev in events:
            if ev.name not in names:
                continue
            if ev.name == IDENTIFY:  # in event order: later events of the batch may reward the visitor's shows
                self._identified(ev.user_id)
            if ev.decision_id:
                p = self._pending.get(ev.decision_id)
                if p is not None and not p.claimed:
                    o = self._match(p, ev, ev.step_id or p.step_id)
                    if o is not None:
                        found.append(o)
                continue
            lst = self._by_user.get(self.pseudonym(ev.subject))
            if not lst:
                continue
            for p in reversed(lst):  # the latest decision of the step gets the credit
                if p.claimed or not (p.timestamp_ms <= ev.timestamp_ms <= p.deadline_ms):
                    continue
                o = self._match(p, ev, ev.step_id)
                if o is not None:
                    found.append(o)
                    break
        if found:
            self._commit_soon(found)

    def _match(self, p: Pending, ev: StoredEvent, step_id: str) -> Outcome | None:
        step = self._steps.get(p.step_id)
        if step is None:
            return None
        if step.is_success(ev.name, step_id, ev.feature):
            p.claimed = True
            return Outcome(p.decision_id, self.success_reward, EVENT,
                           "completed" if ev.name == STEP_COMPLETED else ev.name, ev.timestamp_ms)
        if ev.name == STEP_DISMISSED and step_id == p.step_id:
            p.claimed = True
            return Outcome(p.decision_id, step.default_reward, EVENT, "dismissed", ev.timestamp_ms)
        return None

    def due(self, now_ms: int) -> list[Outcome]:
        """Claim every pending decision whose window closed before ``now_ms`` (minus the grace) and return
        their default outcomes (stamped at the deadline)."""
        out: list[Outcome] = []
        heap = self._deadlines
        limit = now_ms - self.grace_ms
        while heap and heap[0][0] < limit:
            deadline, decision_id = heapq.heappop(heap)
            p = self._pending.get(decision_id)
            if p is None or p.claimed or p.deadline_ms != deadline:
                continue
            step = self._steps.get(p.step_id)
            p.claimed = True
            out.append(Outcome(decision_id, step.default_reward if step is not None else
                               self.catalog.rewards.default_reward, DEFAULT, "no_success", deadline))
        return out

    async def sweep(self, now_ms: int) -> int:
        """Give the default reward to every decision whose window closed; returns how many were recorded."""
        outcomes = self.due(now_ms)
        if not outcomes:
            return 0
        results = await self._commit(outcomes)
        return sum(1 for r in results if r is True)
