"""Synthetic Onramp databases with known properties, for tests and benchmarks of the offline tools.

:func:`generate_decision_log` writes a decision log (decisions + outcomes) whose logging policy has known
probabilities over :class:`bandits.simulator.OnboardingSimulator` users with known reward probabilities,
so the true value of any target policy is known (:meth:`LogTruth.value`). :func:`generate_population`
writes a whole product's worth of users (events, decisions, outcomes, tombstones) with known step
completion rates, retention, time to first value, survey scores and experiment effects.

Both use the server's own schema (:class:`server.store.sqlite.SqliteStore`) and pseudonyms
(:class:`server.store.privacy.Pseudonymizer` with its key in the key file beside the database, its fingerprint in
``meta``), so what they write is what a real server writes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bandits.simulator import OnboardingSimulator
from server.base.catalog import Catalog, load_catalog
from server.base.config import PrivacyConfig
from server.base.experiments import Assigner
from server.base.records import StoredEvent
from server.offline.common import DAY_MS, HOUR_MS, generic_order
from server.store.privacy import META_FINGERPRINT, Pseudonymizer
from server.store.pseudonym_key import create_key_file
from server.store.sqlite import DECISION_COLUMNS, OUTCOME_COLUMNS, SqliteStore

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE_MS = 60_000
SYNTH_KEY_HEX = "5e" * 32  # fixed pseudonym key of synthetic databases (tests recompute pseudonyms with it)
CORE_REWARD = 0.6  # success probability of every forced core/no-consent round in the decision log

_INSERT_DECISION = f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) VALUES ({', '.join('?' * len(DECISION_COLUMNS))})"
_INSERT_OUTCOME = f"INSERT INTO outcomes ({', '.join(OUTCOME_COLUMNS)}) VALUES ({', '.join('?' * len(OUTCOME_COLUMNS))})"


def synth_pseudonymizer() -> Pseudonymizer:
    """The pseudonymizer of every synthetic database (its key is in the key file beside it too)."""
    return Pseudonymizer(bytes.fromhex(SYNTH_KEY_HEX))


def _open(path: str | Path) -> SqliteStore:
    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p}: refusing to overwrite an existing file")
    create_key_file(Path(PrivacyConfig().key_file(str(p))), bytes.fromhex(SYNTH_KEY_HEX))
    store = SqliteStore(p, synchronous="off")
    store.meta_set(META_FINGERPRINT, synth_pseudonymizer().fingerprint)
    return store


def _float_json(names: list[str]) -> str:
    """A %-format string that renders one context row as a JSON object (fast: no json.dumps per row)."""
    return "{" + ",".join(f'"{n}":%.6g' for n in names) + "}"


# ----------------------------------------------------------------------------------- decision log
@dataclass
class LogTruth:
    """What generated a decision log: per decision (in ``decision_ids`` order = time order) the true
    success probability of every action, the logging distribution and the round's reason."""

    action_ids: tuple[str, ...]
    decision_ids: np.ndarray
    reasons: np.ndarray
    reward_probs: np.ndarray  # (n, K)
    logging_dist: np.ndarray  # (n, K) (rows of rounds without a step are 0)
    has_step: np.ndarray  # (n,) bool
    has_outcome: np.ndarray  # (n,) bool
    sim: OnboardingSimulator
    feature_names: tuple[str, ...]

    def value(self, action_dist: np.ndarray, rows: np.ndarray | None = None) -> float:
        """True expected reward per round of a policy with ``action_dist`` (len(rows), K) on ``rows``
        (default: every round with a step and an outcome)."""
        rows = np.flatnonzero(self.has_step & self.has_outcome) if rows is None else rows
        return float(np.mean(np.sum(self.reward_probs[rows] * action_dist, axis=1)))

    def rows_of(self, decision_ids: np.ndarray) -> np.ndarray:
        """Row numbers of ``decision_ids`` in the truth arrays."""
        index = {d: i for i, d in enumerate(self.decision_ids.tolist())}
        return np.array([index[d] for d in np.asarray(decision_ids).tolist()], dtype=np.intp)


