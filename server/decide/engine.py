"""The decision engine behind GetNextStep and ReportOutcome: guardrails first, then the static core flow,
the seed's rule triggers, and a contextual bandit with exact propensities; every answer is logged and every
shown step is rewarded once, and the bandit learns online from the joined rewards.

How one step is chosen (see docs/decisions.md):

1. the guardrails decide which steps may be shown now (never a completed step, prerequisites, surface,
   cooldowns, per-step / per-channel / total daily caps, min gap) — before any probability;
2. core steps come first, in their static order, until all are completed (``core``, or ``no_consent``
   when the user has not granted personalization; such users get core steps only);
3. after the core flow, per experiment arm: ``holdout`` gets no personalized step (``holdout``), ``generic``
   gets the generic order (``generic``); ``tailored`` gets, once the user showed consistent behavior (N
   sessions on M days), the first firing rule (``rule:<name>``) or else the bandit (``bandit``), and
   the generic order before that;
4. nothing allowed -> no step (``capped`` when a cap/cooldown/gap blocks, else ``none_eligible``).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.exploration import Decider, build_exploration
from bandits.guardrails import GuardrailConfig, StepSpec, UserHistory, eligible, personalization_allowed
from bandits.policies import build_policy, policy_from_state
from server.base.catalog import Catalog
from server.base.clock import DAY_MS, HOUR_MS
from server.base.clock import now_ms as clock_ms
from server.base.experiments import Assigner
from server.base.ids import new_decision_id
from server.base.metrics import Metrics
from server.base.reasons import Reason
from server.base.records import ANON_PREFIX, IDENTIFY, StoredEvent
from server.decide.engine_api import NextStep, ServiceError
from server.decide.history import KEEP_PER_STEP, ShownHistory
from server.decide.rules import first_firing
from server.ingest.consent import PERSONALIZATION
from server.ingest.identity import ANONYMOUS_ID
from server.ingest.pipeline import Erasure, Pipeline
from server.ingest.profiles import Profile
from server.learn.features import request_mobile
from server.learn.rewards import Pending, RewardJoiner
from server.learn.segments import SegmentResult, Segmenter, distinct_days
from server.store.decision_log import ANONYMOUS_ROW, Decision, DecisionLogger, iter_shows, joined_rows, pending_rows
from server.store.marks import LogMark, bandit_decisions_after
from server.store.sqlite import LinkRow


log = logging.getLogger(__name__)

STATE_FORMAT = 1
SEGMENT_CACHE_MS = 60_000  # a user's segments/context are recomputed at least once a minute ...
SEGMENT_CACHE_SIZE = 100_000  # ... for at most this many recent users
LABEL_SWEEP_S = 60.0  # how often the reward sweep also gives expired activation windows their label
RELEARN_CHUNK = 256  # profiles the segmenter relearns between two turns of the event loop (after an erasure)

# Arm kinds (catalog experiments); without an experiment every user is served as "tailored".
TAILORED = "tailored"
GENERIC_ARM = "generic"
HOLDOUT_ARM = "holdout"


def _temporary(block: str) -> bool:
    """Whether a guardrail block passes with time (a cap, cooldown, min gap or recent dismissal)."""
    return block in ("cooldown", "min_gap", "dismissed") or block.startswith("cap:")


def guardrail_config(catalog: Catalog) -> GuardrailConfig:
    """The catalog's ``[guardrails]`` as the bandits package's :class:`GuardrailConfig`."""
    g = catalog.guardrails
    return GuardrailConfig(
        max_per_day_per_channel=dict(g.max_per_day_per_channel), max_per_day_total=g.max_per_day_total,
        min_gap_ms=int(round(g.min_gap_minutes * 60_000)), never_repeat_completed=g.never_repeat_completed,
        max_exploration=g.max_exploration, min_sessions_for_personalization=g.min_sessions_for_personalization,
        min_distinct_days_for_personalization=g.min_distinct_days_for_personalization)


def step_specs(catalog: Catalog) -> list[StepSpec]:
    """The guardrails' view of every catalog step, in catalog order."""
    return [StepSpec(step_id=s.id, channel=s.channel, kind=s.kind, prerequisites=tuple(s.prerequisites),
                     cooldown_ms=int(round(s.cooldown_hours * HOUR_MS)), max_per_day=s.max_per_day)
            for s in catalog.steps]


