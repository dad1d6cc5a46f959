"""The learner: the one place models learn. It reads the store's feeds in commit order -- new decisions that wait
for a reward, new events (success events join rewards), committed outcomes, profile changes and erasures --
joins rewards (success events and default rewards at the window's end are written as outcomes), updates the
bandit and the River models, measures the proposing rules against the bandit (:class:`RuleMonitor`: a rule
significantly worse is demoted, and the snapshots name the demoted rules, which workers stop boosting), and
publishes versioned model snapshots that every worker loads.

Exactly-once: the bandit learns each committed outcome once, in ``outcome_log`` order; the saved learner
state holds the models with the feed positions they include, so a restarted learner continues from there and
ends with the models one that never stopped would have. An erasure is taken out of the models (the bandit
unlearns the person's rewarded decisions it had learned; the River models are relearned from the remaining
profiles) before the snapshot that covers it is published.

It runs as an asyncio task (:meth:`Learner.run`) on any event loop with its own store connections; the
snapshot a worker decides with is named in each decision's ``policy_version``.
"""
from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bandits.policies import policy_from_state
from server.base.catalog import Catalog
from server.base.clock import now_ms as clock_ms
from server.base.metrics import Metrics
from server.base.records import ANON_PREFIX
from server.ingest.profiles import decode_profile
from server.learn.rewards import Pending, RewardJoiner
from server.learn.rule_monitor import RuleMonitor, trial_of
from server.learn.segments import Segmenter
from server.learn.snapshot import STATE_FORMAT, build_decider, guard_horizon_ms, made_for, snapshot_body
from server.store.interfaces import Store
from server.store.rows import ProfileChange, Snapshot, Unlearning
from server.store.writer import Writer

log = logging.getLogger(__name__)

FORGET_INTERVAL_MS = 60_000  # how often the shows of people without tracking consent are looked at
SAVE_INTERVAL_MS = 10_000  # how often the learner saves its state (and prunes what that state includes)
RELEARN_CHUNK = 256  # profiles relearned between two turns of the event loop


@dataclass(slots=True)
class Positions:
    """The last row of each feed the models include."""

    decisions: int = 0  # decision_feed id
    events: int = 0  # events seq
    outcomes: int = 0  # outcome_log id
    changes: int = 0  # profile_changes id
    unlearn: int = 0  # unlearn_queue id

    def as_dict(self) -> dict[str, int]:
        return {"decisions": self.decisions, "events": self.events, "outcomes": self.outcomes,
                "changes": self.changes, "unlearn": self.unlearn}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "Positions":
        return cls(**{k: int(d.get(k, 0)) for k in ("decisions", "events", "outcomes", "changes", "unlearn")})


@dataclass(slots=True)
class LearnerStats:
    learned: int = 0  # outcomes the bandit learned
    unlearned: int = 0
    relearns: int = 0
    published: int = 0
    lag_ms: list[float] = field(default_factory=list)  # outcome committed -> snapshot published (recent)


