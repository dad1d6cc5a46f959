"""The decision engine behind GetNextStep and ReportOutcome: guardrails first, then the static core flow,
the seed's rule triggers, and a contextual bandit with exact propensities; every answer is logged before it is
sent. The engine holds no state that cannot be lost: a user's profile and shown history are read from the store
for each decision, and the models come from the latest snapshot the learner published
(server/learn/learner.py), named in each decision's ``policy_version``.

How one step is chosen (see docs/decisions.md):

1. the guardrails decide which steps may be shown now (never a completed step, prerequisites, surface,
   cooldowns, per-step / per-channel / total daily caps, min gap) -- before any probability;
2. core steps come first, in their static order, until all are completed (``core``, or ``no_consent``
   when the user has not granted personalization; such users get core steps only);
3. after the core flow, per experiment arm: ``holdout`` gets no personalized step (``holdout``), ``generic``
   gets the generic order (``generic``); ``tailored`` gets, once the user showed consistent behavior (N
   sessions on M days), the first firing rule's step when it forces (``rule:<name>``), the bandit's draw
   with a proposing rule's step boosted (``boosted:<name>:<step>``; rules the learner demoted are skipped),
   or else the bandit (``bandit``), and the generic order before that;
4. nothing allowed -> no step (``capped`` when a cap/cooldown/gap blocks, else ``none_eligible``).

Caps hold across workers: a decision that shows a step is logged only if the person's shown history is still
at the version it was decided on; otherwise it is decided again on the fresh history.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bandits.exploration import Decider, sample
from bandits.guardrails import GuardrailConfig, StepSpec, UserHistory, eligible, personalization_allowed
from bandits.policies import policy_from_state
from server.base.catalog import Catalog
from server.base.clock import HOUR_MS
from server.base.experiments import Assigner
from server.base.ids import new_decision_id
from server.base.metrics import Metrics
from server.base.reasons import Reason
from server.decide.engine_api import NextStep, ServiceError
from server.decide.rules import first_firing
from server.ingest.consent import PERSONALIZATION, TRACKING
from server.ingest.pipeline import Erasure, Pipeline
from server.ingest.profiles import Profile, decode_profile
from server.learn.features import request_mobile
from server.learn.rewards import REPORTED, Outcome, write_outcomes
from server.learn.segment_model import SegmentPredictor, SegmentResult, distinct_days
from server.learn.snapshot import UnusableSnapshot, build_decider, guard_horizon_ms, read_snapshot
from server.store.decision_logger import ANONYMOUS_ROW, Decision, DecisionLogger, json_column
from server.store.rows import NO_SHOWS, LoggedDecision, Shows, latest_show, with_show

log = logging.getLogger(__name__)

SEGMENT_CACHE_MS = 60_000  # a user's segments/context are recomputed at least once a minute ...
SEGMENT_CACHE_SIZE = 100_000  # ... for at most this many recent users
PROFILE_CACHE_SIZE = 10_000  # decoded profiles kept (by stored body) for the most recent users (~2 KB each)
SNAPSHOT_POLL_S = 0.1  # how often a worker looks for a newer model snapshot
ERASE_WAIT_S = 30.0  # how long EraseUser waits for the learner to publish models without the person
MAX_ATTEMPTS = 8  # decisions of one user decided again at most this often when another show got in first
KEEP_PER_STEP = 16  # show times kept per (person, step); caps only need the latest max_per_day of them
MAX_KEEP = 256  # ... and at most this many (a per-step daily cap above 255 counts the latest 256 shows)

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
    history: Shows = NO_SHOWS  # the shown history it was decided on
    tracked: bool = True


@dataclass(slots=True)
class _Context:
    """A user's segment cache entry (see :meth:`DecisionEngine._segments_and_context`): the segments from the snapshot's
    models, its context features as the decision row's JSON text, and the bandit's scores of every arm for its vector
    (worked out at the first bandit decision; the cache is cleared when a new snapshot is loaded)."""

    key: tuple[int, int, int, float]
    result: SegmentResult
    context: str
    scores: list[float] | None = None
    # (eligible steps, boosted arm and beta) -> the bandit's distribution over them with the logged JSON columns;
    # made from ``scores``, so it is exact for this context and snapshot (a few entries: a person's candidates)
    draws: dict[tuple[tuple[str, ...], tuple[int, float] | None], _Draw] | None = None


@dataclass(frozen=True, slots=True)
class _Draw:
    """The bandit's distribution over one set of eligible steps for one cached context (see :class:`_Context`):
    the arms and their exact probabilities, and the row's ``eligible`` and ``probabilities`` columns as JSON."""

    arms: list[int]
    probabilities: list[float]
    eligible_json: str
    probabilities_json: str