@dataclass(slots=True)
class Choice:
    """What the engine decided for one request (before it is logged)."""

    decision: Decision
    segments: list[str]
    x: np.ndarray | None
    pseudo: str  # the user's pseudonym (the shown history's key; the row holds none without tracking consent)


class DecisionEngine:
    """Implements :class:`server.decide.engine_api.DecisionService` (and the ``ProfileEnricher`` hook).

    State lives on the event loop thread: the shown history (for caps), the pending rewards and the bandit.
    All of it is rebuilt from the database at construction (``rebuild=True``): shows from ``decisions``,
    pending rewards from decisions without outcome, the bandit by replaying joined outcomes in commit order.
    """

    def __init__(self, pipeline: Pipeline, catalog: Catalog, *, metrics: Metrics | None = None,
                 segmenter: Segmenter | None = None, sweep_interval_s: float | None = None,
                 reward_grace_ms: int | None = None, rebuild: bool = True) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.metrics = metrics
        self.segmenter = segmenter if segmenter is not None else Segmenter(catalog)
        self.space = self.segmenter.space
        # the reward sweep's timing: [rewards] sweep_interval_seconds and grace_seconds unless given here
        self.sweep_interval_s = float(catalog.rewards.sweep_interval_seconds if sweep_interval_s is None
                                      else sweep_interval_s)
        if not self.sweep_interval_s > 0:
            raise ValueError(f"sweep_interval_s: must be > 0 (got {self.sweep_interval_s:g})")
        self.specs = tuple(step_specs(catalog))  # a tuple: eligible() remembers its channel map
        self.guardrails = guardrail_config(catalog)
        # Eligibility is computed without the consistency threshold; personalization_allowed() applies it
        # to personalized *decisions* (rules, bandit), so generic steps may show before it.
        self._eligibility = dataclasses.replace(self.guardrails, min_sessions_for_personalization=0,
                                                min_distinct_days_for_personalization=0)
        self._steps = {s.id: s for s in catalog.steps}
        self._core = catalog.core_order
        self._rules = catalog.rules_by_priority()
        self._window_ms = {s.id: int(round(s.reward_window_hours * HOUR_MS)) for s in catalog.steps}
        # how long a show counts for a cap (24 h), a cooldown or the min gap: untracked shows keep an id that long
        self.guard_horizon_ms = max([DAY_MS, self.guardrails.min_gap_ms, *(s.cooldown_ms for s in self.specs)])
        self.assigner = Assigner(catalog)
        self._assignments: dict[str, tuple[str, str, str]] = {}  # subject -> assignment(), bounded like the segment cache

        self.arms: tuple[str, ...] = tuple(s.id for s in catalog.personalized_steps)
        self.arm_index = {sid: i for i, sid in enumerate(self.arms)}
        b = catalog.bandit
        self._rng = np.random.default_rng(b.seed)
        self.decider: Decider | None = None
        if self.arms:
            policy = build_policy(b.algorithm, len(self.arms), self.space.dim, alpha=b.alpha, l2=b.l2, seed=b.seed,
                                  half_life=b.half_life_ms)
            exploration = build_exploration(b.exploration, epsilon=b.epsilon, gamma=b.gamma,
                                            max_exploration=catalog.guardrails.max_exploration)
            self.decider = Decider(policy, exploration, seed=b.seed)
        self.policy_version = f"{catalog.version}:{self.decider.version if self.decider else 'no-arms'}"
        self.learned = 0  # outcomes the bandit learned from

        keep = max([KEEP_PER_STEP, *(s.max_per_day + 1 for s in catalog.steps)])
        self.history = ShownHistory(keep=keep)
        self.logger = DecisionLogger(pipeline.writer)
        self.joiner = RewardJoiner(pipeline.writer, catalog, pipeline.pseudonym, self._learn, metrics,
                                   grace_ms=reward_grace_ms, aliases=self._anonymous_subjects)
        self._sweeper: asyncio.Task[None] | None = None
        self._segment_cache: dict[str, tuple[tuple[int, int, int, float], SegmentResult]] = {}
        self._unsettled_at_checkpoint: frozenset[str] = frozenset()  # see load_state / rebuild(after=...)
        # Relearning the segmenter after erasures (see _relearn_segmenter): erasures asked for, erasures whose
        # relearn finished, and the subjects learned live while a relearn runs (None when none runs).
        self._erasures_seen = 0
        self._erasures_relearned = 0
        self.relearns = 0  # relearns done (erasures sent together share one)
        self._relearn_lock = asyncio.Lock()
        self._learned_meanwhile: dict[str, int] | None = None
        self._relearn_profiles = False  # resumed from a checkpoint taken during a relearn: relearn at rebuild
        pipeline.add_listener(self.on_events)
        pipeline.add_erasure_listener(self.erased)
        pipeline.add_listener(self.on_identify)
        if rebuild:
            self.rebuild()

    # -- startup -------------------------------------------------------------------------------------------
    def rebuild(self, replay: bool = True, after: LogMark | None = None) -> dict[str, int]:
        """Rebuild shows, pending rewards and (``replay``) the bandit from the database, and let the
        segmenter learn each profile once. Returns counts of what was loaded.

        With ``after`` (resuming from a checkpoint, server/ops/state.py) the bandit and segmenter already hold
        everything up to that mark: only outcomes committed after it are learned, and each bandit decision
        logged after it (and not pending in the checkpoint) is decided again on its logged context and
        eligible set so the sampling RNG advances exactly as it did live (the draws a decision takes
        depend on the number of eligible arms only, not on the policy's state)."""
        reader = self.pipeline.store.reader()
        redrawn = 0
        try:
            shows = self.history.load(iter_shows(reader))
            pending = self.joiner.load(
                Pending(r.decision_id, r.user_pseudo, r.timestamp_ms, r.step_id, r.reward_deadline_ms,
                        self.space.vector(r.context) if r.context and r.step_id in self.arm_index else None)
                for r in pending_rows(reader))
            self._merge_linked(reader.all_links())
            replayed = 0
            if replay:
                rows = joined_rows(reader, self.arms, 0 if after is None else after.outcomes_rowid)
                for j in rows:
                    self._learn(j.step_id, self.space.vector(j.context), j.reward, j.timestamp_ms)
                    replayed += 1
            if replay and after is not None and self.decider is not None:
                drawn = self._unsettled_at_checkpoint
                for decision_id, context, eligible in bandit_decisions_after(reader, after.decisions_rowid, Reason.BANDIT):
                    arms = [self.arm_index[s] for s in eligible if s in self.arm_index]
                    if decision_id in drawn or not context or not arms or len(arms) != len(eligible):
                        continue
                    self.decider.decide(self.space.vector(context), arms, self._rng)
                    redrawn += 1
        finally:
            reader.close()
        self._unsettled_at_checkpoint = frozenset()
        if replay and (after is None or self._relearn_profiles):
            self._relearn_profiles = False
            for p in self.pipeline.profiles.in_subject_order():
                self.segmenter.learn_one(p, p.last_seen_ms)
        elif after is not None:  # users erased after the checkpoint: nothing derived from them stays cached
            profiles = self.pipeline.profiles
            for subject in [s for s in self._segment_cache if s not in profiles]:
                del self._segment_cache[subject]
            self.segmenter.retain(profiles)
        counts = {"shows": shows, "pending": pending, "replayed": replayed, "redrawn": redrawn}
        if any(counts.values()):
            log.info("decision engine rebuilt: %d shows, %d pending rewards, %d outcomes replayed, %d bandit "
                     "draws repeated", shows, pending, replayed, redrawn)
        return counts

    async def start(self) -> None:
        """Start the periodic reward sweep (its first run closes windows that passed while down)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="onramp-reward-sweep")

    async def stop(self) -> None:
        """Stop the sweep and wait for outcome writes in flight."""
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.joiner.drain()

    async def _sweep_loop(self) -> None:
        rounds = 0
        label_every = max(1, round(LABEL_SWEEP_S / self.sweep_interval_s))  # activation labels about once a minute
        while True:
            try:
                now = clock_ms()
                await self.joiner.sweep(now)
                if rounds % label_every == 0:
                    await self.forget_untracked_shows(now)
                    book = self.pipeline.profiles
                    self.segmenter.label_expired((p for s in book.subjects() if (p := book.get(s)) is not None), now)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep sweeping; the next round retries
                log.exception("reward sweep failed")
            rounds += 1
            await asyncio.sleep(self.sweep_interval_s)

    async def forget_untracked_shows(self, now_ms: int) -> int:
        """Take the pseudonym out of the logged shows of people without tracking consent once no cap,
        cooldown or gap counts them any more (:attr:`guard_horizon_ms`); returns rows changed."""
        before = now_ms - self.guard_horizon_ms
        return await self.pipeline.writer.call(lambda store: store.forget_untracked_shows(before))

    def erased(self, erasure: Erasure) -> Awaitable[None]:
        """Erasure listener (after the erasure committed): drop everything the engine holds about the person
        -- shows (so caps count from zero), pending rewards, the segment and assignment caches and the
        segmenter's marks -- and take them out of the models: the bandit unlearns each rewarded decision it
        learned from them (exactly), and the River models are rebuilt from the remaining profiles (returned
        awaitable; the pipeline's ``erase`` waits for it)."""
        keys = erasure.keys
        self._unlearn(erasure)
        for pseudo in keys.pseudonyms:
            self.history.forget(pseudo)
            self.joiner.forget_user(pseudo)
        for subject in keys.subjects:
            self._forget_subject(subject)
        self._erasures_seen += 1
        return self._relearn_segmenter(self._erasures_seen)

    @property
    def relearn_due(self) -> bool:
        """Whether an erasure committed whose relearn has not replaced the River models yet."""
        return self._erasures_seen > self._erasures_relearned

    def _unlearn(self, erasure: Erasure) -> int:
        """Remove from the bandit every rewarded decision of the erased person that it learned. One still
        pending here had its outcome committed but not learned yet (the joiner learns after commit, on this
        loop); dropping it from the joiner next means it is never learned. Returns how many were removed."""
        if self.decider is None:
            return 0
        n = 0
        for row in erasure.rewarded:
            arm = self.arm_index.get(row.step_id)
            if arm is None or row.decision_id in self.joiner:
                continue
            try:
                self.decider.unlearn_one(self.space.vector(row.context), arm, row.reward, row.timestamp_ms)
            except ValueError as exc:  # e.g. learning from it had failed: nothing to remove
                log.warning("could not unlearn an erased decision: %s", exc)
                continue
            self.learned -= 1
            n += 1
        return n

    async def _relearn_segmenter(self, erasures: int) -> None:
        """Replace the segmenter by a fresh one that learned each remaining profile once, in subject order (what
        a start without checkpoint does): River's scaler, K-Means and logistic regression cannot remove one
        person's updates. Runs on the loop in chunks so requests go on meanwhile (served by the old models);
        profiles that change meanwhile are learned again by the new models once they replace the old.
        Returns once a relearn that started after erasure number ``erasures`` committed has finished."""
        async with self._relearn_lock:
            if self._erasures_relearned >= erasures:
                return  # a relearn that started after this erasure has already finished
            target = self._erasures_seen
            fresh = Segmenter(self.catalog)
            self._learned_meanwhile = {}
            try:
                for i, p in enumerate(self.pipeline.profiles.in_subject_order()):
                    fresh.learn_one(p, p.last_seen_ms)
                    if i % RELEARN_CHUNK == RELEARN_CHUNK - 1:
                        await asyncio.sleep(0)
                meanwhile = self._learned_meanwhile
            finally:
                self._learned_meanwhile = None
            for subject, ts in meanwhile.items():
                p = self.pipeline.profile(subject)
                if p is not None:
                    fresh.learn_one(p, ts)
            self.segmenter = fresh
            self._segment_cache.clear()  # computed with the old models
            self._erasures_relearned = target
            self.relearns += 1

    def _forget_subject(self, subject: str) -> None:
        """Drop what is kept per subject outside its profile: segment and assignment cache, segmenter mark."""
        self._segment_cache.pop(subject, None)
        self._assignments.pop(subject, None)
        self.segmenter.forget(subject)

    def _anonymous_subjects(self, user_id: str) -> list[str]:
        """The anonymous subjects (``anon:<id>``) linked to ``user_id``."""
        return [ANON_PREFIX + link.alias for link in self.pipeline.identity.links_of(user_id)
                if link.alias_kind == ANONYMOUS_ID]

    def on_identify(self, events: list[StoredEvent]) -> None:
        """Pipeline listener: when visitors are identified, their shows count as the user's (caps, cooldowns,
        gaps) and what was kept per visitor (segment and assignment cache, segmenter mark) goes with their
        merged profile."""
        for ev in events:
            if ev.name == IDENTIFY and ev.user_id:
                into = self.pipeline.pseudonym(ev.user_id)
                for subject in self._anonymous_subjects(ev.user_id):
                    self.history.merge(self.pipeline.pseudonym(subject), into)
                    self._forget_subject(subject)

    def _merge_linked(self, links: Iterable[LinkRow]) -> None:
        """At startup: the shows and pending rewards of each linked visitor (logged under the visitor's
        pseudonym) go to the user it is linked to now, as :meth:`on_identify` did live."""
        pseudonym, history, joiner = self.pipeline.pseudonym, self.history, self.joiner
        for link in links:
            if link.alias_kind == ANONYMOUS_ID:
                alias = pseudonym(ANON_PREFIX + link.alias)
                if history.of(alias) or joiner.has_user(alias):  # one keyed hash per link when nothing moves
                    user = pseudonym(link.user_id)
                    history.merge(alias, user)
                    joiner.merge_user(alias, user)

    # -- learning ------------------------------------------------------------------------------------------
    def _learn(self, step_id: str, x: np.ndarray | None, reward: float, timestamp_ms: int) -> None:
        """Pass one joined outcome to the bandit (only personalized steps with a logged context), at the time
        of its decision."""
        arm = self.arm_index.get(step_id)
        if arm is None or x is None or self.decider is None:
            return
        self.decider.learn_one(x, arm, reward, timestamp_ms)
        self.learned += 1

    def on_events(self, events: list[StoredEvent]) -> None:
        """Pipeline listener (after each commit): join rewards, and let the segmenter learn each changed
        profile once."""
        self.joiner.on_events(events)
        latest: dict[str, int] = {}
        last = latest.get
        for ev in events:
            ts, subject = ev.timestamp_ms, ev.subject
            if ts > last(subject, -1):
                latest[subject] = ts
        profile = self.pipeline.profiles.get
        learn = self.segmenter.learn_one
        meanwhile = self._learned_meanwhile
        for subject, ts in latest.items():
            p = profile(subject)
            if p is not None:
                learn(p, ts)
                if meanwhile is not None:
                    meanwhile[subject] = ts

    def enrich(self, profile: Profile, now_ms: int) -> tuple[list[str], dict[str, float]]:
        """The ``ProfileEnricher`` hook of GetUserProfile: the segmenter's segments and context features."""
        return self.segmenter.enrich(profile, now_ms)

    # -- deciding ------------------------------------------------------------------------------------------
    def assignment(self, subject: str) -> tuple[str, str, str]:
        """(experiment, arm name, arm kind) of ``subject`` (server/base/experiments.py); ("", "", "tailored")
        without an enabled experiment."""
        hit = self._assignments.get(subject)
        if hit is not None:
            return hit
        a = self.assigner.assignment(subject)
        found = ("", "", TAILORED) if a is None else (a.experiment, a.arm, a.kind)
        if len(self._assignments) >= SEGMENT_CACHE_SIZE:
            self._assignments.clear()
        self._assignments[subject] = found  # deterministic for a catalog: a SHA-256 per request spared
        return found

    def choose(self, subject: str, surface: str, request_context: Mapping[str, str], now_ms: int) -> Choice:
        """Decide for one request (synchronous, no I/O): the decision to log, the segments and the context
        vector. The show is not recorded here (see :meth:`next_step`)."""
        pipeline = self.pipeline
        pseudo = pipeline.pseudonym(subject)
        consent = pipeline.consent
        personal = consent.granted(subject, PERSONALIZATION)
        # Without tracking consent (never given, withdrawn, or erased since) no reward is waited for, and the
        # row keeps the pseudonym only if it shows a step, for the caps, until forget_untracked_shows.
        tracked = consent.tracking_gate(subject, pipeline.pseudonym) is None
        profile = pipeline.profile(subject)  # None without tracking consent: no event of it is stored
        experiment, arm, arm_kind = self.assignment(subject)
        shown = self.history.of(pseudo)
        if profile is None:
            hist = UserHistory(shown=shown)
            segments: list[str] = []
            context: dict[str, float] = {}
            x = None
        else:
            hist = UserHistory(shown=shown, completed=profile.steps_completed, dismissed=profile.steps_dismissed,
                               sessions=profile.sessions, distinct_days=distinct_days(profile.session_starts_ms))
            seg = self.segments_of(subject, profile, now_ms, request_context)
            segments, context, x = seg.segments, seg.features, seg.vector
        el = eligible(self.specs, hist, self._eligibility, now_ms, surface or None)
        allowed = el.eligible

        def decision(step_id: str, reason: str, candidates: list[str], probabilities: dict[str, float],
                     propensity: float = 1.0) -> Decision:
            deadline = now_ms + self._window_ms[step_id] if step_id and tracked else 0
            return Decision(new_decision_id(), pseudo if tracked or step_id else ANONYMOUS_ROW, now_ms, surface,
                            step_id, propensity, str(reason),  # a plain str in the row (Reason is a StrEnum)
                            self.policy_version, experiment, arm, context, candidates, probabilities, deadline)

        def nothing(reason: str) -> Choice:  # no action: no context to learn from or evaluate, none logged
            d = decision("", reason, [], {})
            d.context = {}
            return Choice(d, segments, x, pseudo)

        def deterministic(step_id: str, reason: str, candidates: list[str]) -> Choice:
            probs = {s: (1.0 if s == step_id else 0.0) for s in candidates}
            return Choice(decision(step_id, reason, candidates, probs), segments, x, pseudo)

        # 1-2. the static core flow first, in order, until every core step is completed
        for core_id in self._core:
            if core_id in hist.completed:
                continue
            if core_id in allowed:
                return deterministic(core_id, Reason.CORE if personal else Reason.NO_CONSENT, [core_id])
            return nothing(Reason.CAPPED if _temporary(el.blocked.get(core_id, "")) else Reason.NONE_ELIGIBLE)
        if not personal:
            return nothing(Reason.NO_CONSENT)
        candidates = [s for s in allowed if s in self.arm_index]
        if not candidates:
            blocked = el.blocked
            capped = any(_temporary(blocked.get(s, "")) for s in self.arms)
            return nothing(Reason.CAPPED if capped else Reason.NONE_ELIGIBLE)
        # 3. experiment arms, rules, bandit, generic order
        if arm_kind == HOLDOUT_ARM:
            return nothing(Reason.HOLDOUT)
        if arm_kind == TAILORED and profile is not None and personalization_allowed(hist, self.guardrails):
            fired = first_firing(self._rules, profile, candidates, now_ms)
            if fired is not None:
                return deterministic(fired.step_id, fired.reason, candidates)
            if self.decider is not None and x is not None:
                c = self.decider.decide(x, [self.arm_index[s] for s in candidates], self._rng)
                arms = self.arms
                probs = {arms[a]: p for a, p in c.probabilities.items()}
                return Choice(decision(arms[c.arm], Reason.BANDIT, candidates, probs, c.probability), segments, x, pseudo)
        return deterministic(self.generic_pick(candidates, shown), Reason.GENERIC, candidates)

    def segments_of(self, subject: str, profile: Profile, now_ms: int,
                    request_context: Mapping[str, str]) -> SegmentResult:
        """The segmenter's result for a user now, reused while the profile, the minute of ``now_ms`` and the
        request's device class stay the same (repeated requests within a minute see one context)."""
        key = (profile.event_count, profile.last_seen_ms, now_ms // SEGMENT_CACHE_MS, request_mobile(request_context))
        hit = self._segment_cache.get(subject)
        if hit is not None and hit[0] == key:
            return hit[1]
        seg = self.segmenter.predict_one(profile, now_ms, request_context)
        cache = self._segment_cache
        if len(cache) >= SEGMENT_CACHE_SIZE:
            cache.clear()
        cache[subject] = (key, seg)
        return seg

    @staticmethod
    def generic_pick(candidates: list[str], shown: Mapping[str, list[int]]) -> str:
        """The generic default order: the first candidate (catalog order) never shown, else the first."""
        for s in candidates:
            if s not in shown:
                return s
        return candidates[0]

    async def next_step(self, subject: str, surface: str, context: Mapping[str, str], now_ms: int) -> NextStep:
        """Choose, count the show, log the decision (committed before the answer) and answer."""
        c = self.choose(subject, surface, context, now_ms)
        d = c.decision
        step_id = d.step_id
        waits = d.reward_deadline_ms > 0  # a step shown to a user with tracking consent
        if step_id:
            # Counted before the write is awaited, so concurrent requests of this user see the show.
            self.history.record(c.pseudo, step_id, now_ms)
        if waits:
            self.joiner.add(Pending(d.decision_id, d.user_pseudo, now_ms, step_id, d.reward_deadline_ms,
                                    c.x if step_id in self.arm_index else None))
        try:
            await self.logger.log(d)
        except BaseException:
            if step_id:
                self.history.unrecord(c.pseudo, step_id, now_ms)
                self.joiner.discard(d.decision_id)
            raise
        if self.metrics is not None:
            self.metrics.record_decision(reason=d.reason, step=step_id)
        return NextStep(d.decision_id, self._steps[step_id] if step_id else None, d.propensity, d.reason,
                        d.policy_version, d.experiment, d.arm, c.segments)

    async def report_outcome(self, decision_id: str, reward: float, outcome: str, now_ms: int) -> bool:
        """Record the first outcome of a decision (then the bandit learns): True; later ones are duplicates:
        False."""
        recorded = await self.joiner.report(decision_id, reward, outcome, now_ms)
        if recorded is None:
            raise ServiceError.not_found("decision_id", f"no decision {decision_id!r} was logged "
                                                        "(use the decision_id of a GetNextStep answer)")
        return recorded

    # -- state ---------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The learned state (bandit policy, sampling RNG, segmenter, segment cache) as plain values for a
        checkpoint, plus the ids of the step-showing decisions not rewarded yet (a bandit decision among
        them has drawn from the RNG, maybe before its row was committed: see server/ops/state.py)."""
        return {
            "format": STATE_FORMAT,
            "policy_version": self.policy_version,
            "arms": list(self.arms),
            "features": list(self.space.names),
            "policy": self.decider.policy.to_state() if self.decider is not None else None,
            "rng": self._rng.bit_generator.state,
            "learned": self.learned,
            # None from an erasure's commit until its relearn replaced the models (they may still hold the
            # erased person), so a resume from this checkpoint relearns them from the profiles instead
            "segmenter": None if self.relearn_due else self.segmenter.to_state(),
            "segment_cache": dict(self._segment_cache),
            # pending decisions with a context: the ones a bandit draw may be behind (the joiner's own index)
            "unsettled": [d for d, p in self.joiner._pending.items() if p.x is not None],
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`to_state` output. ValueError (and nothing changed) when it was made for another
        catalog or bandit."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"engine state: unknown format {state.get('format')!r}")
        if state.get("policy_version") != self.policy_version or list(state.get("arms", ())) != list(self.arms) \
                or list(state.get("features", ())) != list(self.space.names):
            raise ValueError(f"engine state was made for policy {state.get('policy_version')!r}, "
                             f"this engine runs {self.policy_version!r}")
        policy = policy_from_state(state["policy"]) if self.decider is not None and state.get("policy") is not None \
            else None
        relearn = state.get("segmenter") is None
        segmenter = Segmenter(self.catalog) if relearn else Segmenter.from_state(state["segmenter"], self.catalog)
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        if policy is not None and self.decider is not None:
            self.decider.policy = policy
        self._rng = rng
        self.learned = int(state.get("learned", 0))
        self.segmenter = segmenter
        self._relearn_profiles = relearn
        self._segment_cache = {} if relearn else dict(state.get("segment_cache", {}))
        self._unsettled_at_checkpoint = frozenset(state.get("unsettled", ()))
        self.space = self.segmenter.space

    @classmethod
    def from_state(cls, state: Mapping[str, Any], pipeline: Pipeline, catalog: Catalog,
                   **kwargs: Any) -> DecisionEngine:
        """An engine whose bandit and segmenter come from a checkpoint (shows and pending rewards are still
        rebuilt from the database; the outcome replay is skipped)."""
        engine = cls(pipeline, catalog, rebuild=False, **kwargs)
        engine.load_state(state)
        engine.rebuild(replay=False)
        return engine