def generate_decision_log(path: str | Path, n_decisions: int = 20_000, *, seed: int = 0, n_features: int = 8,
                          epsilon: float = 0.3, n_users: int | None = None, shares: dict[str, float] | None = None,
                          missing_outcome_share: float = 0.03, catalog: Catalog | None = None,
                          wide_rule_eligible: bool = True, eligible_share: float = 0.75, context: str = "noisy",
                          batch: int = 200_000) -> LogTruth:
    """Write ``n_decisions`` decisions (with outcomes) to a new database at ``path`` and return the truth.

    Round kinds (``shares``): ``bandit`` (epsilon-greedy over a fixed linear scorer on a random eligible
    subset of the personalized steps: exact, known probabilities), ``core`` and ``no_consent`` (a core
    step, propensity 1, success probability :data:`CORE_REWARD`), ``rule`` (a forced personalized step;
    with ``wide_rule_eligible`` the eligible set also lists other steps at probability 0, so policies that
    deviate there lack support) and ``none`` (``none_eligible``: no step, no outcome). Rewards of steps are
    Bernoulli with the simulator's probability for the user's hidden type. Each personalized step is
    eligible in a bandit round with probability ``eligible_share`` (at least two are). ``context`` is
    ``noisy`` (the simulator's noisy features: reward models are misspecified) or ``type`` (a one-hot of
    the hidden type plus a bias: a per-step linear reward model is exact).
    """
    if context not in ("noisy", "type"):
        raise ValueError(f"context: must be 'noisy' or 'type' (got {context!r})")
    cat = catalog or load_catalog(None)
    actions = generic_order(cat)
    n_core = len(cat.core_order)
    k = len(actions)
    n_pers = k - n_core
    shares = shares or {"bandit": 0.7, "core": 0.12, "no_consent": 0.04, "rule": 0.08, "none": 0.06}
    kinds = list(shares)
    g = np.random.default_rng(seed)
    n_types = 5
    if context == "type":
        n_features = n_types + 1
    sim = OnboardingSimulator(n_steps=n_pers, n_features=n_features, n_types=n_types, seed=seed)
    names = ([f"x{j}" for j in range(n_features - 1)] if context == "noisy"
             else [f"type{j}" for j in range(n_types)]) + ["bias"]
    fmt = _float_json(names)
    scorer = np.random.default_rng([seed, 7]).standard_normal((n_pers, n_features))
    pseudo = synth_pseudonymizer()
    n_users = n_users or max(1, n_decisions // 5)
    user_pseudos = [pseudo(f"user{i:07d}") for i in range(n_users)]
    rule_names = [r.name for r in cat.rules_by_priority()] or ["rule"]

    truth_probs = np.empty((n_decisions, k))
    truth_dist = np.zeros((n_decisions, k))
    reasons = np.empty(n_decisions, dtype=object)
    has_step = np.ones(n_decisions, dtype=bool)
    has_outcome = np.ones(n_decisions, dtype=bool)
    ids = np.array([f"d{i:09d}" for i in range(n_decisions)], dtype=object)
    store = _open(path)
    try:
        for lo in range(0, n_decisions, batch):
            hi = min(n_decisions, lo + batch)
            m = hi - lo
            x, types = sim.arrivals(m, g)
            if context == "type":
                x = np.zeros((m, n_features))
                x[np.arange(m), types] = 1.0
                x[:, -1] = 1.0
            probs_p = sim.reward_probs(types)
            tp = truth_probs[lo:hi]
            tp[:, :n_core] = CORE_REWARD
            tp[:, n_core:] = probs_p
            kind = g.choice(len(kinds), size=m, p=np.array([shares[s] for s in kinds]) / sum(shares.values()))
            eligible = g.random((m, n_pers)) < eligible_share
            eligible[np.arange(m), g.integers(n_pers, size=m)] = True  # at least two eligible
            eligible[np.arange(m), g.integers(n_pers, size=m)] = True
            scores = np.where(eligible, x @ scorer.T, -np.inf)
            best = np.argmax(scores, axis=1)
            n_el = eligible.sum(axis=1)
            dist = np.where(eligible, epsilon / n_el[:, None], 0.0)
            dist[np.arange(m), best] += 1.0 - epsilon
            u = g.random(m)
            chosen_b = np.minimum((np.cumsum(dist, axis=1) < u[:, None]).sum(axis=1), n_pers - 1)
            chosen_b = np.where(eligible[np.arange(m), chosen_b], chosen_b, best)  # rounding guard
            core_step = g.integers(n_core, size=m)
            rule_step = g.integers(n_pers, size=m)
            ru = g.random(m)
            users = g.integers(n_users, size=m)
            ts = START_MS + (np.arange(lo, hi) * 60_000) + g.integers(0, 59_000, size=m)
            miss = g.random(m) < missing_outcome_share
            ctx_rows = x.tolist()
            dec_rows: list[tuple] = []
            out_rows: list[tuple] = []
            for j in range(m):
                i = lo + j
                kd = kinds[kind[j]]
                did = ids[i]
                if kd == "bandit":
                    el = np.flatnonzero(eligible[j])
                    a = n_core + int(chosen_b[j])
                    prob = {actions[n_core + e]: float(dist[j, e]) for e in el.tolist()}
                    truth_dist[i, n_core + el] = dist[j, el]
                    reason = "bandit"
                elif kd in ("core", "no_consent"):
                    a = int(core_step[j])
                    prob = {actions[a]: 1.0}
                    truth_dist[i, a] = 1.0
                    reason = kd
                elif kd == "rule":
                    a = n_core + int(rule_step[j])
                    if wide_rule_eligible:
                        prob = {actions[n_core + e]: 0.0 for e in np.flatnonzero(eligible[j]).tolist()}
                        prob[actions[a]] = 1.0
                    else:
                        prob = {actions[a]: 1.0}
                    truth_dist[i, a] = 1.0
                    reason = f"rule:{rule_names[int(rule_step[j]) % len(rule_names)]}"
                else:
                    reasons[i] = "none_eligible"
                    has_step[i] = False
                    has_outcome[i] = False
                    dec_rows.append((did, user_pseudos[users[j]], int(ts[j]), "home", "", 1.0, "none_eligible",
                                     "synth-logger", "", "", fmt % tuple(ctx_rows[j]), "[]", "{}", 0))
                    continue
                reasons[i] = reason
                step = actions[a]
                p = prob[step]
                dec_rows.append((did, user_pseudos[users[j]], int(ts[j]), "home", step, p, reason, "synth-logger",
                                 "", "", fmt % tuple(ctx_rows[j]), json.dumps(list(prob)),
                                 json.dumps(prob, separators=(",", ":")), int(ts[j]) + DAY_MS))
                if miss[j]:
                    has_outcome[i] = False
                    continue
                r = 1.0 if ru[j] < tp[j, a] else 0.0
                out_rows.append((did, user_pseudos[users[j]], r, "event" if r else "default",
                                 "success" if r else "no_success", int(ts[j]) + HOUR_MS))
            store.begin()
            store.conn.executemany(_INSERT_DECISION, dec_rows)
            store.conn.executemany(_INSERT_OUTCOME, out_rows)
            store.commit()
    finally:
        store.close()
    return LogTruth(actions, ids, reasons, truth_probs, truth_dist, has_step, has_outcome, sim, tuple(names))


# ------------------------------------------------------------------------------------- population
@dataclass(frozen=True)
class ArmEffect:
    """How an experiment arm changes users: multipliers on the completion probability of the last core
    step (activation), on the retention probabilities and on the success probability of personalized
    steps (completion)."""

    activation: float = 1.0
    retention: float = 1.0
    completion: float = 1.0


@dataclass(frozen=True)
class PopulationSpec:
    """Known properties of a synthetic product population (see :func:`generate_population`)."""

    n_users: int = 3000
    seed: int = 0
    weeks: int = 4
    core_completion: tuple[float, ...] = (0.92, 0.88, 0.45)  # P(complete | shown) per core step
    retention: dict[int, float] = field(default_factory=lambda: {1: 0.55, 7: 0.30, 30: 0.15})
    other_day_activity: float = 0.12
    ttfv_median_hours: float = 6.0
    ttfv_sigma: float = 1.0
    survey_share: float = 0.4
    survey_probs: tuple[float, ...] = (0.05, 0.10, 0.20, 0.35, 0.30)  # scores 1..5
    consent_share: float = 0.9
    anonymous_first_share: float = 0.5
    erased_share: float = 0.02
    bandit_decisions: int = 2
    arm_effects: dict[str, ArmEffect] = field(default_factory=dict)
    core_reshow_share: float = 0.0  # a core step shown a second time (one minute later) before the user acts on it
    late_completion_share: float = 0.0  # a failed personalized show completed anyway, after its reward window

    @property
    def survey_mean(self) -> float:
        return float(sum((i + 1) * p for i, p in enumerate(self.survey_probs)))


@dataclass
class PopulationTruth:
    """Facts about a generated population: subjects, their arms, who was erased (raw subjects and
    pseudonyms), the data's end time and the spec."""

    spec: PopulationSpec
    subjects: list[str]
    arms: dict[str, str]
    erased_subjects: set[str]
    erased_pseudos: set[str]
    end_ms: int
    signup_ms: dict[str, int]
    # per decision that showed a step: (subject, arm, whether the user completed the step inside the
    # decision's reward window and it was this decision's show that got the credit, the latest show)
    decision_success: dict[str, tuple[str, str, bool]] = field(default_factory=dict)


def generate_population(path: str | Path, spec: PopulationSpec | None = None,
                        catalog: Catalog | None = None) -> PopulationTruth:
    """Write a population of users to a new database at ``path``.

    Each user signs up at a random time in ``spec.weeks`` weeks (a ``session_start``), walks the core flow
    (each core step: a decision, a ``screen_viewed``, then ``step_completed`` with the step's known
    probability, else ``step_dismissed`` and the user stops), reaches first value (completing the last core
    step) ``LogNormal(median=ttfv_median_hours)`` after signup, comes back on day N with the known
    retention probability (a ``session_start`` inside [N, N+1) days), may answer a survey, and - after the
    core flow - gets bandit (tailored arm), generic (generic arm) or no (holdout) personalized decisions
    with outcomes. Arms come from :class:`server.base.experiments.Assigner` on the catalog's enabled experiment.
    Erased users keep their rows but get a tombstone (exports and reports must drop them).
    """
    spec = spec or PopulationSpec()
    cat = catalog or load_catalog(None)
    if len(spec.core_completion) != len(cat.core_order):
        raise ValueError(f"core_completion: needs one probability per core step ({len(cat.core_order)})")
    g = np.random.default_rng(spec.seed)
    pseudo = synth_pseudonymizer()
    assigner = Assigner(cat)
    exp = cat.active_experiment
    actions = generic_order(cat)
    n_core = len(cat.core_order)
    pers = actions[n_core:]
    sim = OnboardingSimulator(n_steps=len(pers), n_features=6, n_types=4, seed=spec.seed)
    fmt = _float_json([f"x{j}" for j in range(5)] + ["bias"])
    span_ms = spec.weeks * 7 * DAY_MS
    end_ms = START_MS + span_ms + 32 * DAY_MS
    events: list[StoredEvent] = []
    decisions: list[tuple] = []
    outcomes: list[tuple] = []
    subjects: list[str] = []
    arms: dict[str, str] = {}
    signups: dict[str, int] = {}
    erased_subjects: set[str] = set()
    n_ev = 0
    n_dec = 0

    def ev(subject: str, name: str, ts: int, **kw: object) -> None:
        nonlocal n_ev
        n_ev += 1
        props = kw.pop("properties", {})
        events.append(StoredEvent(f"e{n_ev:09d}", subject, name, int(ts), int(ts) + 500, user_id=subject,
                                  properties=props, **kw))  # type: ignore[arg-type]

    window_ms = {st.id: int(round(st.reward_window_hours * HOUR_MS)) for st in cat.steps}
    decision_success: dict[str, tuple[str, str, bool]] = {}

    def decide(subject: str, ts: int, step: str, reason: str, probs: dict[str, float], arm: str, ctx: str,
               reward: float | None, success: bool = False) -> str:
        nonlocal n_dec
        n_dec += 1
        did = f"p{n_dec:09d}"
        p = probs.get(step, 1.0) if step else 1.0
        decisions.append((did, pseudo(subject), int(ts), "home", step, p, reason, "synth-population",
                          exp.name if exp else "", arm, ctx, json.dumps(list(probs)),
                          json.dumps(probs, separators=(",", ":")), int(ts) + window_ms[step] if step else 0))
        if reward is not None:
            outcomes.append((did, pseudo(subject), reward, "event" if reward else "default",
                             "success" if reward else "no_success", int(ts) + HOUR_MS))
        if step:
            decision_success[did] = (subject, arm, success)
        return did

    scorer = np.random.default_rng([spec.seed, 7]).standard_normal((len(pers), 6))
    for i in range(spec.n_users):
        subject = f"user{i:05d}"
        subjects.append(subject)
        arm = assigner.assign(exp.name, subject) if exp else ""
        arms[subject] = arm
        kind = {a.name: a.kind for a in exp.arms}.get(arm, "tailored") if exp else "tailored"
        effect = spec.arm_effects.get(arm, ArmEffect())
        signup = START_MS + int(g.integers(0, span_ms))
        signups[subject] = signup
        channel, device = ("web", "desktop") if g.random() < 0.6 else ("ios", "mobile")
        anon = f"anon{i:05d}" if g.random() < spec.anonymous_first_share else ""
        ev(subject, "session_start", signup, channel=channel, device_type=device, anonymous_id=anon,
           device_id=f"dev{i:05d}")
        if anon:
            ev(subject, "identify", signup + 1000, anonymous_id=anon, device_id=f"dev{i:05d}")
        consent = g.random() < spec.consent_share
        x, _types = sim.arrivals(1, g)
        ctx = fmt % tuple(x[0].tolist())
        # core flow
        t = signup + MINUTE_MS
        ttfv = int(math.exp(math.log(spec.ttfv_median_hours) + spec.ttfv_sigma * g.standard_normal()) * HOUR_MS)
        completed_all = True
        for k, step in enumerate(cat.core_order):
            p = min(1.0, spec.core_completion[k] * (effect.activation if k == n_core - 1 else 1.0))
            done = g.random() < p
            reason = "core" if consent else "no_consent"
            reshow = spec.core_reshow_share > 0 and g.random() < spec.core_reshow_share
            t_show = t + MINUTE_MS if reshow else t
            # the completion credits the latest show; the last core step completes at signup + time to value
            credited = done and (k < n_core - 1 or max(signup + ttfv, t_show + 2000) <= t_show + window_ms[step])
            decide(subject, t, step, reason, {step: 1.0}, arm, ctx, 1.0 if done else 0.0, credited and not reshow)
            ev(subject, "screen_viewed", t + 1000, step_id=step, channel=channel, device_type=device)
            if reshow:  # shown again before the user acts on it
                decide(subject, t_show, step, reason, {step: 1.0}, arm, ctx, 1.0 if done else 0.0, credited)
                ev(subject, "screen_viewed", t_show + 1000, step_id=step, channel=channel, device_type=device)
                t = t_show
            if not done:
                if g.random() < 0.5:
                    ev(subject, "step_dismissed", t + 30_000, step_id=step)
                completed_all = False
                break
            t_done = signup + ttfv if k == n_core - 1 else t + int(g.integers(1, 5)) * MINUTE_MS
            t_done = max(t_done, t + 2000)
            ev(subject, "step_completed", t_done, step_id=step, channel=channel, device_type=device)
            for _ in range(int(g.integers(0, 3))):
                ev(subject, "feature_used", t_done + int(g.integers(1, 60)) * MINUTE_MS,
                   feature=str(g.choice(["reports", "automations", "dashboards", "integrations"])))
            t = t_done + MINUTE_MS
        # personalized decisions after the core flow
        if completed_all:
            late: list[str] = []  # failed steps the user completes after every window of this batch closed
            for j in range(spec.bandit_decisions):
                td = t + (j + 1) * 3 * HOUR_MS
                elig = [s for s in range(len(pers)) if g.random() < 0.7] or [0]
                if kind == "holdout":
                    decide(subject, td, "", "holdout", {}, arm, ctx, None)
                    continue
                if kind == "generic" or not consent:
                    a = elig[0]
                    probs = {pers[e]: (1.0 if e == a else 0.0) for e in elig}
                    reason = "generic" if kind == "generic" else "no_consent"
                else:
                    sc = scorer[elig] @ x[0]
                    dist = np.full(len(elig), 0.2 / len(elig))
                    dist[int(np.argmax(sc))] += 0.8
                    a = elig[int(g.choice(len(elig), p=dist))]
                    probs = {pers[e]: float(q) for e, q in zip(elig, dist)}
                    reason = "bandit"
                p_success = min(1.0, sim.success_probs[_types[0], a] * effect.completion)
                r = 1.0 if g.random() < p_success else 0.0
                step = pers[a]
                decide(subject, td, step, reason, probs, arm, ctx, r, bool(r))
                ev(subject, "screen_viewed", td + 1000, step_id=step)
                if r:
                    ev(subject, "step_completed", td + 20 * MINUTE_MS, step_id=step)
                elif spec.late_completion_share > 0 and g.random() < spec.late_completion_share:
                    late.append(step)
            closed = t + spec.bandit_decisions * 3 * HOUR_MS + max(window_ms.values())
            for step in late:
                ev(subject, "step_completed", closed + int(g.integers(1, 48)) * HOUR_MS, step_id=step)
        # retention: activity on later days
        for day in range(1, 36):
            p = spec.retention.get(day, spec.other_day_activity) * effect.retention
            if g.random() < p:
                ts = signup + day * DAY_MS + int(g.integers(0, 20 * HOUR_MS))
                if ts < end_ms:
                    ev(subject, "session_start", ts, channel=channel, device_type=device)
                    if g.random() < 0.5:
                        ev(subject, "feature_used", ts + 5 * MINUTE_MS, feature="reports")
        if g.random() < spec.survey_share:
            score = int(g.choice(len(spec.survey_probs), p=np.array(spec.survey_probs))) + 1
            ev(subject, "survey_response", signup + 2 * HOUR_MS, properties={"score": str(score)})
        if g.random() < spec.erased_share:
            erased_subjects.add(subject)
    store = _open(path)
    try:
        store.begin()
        events.sort(key=lambda e: (e.timestamp_ms, e.event_id))
        store.append_events(events)
        store.conn.executemany(_INSERT_DECISION, decisions)
        store.conn.executemany(_INSERT_OUTCOME, outcomes)
        for s in sorted(erased_subjects):
            store.add_tombstone(pseudo(s), end_ms)
        store.commit()
    finally:
        store.close()
    return PopulationTruth(spec, subjects, arms, erased_subjects, {pseudo(s) for s in erased_subjects}, end_ms,
                           signups, decision_success)