class Learner:
    """Consumes the feeds of one store and publishes model snapshots (see the module docstring)."""

    def __init__(self, store: Store, writer: Writer, catalog: Catalog, pseudonym: Callable[[str], str], *,
                 metrics: Metrics | None = None, interval_s: float = 0.1, reward_grace_ms: int | None = None,
                 save_interval_ms: int = SAVE_INTERVAL_MS) -> None:
        self.reader = store.reader()
        self.writer = writer
        self.catalog = catalog
        self.metrics = metrics
        self.save_interval_ms = save_interval_ms
        self.segmenter = Segmenter(catalog)
        self.space = self.segmenter.space
        self.arms = tuple(s.id for s in catalog.personalized_steps)
        self.arm_index = {sid: i for i, sid in enumerate(self.arms)}
        self.decider = build_decider(catalog, self.space.dim)
        self.rule_monitor = RuleMonitor.for_rules(catalog.rules, metrics)  # proposing rules vs the bandit
        self.pseudonym = pseudonym
        self.joiner = RewardJoiner(writer, catalog, pseudonym, lambda *_: None, metrics, grace_ms=reward_grace_ms,
                                   aliases=self._anonymous_subjects)
        self.horizon_ms = guard_horizon_ms(catalog)
        self.sweep_interval_s = float(catalog.rewards.sweep_interval_seconds)
        self.interval_s = min(interval_s, self.sweep_interval_s)
        self.pos = Positions()
        self._passed_over: set[int] = set()  # outcome ids this round's read skipped (see _take_erasures)
        self.stats = LearnerStats()
        self.version = 0  # the latest snapshot published
        self._dirty = True  # models changed since the last snapshot
        self._saved_ms = 0
        self._forgot_ms = 0
        self.clock_ms = 0  # the River models' time: the latest profile change they learned (saved with them)
        self._oldest_unpublished_ms: int | None = None
        self._stop = asyncio.Event()
        self._started = False

    # -- state ---------------------------------------------------------------------------------------------
    def _state_body(self) -> bytes:
        """The learner's saved state: the bandit policy, the River models with their per-user marks, the rule
        statistics and the models' clock."""
        state = {
            "format": STATE_FORMAT, "catalog": self.catalog.version, "arms": list(self.arms),
            "features": list(self.space.names),
            "policy": self.decider.policy.to_state() if self.decider is not None else None,
            "segmenter": self.segmenter.to_state(marks=True), "learned": self.stats.learned,
            "rules": self.rule_monitor.to_state(), "clock": self.clock_ms,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def snapshot_body(self) -> bytes:
        """What workers load (server/learn/snapshot.py): the bandit policy, the River models as plain numbers and
        the demoted rules."""
        return snapshot_body(self.catalog, self.arms, self.space.names,
                             self.decider.policy.to_state() if self.decider is not None else None,
                             self.segmenter.model(), self.stats.learned, self.rule_monitor.demoted_rules)

    def _restore(self, body: bytes) -> bool:
        try:
            state = pickle.loads(body)
            if not made_for(state, self.catalog, self.arms, self.space.names):
                return False
            segmenter = Segmenter.from_state(state["segmenter"], self.catalog)
            policy = policy_from_state(state["policy"]) if state.get("policy") is not None else None
            monitor = RuleMonitor.from_state(state["rules"], self.metrics)
        except Exception as exc:  # noqa: BLE001 - any unreadable state: start over from the log
            log.warning("learner state not usable (%s): learning again from the log", exc)
            return False
        self.segmenter = segmenter
        if policy is not None and self.decider is not None:
            self.decider.policy = policy
        self.rule_monitor = monitor
        self.stats.learned = int(state.get("learned", 0))
        self.clock_ms = int(state.get("clock", 0))
        return True

    def open(self) -> None:
        """Load the saved state (or start from nothing: every profile learned once, every outcome from the start)
        and the decisions still waiting for a reward."""
        saved = self.reader.load_learner_state()
        if saved is not None and self._restore(saved.body):
            self.pos = Positions.from_dict(saved.positions)
            learned_profiles = True
        else:
            self.pos = Positions()
            learned_profiles = False
        if not learned_profiles:
            # No saved state: the River models learn every profile once, in pseudonym order, and the change
            # rows written meanwhile are learned after.
            self.pos.changes = self.reader.feed_end("changes")
            for pseudo, body in self.reader.iter_profile_bodies():
                p = decode_profile(pseudo, body)
                self.segmenter.learn_one(p, p.last_seen_ms)
                self.clock_ms = max(self.clock_ms, p.last_seen_ms)
            self.segmenter.label_expired(self.clock_ms)
        # Decisions waiting for a reward (the pending index is rebuilt, not saved). Events are read on from the
        # saved position: one ingested while the learner was down may still reward a pending decision.
        self.pos.decisions = self.reader.feed_end("decisions")
        if not learned_profiles:
            self.pos.events = self.reader.last_event_seq()
        self.joiner.load(Pending(r.decision_id, r.user_pseudo, r.timestamp_ms, r.step_id, r.reward_deadline_ms)
                         for r in self.reader.pending_rows())
        latest = self.reader.latest_snapshot()
        self.version = latest.version if latest is not None else 0
        self._dirty = True
        self._started = True

    def _anonymous_subjects(self, user_id: str) -> list[str]:
        return [ANON_PREFIX + link.alias for link in self.reader.links_of([user_id]) if link.alias_kind == "anonymous_id"]

    # -- one round -----------------------------------------------------------------------------------------
    async def step(self, now_ms: int | None = None) -> bool:
        """Read every feed once, learn, write joined outcomes, and publish a snapshot when the models changed.
        Returns whether a snapshot was published."""
        if not self._started:
            self.open()
        now = clock_ms() if now_ms is None else now_ms
        reader = self.reader
        # 1-2. decisions that wait for an outcome, then events (success events join rewards), read as of one
        # moment: an event that rewards a decision is never seen before that decision. Only the events the
        # joiner can use (success, dismissal, identify; none while no decision waits for an outcome) are built.
        decisions, fed_events, self.pos.events = reader.decisions_and_events_after(
            self.pos.decisions, self.pos.events, self.joiner.event_names, waiting=len(self.joiner) > 0)
        events = [ev for _, ev in fed_events]
        for d in decisions:
            self.joiner.add(Pending(d.decision_id, d.user_pseudo, d.timestamp_ms, d.step_id, d.reward_deadline_ms))
            self.pos.decisions = d.id
        if events:
            self.joiner.on_events(events)
        await self.joiner.drain()
        # 3. windows that closed: default rewards (every round: rounds are at most [rewards]
        # sweep_interval_seconds apart)
        await self.joiner.sweep(now)
        # 4. committed outcomes, in commit order: the bandit learns each once
        while True:
            outcomes = reader.outcomes_after(self.pos.outcomes)
            if not outcomes:
                break
            for o in outcomes:
                self._passed_over.update(range(self.pos.outcomes + 1, o.id))  # erased before read: never learned
                self.joiner.settle(o.decision_id)
                self._learn(o.step_id, o.context, o.reward, o.timestamp_ms)
                self._learn_rule(o.reason, o.step_id, o.probabilities, o.reward)
                self.pos.outcomes = o.id
                self._note_unpublished(now)
            self._dirty = True
        # 5. erasures (after the outcomes: one learned in this round is unlearned below)
        erased = self._take_erasures()
        if erased:
            await self._relearn()
            self._dirty = True
        # 6. profile changes: the River models learn each once
        while True:
            changes = reader.profile_changes_after(self.pos.changes)
            if not changes:
                break
            for c in changes:
                self._learn_change(c)
                self.pos.changes = c.id
            self._dirty = True
        # 7. shows no cap counts any more of people without tracking consent (the models do not change)
        if now - self._forgot_ms >= FORGET_INTERVAL_MS:
            self._forgot_ms = now
            await self.forget_untracked_shows(now)
        if erased:  # saved (and the queued erasure deleted) before the snapshot that EraseUser waits for
            await self.save(now, scrub=True)
        published = False
        if self._dirty:
            await self.publish(now)
            published = True
        if not erased and now - self._saved_ms >= self.save_interval_ms:
            await self.save(now)
        return published

    def _take_erasures(self) -> bool:
        """Unlearn every queued erasure and forget the person's pending decisions; whether there was one. (A
        function of its own: nothing about the person stays in a frame of the learner's task.)"""
        erased = self.reader.unlearning_after(self.pos.unlearn)
        for item, outcome_ids in erased:
            self._unlearn(item, outcome_ids)
            for p in item.pseudonyms:
                self.joiner.forget_user(p)
            self.pos.unlearn = item.id
        # every id passed over was an erased outcome whose erasure committed before the read, so it is in the
        # queue read above: none is waiting for a later round
        self._passed_over.clear()
        return bool(erased)

    def _note_unpublished(self, now: int) -> None:
        if self._oldest_unpublished_ms is None:
            self._oldest_unpublished_ms = now

    def _learn(self, step_id: str, context: dict[str, float], reward: float, timestamp_ms: int) -> None:
        """Pass one committed outcome to the bandit at the time of its decision (a forgetting policy weighs it
        by that time, so the state does not depend on when the learner reads it)."""
        arm = self.arm_index.get(step_id)
        if arm is None or not context or self.decider is None:
            return
        try:
            self.decider.learn_one(self.space.vector(context), arm, reward, timestamp_ms)
        except ValueError as exc:
            log.warning("could not learn from a decision: %s", exc)
            return
        self.stats.learned += 1

    def _learn_rule(self, reason: str, step_id: str, probabilities: dict[str, float], reward: float) -> None:
        """Pass one outcome of a boosted decision to the rule monitor (which may demote its rule: it logs that
        and counts it in the metrics; the next snapshot names the rule)."""
        trial = trial_of(reason, step_id, probabilities)
        if trial is not None:
            self.rule_monitor.learn_one(trial, reward)

    def _unlearn(self, item: Unlearning, outcome_ids: dict[str, int]) -> None:
        for row in item.rewarded:
            oid = outcome_ids.get(row.decision_id, 0)
            if not oid or oid > self.pos.outcomes or oid in self._passed_over:
                continue  # never learned (its outcome was erased before the learner read it)
            trial = trial_of(row.reason, row.step_id, row.probabilities)
            if trial is not None:  # a demotion stays (RuleMonitor.unlearn_one)
                self.rule_monitor.unlearn_one(trial, row.reward)
            arm = self.arm_index.get(row.step_id)
            if arm is None or self.decider is None:
                continue
            try:
                self.decider.unlearn_one(self.space.vector(row.context), arm, row.reward, row.timestamp_ms)
            except ValueError as exc:
                log.warning("could not unlearn an erased decision: %s", exc)
                continue
            self.stats.learned -= 1
            self.stats.unlearned += 1

    async def _relearn(self) -> None:
        """Replace the River models by fresh ones that learned each remaining profile once (River's models
        cannot remove one person's updates)."""
        fresh = Segmenter(self.catalog)
        self.pos.changes = self.reader.feed_end("changes")
        for i, (pseudo, body) in enumerate(self.reader.iter_profile_bodies()):
            p = decode_profile(pseudo, body)
            fresh.learn_one(p, p.last_seen_ms)
            self.clock_ms = max(self.clock_ms, p.last_seen_ms)
            if i % RELEARN_CHUNK == RELEARN_CHUNK - 1:
                await asyncio.sleep(0)
        fresh.label_expired(self.clock_ms)
        self.segmenter = fresh
        self.stats.relearns += 1

    def _learn_change(self, change: ProfileChange) -> None:
        """The River models learn one profile change at its time; activation windows that ended before it get
        their label first. The models' clock is the change log's (the latest change time), not the wall's: a
        learner restarted from its saved state labels at the same points of the log as one that never stopped."""
        if change.timestamp_ms > self.clock_ms:
            self.clock_ms = change.timestamp_ms
            self.segmenter.label_expired(self.clock_ms)
        self.segmenter.learn_one(decode_profile(change.pseudo, change.body), change.timestamp_ms)

    async def forget_untracked_shows(self, now_ms: int) -> int:
        """Take the pseudonym out of the logged shows of people without tracking consent, and drop their shown
        history, once no cap, cooldown or gap counts them any more; returns decision rows changed."""
        before = now_ms - self.horizon_ms
        return await self.writer.call(lambda store: store.forget_untracked(before))

    # -- publishing ----------------------------------------------------------------------------------------
    async def publish(self, now_ms: int | None = None) -> int:
        """Publish the current models as a new snapshot; returns its version."""
        now = clock_ms() if now_ms is None else now_ms
        body = self.snapshot_body()
        positions = self.pos.as_dict()
        self.version = await self.writer.call(lambda store: store.publish_snapshot(now, positions, body))
        self._dirty = False
        self.stats.published += 1
        if self._oldest_unpublished_ms is not None:
            lag = clock_ms() - self._oldest_unpublished_ms
            self.stats.lag_ms = [*self.stats.lag_ms[-999:], float(lag)]
            self._oldest_unpublished_ms = None
        return self.version

    async def save(self, now_ms: int, scrub: bool = False) -> None:
        """Save the learner's state with its positions, then delete what it includes: change rows and queued
        erasures (``scrub``: and truncate the WAL, the queue held the person's contexts)."""
        state = Snapshot(0, now_ms, self.pos.as_dict(), self._state_body())
        # after an erasure (scrub): the published snapshots learned from the person (the next one did not)
        await self.writer.call(lambda store: store.save_learner_state(state, drop_snapshots=scrub), scrub_wal=scrub)
        self._saved_ms = now_ms

    # -- running -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Step every ``interval_s`` until :meth:`stop`; a failed round is logged and retried. The saved state is
        loaded on a thread: a server's event loop answers meanwhile."""
        if not self._started:
            try:
                await asyncio.to_thread(self.open)
            except Exception:  # noqa: BLE001 - the first round retries
                log.exception("loading the learner's state failed")
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep learning; the next round reads the same feeds again
                log.exception("learner round failed")
            wait = max(0.0, self.interval_s - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
        try:
            await self.save(clock_ms())
        except Exception:  # noqa: BLE001 - the next start relearns from the last saved state
            log.exception("saving the learner state at stop failed")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.reader.close()