@dataclass(frozen=True, slots=True)
class _Known:
    """A person's profile as last decoded by this worker, with the stored body it was decoded from: handed out
    again only against that exact body (any write, by any process, stores another), with the values derived from
    it once (the guardrails' distinct active days)."""

    body: str
    profile: Profile
    distinct_days: int


class DecisionEngine:
    """Implements :class:`server.decide.engine_api.DecisionService` (and the ``ProfileEnricher`` hook) over the
    store and the learner's snapshots; see the module docstring."""

    def __init__(self, pipeline: Pipeline, catalog: Catalog, *, metrics: Metrics | None = None,
                 snapshot_poll_s: float = SNAPSHOT_POLL_S) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.metrics = metrics
        self.snapshot_poll_s = snapshot_poll_s
        self.segments = SegmentPredictor(catalog)  # untrained models until the first snapshot
        self.space = self.segments.space
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
        self.guard_horizon_ms = guard_horizon_ms(catalog)
        self.assigner = Assigner(catalog)
        self._assignments: dict[str, tuple[str, str, str]] = {}  # subject -> assignment(), bounded like the segment cache

        self.arms: tuple[str, ...] = tuple(s.id for s in catalog.personalized_steps)
        self.arm_index = {sid: i for i, sid in enumerate(self.arms)}
        self._rng = np.random.default_rng(catalog.bandit.seed)
        self.decider: Decider | None = build_decider(catalog, self.space.dim)
        self._base_version = f"{catalog.version}:{self.decider.version if self.decider else 'no-arms'}"
        self.snapshot_version = 0
        self.snapshot_positions: dict[str, int] = {}
        self.learned = 0  # outcomes the loaded snapshot's bandit learned from
        self.demoted_rules: frozenset[str] = frozenset()  # proposing rules the learner demoted (no longer boost)
        self.policy_version = f"{self._base_version}@0"
        self.keep = min(MAX_KEEP, max([KEEP_PER_STEP, *(s.max_per_day + 1 for s in catalog.steps)]))
        self._user_locks: dict[str, asyncio.Lock] = {}
        pipeline.show_keep = self.keep
        self.logger = DecisionLogger(pipeline.writer)
        self._reader = pipeline.store.reader()
        self._poller: asyncio.Task[None] | None = None
        self._segment_cache: dict[str, _Context] = {}
        self._profiles: dict[str, _Known] = {}  # subject -> its profile as last decoded (see _profile)
        self.conflicts = 0  # decisions decided again because another one showed the person something first
        pipeline.add_erasure_listener(self.erased)
        self.load_snapshot()

    # -- snapshots -----------------------------------------------------------------------------------------
    def load_snapshot(self) -> bool:
        """Load the newest published snapshot if it is newer than the one in use; returns whether it changed."""
        version = self._reader.latest_snapshot_version()
        if version <= self.snapshot_version:
            return False
        snap = self._reader.latest_snapshot()
        if snap is None:
            return False
        try:
            models = read_snapshot(snap.body, self.catalog, self.arms, self.space.names)
        except UnusableSnapshot as exc:
            log.warning("model snapshot %d %s; deciding with the models in use (version %d) until the learner "
                        "publishes its next", snap.version, exc, self.snapshot_version)
            self.snapshot_version = snap.version
            return False
        erased_since = snap.positions.get("unlearn", 0) > self.snapshot_positions.get("unlearn", 0)
        self.segments = SegmentPredictor(self.catalog, models.segments)
        if self.decider is not None and models.policy is not None:
            self.decider.policy = policy_from_state(models.policy)
        self.learned = models.learned
        self.demoted_rules = models.demoted_rules
        self.snapshot_version = snap.version
        self.snapshot_positions = snap.positions
        self.policy_version = f"{self._base_version}@{snap.version}"
        self._segment_cache.clear()  # computed with the old models
        if erased_since:  # the learner took an erasure in, done by this worker or another: forget everyone held
            self._forget_people()
        return True

    def _forget_people(self) -> None:
        """Drop every person this worker holds in memory: an erasure committed by another process named people
        whose raw ids, profiles or contexts may be cached here (which ones is not known here). Run when a
        snapshot includes a newer erasure, so at most a learner round and a snapshot poll after the commit."""
        self._segment_cache.clear()
        self._profiles.clear()
        self._assignments.clear()
        self._reopen_reader()
        self.pipeline.forget_people()

    async def start(self) -> None:
        """Start loading new snapshots as the learner publishes them."""
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="onramp-snapshot-poll")

    async def stop(self) -> None:
        task, self._poller = self._poller, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reader.close()

    async def _poll(self) -> None:
        while True:
            try:
                self.load_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the models in use; retry next time
                log.exception("loading a model snapshot failed")
            await asyncio.sleep(self.snapshot_poll_s)

    def erased(self, erasure: Erasure) -> Awaitable[None]:
        """Erasure listener (after the erasure committed): drop the caches that may hold the person, then wait
        until the learner published models without them (the returned awaitable; ``EraseUser`` answers after)."""
        for subject in erasure.keys.subjects:
            self._segment_cache.pop(subject, None)
            self._profiles.pop(subject, None)
            self._assignments.pop(subject, None)
        self._reopen_reader()
        return self._wait_unlearned(erasure.unlearning_id)

    def _reopen_reader(self) -> None:
        """A new read connection after an erasure: the old one's page cache held the person's rows."""
        self._reader.close()
        self._reader = self.pipeline.store.reader()

    async def _wait_unlearned(self, unlearning_id: int, timeout_s: float = ERASE_WAIT_S) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.snapshot_positions.get("unlearn", 0) < unlearning_id:
            self.load_snapshot()
            if self.snapshot_positions.get("unlearn", 0) >= unlearning_id:
                break
            if asyncio.get_running_loop().time() > deadline:
                log.warning("erasure committed, but the learner has not published models without the person "
                            "within %.0f s; they are taken out when it catches up", timeout_s)
                return
            await asyncio.sleep(0.02)

    def enrich(self, profile: Profile, now_ms: int) -> tuple[list[str], dict[str, float]]:
        """The ``ProfileEnricher`` hook of GetUserProfile: the segments and context features of the snapshot's
        models."""
        return self.segments.enrich(profile, now_ms)

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
        inputs = self._reader.decision_inputs(pseudo, subject)  # shown history, profile and consent at one point
        history = inputs.shows
        # the current records, read with the rest (what ConsentBook.granted and .tracking_gate would answer from
        # them; no tombstone read: erased or never given, either way not tracked)
        personal = tracked = False
        for record in inputs.consents:
            if record.purpose == PERSONALIZATION:
                personal = record.granted
            elif record.purpose == TRACKING:
                tracked = record.granted
        # Without tracking consent (never given, withdrawn, or erased since) no reward is waited for, and the
        # row keeps the pseudonym only if it shows a step, for the caps, until forget_untracked_shows.
        # None without tracking consent: no event of it is stored
        known = None if inputs.profile_body is None else self._profile(subject, inputs.profile_body)
        experiment, arm, arm_kind = self.assignment(subject)
        shown = history.shows
        if known is None:
            profile = None
            hist = UserHistory(shown=shown, ascending=True)  # a stored history's times are ascending
            segments: list[str] = []
            context: dict[str, float] | str = {}
            x = None
        else:
            profile = known.profile
            hist = UserHistory(shown=shown, completed=profile.steps_completed, dismissed=profile.steps_dismissed,
                               sessions=profile.sessions, distinct_days=known.distinct_days, ascending=True)
            cached = self._segments_and_context(subject, profile, now_ms, request_context)
            seg, context = cached.result, cached.context
            segments, x = seg.segments, seg.vector
        el = eligible(self.specs, hist, self._eligibility, now_ms, surface or None)
        allowed = el.eligible

        def decision(step_id: str, reason: str, candidates: list[str] | str, probabilities: dict[str, float] | str,
                     propensity: float = 1.0) -> Decision:
            deadline = now_ms + self._window_ms[step_id] if step_id and tracked else 0
            return Decision(new_decision_id(), pseudo if tracked or step_id else ANONYMOUS_ROW, now_ms, surface,
                            step_id, propensity, str(reason),  # a plain str in the row (Reason is a StrEnum)
                            self.policy_version, experiment, arm, context, candidates, probabilities, deadline)

        def nothing(reason: str) -> Choice:  # no action: no context to learn from or evaluate, none logged
            d = decision("", reason, [], {})
            d.context = {}
            return Choice(d, segments, x, pseudo, history, tracked)

        def deterministic(step_id: str, reason: str, candidates: list[str]) -> Choice:
            probs = {s: (1.0 if s == step_id else 0.0) for s in candidates}
            return Choice(decision(step_id, reason, candidates, probs), segments, x, pseudo, history, tracked)

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
            fired = first_firing(self._rules, profile, candidates, now_ms, self.demoted_rules)
            if fired is not None and not fired.proposes:
                return deterministic(fired.step_id, fired.reason, candidates)
            if self.decider is not None and x is not None:
                # a proposing rule's step is boosted inside the bandit's distribution (docs/decisions.md)
                boosted = None if fired is None else (self.arm_index[fired.step_id], fired.boost)
                if cached.scores is None:  # scored once per cached context and snapshot (cleared with it)
                    cached.scores = self.decider.all_scores(x)
                reason = Reason.BANDIT if fired is None else fired.reason
                arms = self.arms
                if cached.scores is not None:  # deterministic scores: the distribution too, per eligible set
                    draw = self._draw(cached, candidates, boosted)
                    probs_list = draw.probabilities
                    i = sample(probs_list, self._rng) if len(probs_list) > 1 else 0  # as Decider.decide draws
                    return Choice(decision(arms[draw.arms[i]], reason, draw.eligible_json, draw.probabilities_json,
                                           probs_list[i]), segments, x, pseudo, history, tracked)
                c = self.decider.decide(x, [self.arm_index[s] for s in candidates], self._rng, boosted)
                probs = {arms[a]: p for a, p in c.probabilities.items()}
                return Choice(decision(arms[c.arm], reason, candidates, probs, c.probability), segments, x,
                              pseudo, history, tracked)
        return deterministic(self.generic_pick(candidates, shown), Reason.GENERIC, candidates)

    def _profile(self, subject: str, body: str) -> _Known:
        """The profile of ``subject`` stored as ``body``: decoded once per stored body (a person asked for again
        before any event of theirs changed it costs a string comparison), the entry replaced by any other body,
        and dropped with the person on an erasure (see :meth:`erased`, :meth:`_forget_people`)."""
        hit = self._profiles.get(subject)
        if hit is not None and hit.body == body:
            return hit
        profile = decode_profile(subject, body)
        known = _Known(body, profile, distinct_days(profile.session_starts_ms))
        if len(self._profiles) >= PROFILE_CACHE_SIZE:
            self._profiles.clear()
        self._profiles[subject] = known
        return known

    def _draw(self, cached: _Context, candidates: list[str], boosted: tuple[int, float] | None) -> _Draw:
        """The bandit's distribution over ``candidates`` (boosted toward ``boosted``) for the cached context's scores,
        worked out once per eligible set while the context and snapshot hold (the same numbers each time: the
        logged propensities stay exact), with the row's JSON columns encoded once."""
        key = (tuple(candidates), boosted)
        draws = cached.draws
        if draws is None:
            draws = cached.draws = {}
        hit = draws.get(key)
        if hit is not None:
            return hit
        arm_index, names = self.arm_index, self.arms
        arms, probs = self.decider.distribution([arm_index[s] for s in candidates], boosted, cached.scores)
        draw = _Draw(arms, probs, json_column(candidates),
                     json_column({names[a]: p for a, p in zip(arms, probs)}))
        if len(draws) >= 16:  # a person's eligible sets change slowly; bound it anyway
            draws.clear()
        draws[key] = draw
        return draw

    def _segments_and_context(self, subject: str, profile: Profile, now_ms: int,
                              request_context: Mapping[str, str]) -> _Context:
        """The segments and context of a user now (the snapshot's models), reused while the profile, the minute of
        ``now_ms`` and the request's device class stay the same (repeated requests within a minute see one context),
        with what is worked out once per cached result rather than once per decision."""
        key = (profile.event_count, profile.last_seen_ms, now_ms // SEGMENT_CACHE_MS, request_mobile(request_context))
        hit = self._segment_cache.get(subject)
        if hit is not None and hit.key == key:
            return hit
        seg = self.segments.predict_one(profile, now_ms, request_context)
        entry = _Context(key, seg, json_column(seg.features))
        cache = self._segment_cache
        if len(cache) >= SEGMENT_CACHE_SIZE:
            cache.clear()
        cache[subject] = entry
        return entry

    @staticmethod
    def generic_pick(candidates: list[str], shown: Mapping[str, Sequence[int]]) -> str:
        """The generic default order: the first candidate (catalog order) never shown, else the first."""
        for s in candidates:
            if s not in shown:
                return s
        return candidates[0]

    async def next_step(self, subject: str, surface: str, context: Mapping[str, str], now_ms: int) -> NextStep:
        """Choose, log the decision (committed before the answer; a show only if the person's shown history did
        not change meanwhile, else decide again) and answer."""
        pseudo = self.pipeline.pseudonym(subject)
        lock = self._user_locks.get(pseudo)
        if lock is None:
            lock = self._user_locks[pseudo] = asyncio.Lock()
        try:
            async with lock:  # one decision of a person at a time in this worker; other workers: the version check
                return await self._decide(subject, surface, context, now_ms)
        finally:
            if not lock.locked() and not lock._waiters:  # noqa: SLF001 - drop idle locks
                self._user_locks.pop(pseudo, None)

    async def _decide(self, subject: str, surface: str, context: Mapping[str, str], now_ms: int) -> NextStep:
        for _attempt in range(MAX_ATTEMPTS):
            c = self.choose(subject, surface, context, now_ms)
            d = c.decision
            step_id = d.step_id
            row, feed = d.flat(), d.reward_deadline_ms > 0  # the row's JSON is encoded once
            item = LoggedDecision(row, feed=feed) if not step_id else LoggedDecision(
                row, c.pseudo, c.history.version, with_show(c.history.shows, step_id, now_ms, self.keep), c.tracked,
                feed=feed)
            if await self.logger.log(item):
                break
            self.conflicts += 1
            # decided again, later: a show logged meanwhile by another worker is not in this decision's future
            now_ms = max(now_ms, latest_show(self._reader.read_shows(c.pseudo).shows))
        else:
            raise ServiceError("ABORTED", "user_id", f"this user's shown history changed {MAX_ATTEMPTS} times while "
                                                     "deciding (many concurrent GetNextStep calls for one user); retry")
        if self.metrics is not None:
            self.metrics.record_decision(reason=d.reason, step=step_id)
        return NextStep(d.decision_id, self._steps[step_id] if step_id else None, d.propensity, d.reason,
                        d.policy_version, d.experiment, d.arm, c.segments)

    async def report_outcome(self, decision_id: str, reward: float, outcome: str, now_ms: int) -> bool:
        """Record the first outcome of a decision (the learner then learns it): True; later ones are
        duplicates: False."""
        recorded = (await self.pipeline.writer.call(
            lambda store: write_outcomes(store, [Outcome(decision_id, float(reward), REPORTED, outcome, now_ms)])))[0]
        if recorded is None:
            raise ServiceError.not_found("decision_id", f"no decision {decision_id!r} was logged "
                                                        "(use the decision_id of a GetNextStep answer)")
        if recorded and self.metrics is not None:
            self.metrics.record_reward(source=REPORTED, reward=reward)
        return recorded
