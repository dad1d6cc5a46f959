"""The event log and decisions as per-user arrays for the reports: who each user is (subject, pseudonym),
when they signed up (their first event), which events they sent, and which decisions they got.

Events hold raw subjects; decisions hold pseudonyms. Subjects are pseudonymised here (:mod:`server.store.privacy`)
to join the two and to leave erased (tombstoned) users out; the reports never show a raw id.
"""
from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass

import numpy as np

from server.base.catalog import Catalog
from server.base.config import PrivacyConfig
from server.base.records import STEP_COMPLETED, STEP_DISMISSED, SURVEY_RESPONSE
from server.offline.common import DAY_MS, HOUR_MS, OfflineError, pseudonymizer_for, tombstones


@dataclass(frozen=True, slots=True)
class FirstValue:
    """The "first value" event: a name, and optionally the step id or feature it must carry."""

    name: str
    step_id: str = ""
    feature: str = ""

    @classmethod
    def parse(cls, text: str) -> "FirstValue":
        """``name``, ``name:step_id`` (step_completed) or ``name:feature`` (feature_used)."""
        name, _, value = text.partition(":")
        if not name:
            raise ValueError(f"--first-value: expected NAME or NAME:VALUE (got {text!r})")
        if not value:
            return cls(name)
        return cls(name, feature=value) if name == "feature_used" else cls(name, step_id=value)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> "FirstValue":
        """The catalog's activation event (``[segments] activation_event/step/feature``)."""
        s = catalog.segments
        return cls(s.activation_event, s.activation_step or "", s.activation_feature or "")

    def __str__(self) -> str:
        extra = self.step_id or self.feature
        return f"{self.name}:{extra}" if extra else self.name


@dataclass
class Activity:
    """Events (arrays, one entry per event, sorted by time) and decisions of the users a report covers."""

    subjects: list[str]
    pseudos: list[str]
    user: np.ndarray  # event -> user index
    name: np.ndarray
    ts: np.ndarray
    step_id: np.ndarray
    feature: np.ndarray
    score: np.ndarray  # survey score (NaN elsewhere)
    decision_id: np.ndarray  # the decision an event names ('' for none)
    signup_ms: np.ndarray  # per user: first event
    end_ms: int
    dec_user: np.ndarray  # decision -> user index (-1: decision of a user without events)
    dec_id: np.ndarray
    dec_ts: np.ndarray
    dec_deadline: np.ndarray  # end of the decision's reward window (0: it waits for none)
    dec_step: np.ndarray
    dec_reason: np.ndarray
    dec_experiment: np.ndarray
    dec_arm: np.ndarray
    dec_reward: np.ndarray  # NaN without outcome
    n_erased: int

    @property
    def n_users(self) -> int:
        return len(self.subjects)


def _score(props: str) -> float:
    try:
        v = json.loads(props).get("score")
        f = float(v)
        return f if math.isfinite(f) else math.nan
    except (ValueError, TypeError, AttributeError):
        return math.nan


def load_activity(conn: sqlite3.Connection, privacy: PrivacyConfig | None = None,
                  as_of_ms: int | None = None) -> Activity:
    """Events and decisions of every non-erased user, up to ``as_of_ms`` (default: the last event); the
    pseudonym key is found by ``privacy`` (:func:`server.offline.common.pseudonymizer_for`)."""
    pseudo = pseudonymizer_for(conn, privacy)
    erased = tombstones(conn)
    rows = conn.execute("SELECT subject, name, timestamp_ms, COALESCE(step_id, ''), COALESCE(feature, ''), "
                        f"CASE WHEN name = '{SURVEY_RESPONSE}' THEN properties ELSE NULL END, "
                        "COALESCE(decision_id, '') FROM events "
                        + ("WHERE timestamp_ms <= ? " if as_of_ms is not None else "")
                        + "ORDER BY timestamp_ms, seq", (as_of_ms,) if as_of_ms is not None else ()).fetchall()
    index: dict[str, int] = {}
    subjects: list[str] = []
    pseudos: list[str] = []
    skip: set[str] = set()
    n_erased = 0
    user, names, ts, steps, feats, scores, dids = [], [], [], [], [], [], []
    for subject, name, t, step, feat, props, did in rows:
        u = index.get(subject)
        if u is None:
            if subject in skip:
                continue
            p = pseudo(subject)
            if p in erased:
                skip.add(subject)
                n_erased += 1
                continue
            u = index[subject] = len(subjects)
            subjects.append(subject)
            pseudos.append(p)
        user.append(u)
        names.append(name)
        ts.append(t)
        steps.append(step)
        feats.append(feat)
        scores.append(_score(props) if props is not None else math.nan)
        dids.append(did)
    user_a = np.array(user, dtype=np.intp)
    ts_a = np.array(ts, dtype=np.int64)
    signup = np.full(len(subjects), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(signup, user_a, ts_a)
    by_pseudo = {p: i for i, p in enumerate(pseudos)}
    drows = conn.execute("SELECT d.user_pseudo, d.timestamp_ms, COALESCE(d.step_id, ''), d.reason, "
                         "COALESCE(d.experiment, ''), COALESCE(d.arm, ''), o.reward, d.decision_id, "
                         "COALESCE(d.reward_deadline_ms, 0) FROM decisions d "
                         "LEFT JOIN outcomes o ON o.decision_id = d.decision_id "
                         "ORDER BY d.timestamp_ms, d.decision_id").fetchall()
    drows = [r for r in drows if r[0] not in erased]
    return Activity(
        subjects=subjects, pseudos=pseudos, user=user_a, name=np.array(names, dtype=object), ts=ts_a,
        step_id=np.array(steps, dtype=object), feature=np.array(feats, dtype=object),
        score=np.array(scores, dtype=np.float64), decision_id=np.array(dids, dtype=object), signup_ms=signup,
        end_ms=int(as_of_ms if as_of_ms is not None else (ts_a.max() if ts_a.size else 0)),
        dec_user=np.array([by_pseudo.get(r[0], -1) for r in drows], dtype=np.intp),
        dec_id=np.array([r[7] for r in drows], dtype=object),
        dec_ts=np.array([r[1] for r in drows], dtype=np.int64),
        dec_deadline=np.array([r[8] for r in drows], dtype=np.int64),
        dec_step=np.array([r[2] for r in drows], dtype=object),
        dec_reason=np.array([r[3] for r in drows], dtype=object),
        dec_experiment=np.array([r[4] for r in drows], dtype=object),
        dec_arm=np.array([r[5] for r in drows], dtype=object),
        dec_reward=np.array([math.nan if r[6] is None else r[6] for r in drows], dtype=np.float64),
        n_erased=n_erased)


def first_value_ms(act: Activity, fv: FirstValue) -> np.ndarray:
    """Per user, the time of their first "first value" event (-1 when they never reached it)."""
    m = act.name == fv.name
    if fv.step_id:
        m &= act.step_id == fv.step_id
    if fv.feature:
        m &= act.feature == fv.feature
    out = np.full(act.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(out, act.user[m], act.ts[m])
    out[out == np.iinfo(np.int64).max] = -1
    return out


def retained(act: Activity, day: int, active_event: str = "session_start") -> tuple[np.ndarray, np.ndarray]:
    """Day-N retention per user: (observable, retained). A user is observable when the data covers the
    whole day N after signup, and retained when they sent ``active_event`` (any event when empty) in
    ``[signup + N days, signup + N+1 days)``."""
    observable = act.signup_ms + (day + 1) * DAY_MS <= act.end_ms
    m = (act.name == active_event) if active_event else np.ones(act.name.shape[0], dtype=bool)
    since = act.ts - act.signup_ms[act.user]
    hit = m & (since >= day * DAY_MS) & (since < (day + 1) * DAY_MS)
    out = np.zeros(act.n_users, dtype=bool)
    out[act.user[hit]] = True
    return observable, out & observable


def user_arms(act: Activity, experiment: str | None = None) -> tuple[str, np.ndarray]:
    """Each user's logged arm in ``experiment`` (default: the experiment most decisions name); '' when
    the user has no decision in it. Returns the experiment name and the arms."""
    exps = act.dec_experiment[act.dec_experiment != ""]
    values, counts = np.unique(exps, return_counts=True) if exps.size else (np.array([]), np.array([]))
    if experiment is None:
        if exps.size == 0:
            return "", np.full(act.n_users, "", dtype=object)
        experiment = str(values[int(np.argmax(counts))])
    elif experiment not in set(values.tolist()):
        logged = ", ".join(f"{v} ({c} decisions)" for v, c in zip(values.tolist(), counts.tolist())) or "none"
        raise OfflineError(f"--experiment: no decision in the log names experiment {experiment!r} "
                           f"(experiments in the log: {logged})")
    arms = np.full(act.n_users, "", dtype=object)
    sel = np.flatnonzero((act.dec_experiment == experiment) & (act.dec_user >= 0))
    # first decision wins (decisions are in time order): assign in reverse so earlier ones overwrite
    for i in sel[::-1].tolist():
        arms[act.dec_user[i]] = act.dec_arm[i]
    return experiment, arms


def step_completion(act: Activity, catalog: Catalog | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per decision that showed a step: (decision index, completed). A ``step_completed`` of the step
    counts only inside the decision's reward window ``[decided, reward_deadline_ms]`` (a decision logged
    without a deadline gets the catalog's ``reward_window_hours`` of the step) and credits one decision
    only, as the server's reward joiner does (:mod:`server.learn.rewards`): the decision the event names
    (``decision_id``), else the user's latest decision of that step still waiting. A ``step_dismissed`` of
    the step closes that decision without success. So a step shown three times and completed once is one
    success in three decisions, and a completion after the window is none."""
    window_ms = {st.id: int(round(st.reward_window_hours * HOUR_MS)) for st in catalog.steps} if catalog else {}
    default_ms = int(round((catalog.rewards.window_hours if catalog else 24.0) * HOUR_MS))
    idx = np.flatnonzero((act.dec_step != "") & (act.dec_user >= 0))
    out = np.zeros(idx.size, dtype=bool)
    dec_ts = act.dec_ts[idx].tolist()
    dec_step = act.dec_step[idx].tolist()
    deadline = [d if d > 0 else t + window_ms.get(st, default_ms)
                for d, t, st in zip(act.dec_deadline[idx].tolist(), dec_ts, dec_step)]
    waiting: dict[tuple[int, str], list[int]] = {}  # (user, step) -> positions in idx, in time order
    for j, key in enumerate(zip(act.dec_user[idx].tolist(), dec_step)):
        waiting.setdefault(key, []).append(j)
    by_id = {d: j for j, d in enumerate(act.dec_id[idx].tolist())}
    closed = np.zeros(idx.size, dtype=bool)
    m = (act.name == STEP_COMPLETED) | (act.name == STEP_DISMISSED)
    for u, name, t, step, did in zip(act.user[m].tolist(), act.name[m].tolist(), act.ts[m].tolist(),
                                     act.step_id[m].tolist(), act.decision_id[m].tolist()):
        if did:
            j = by_id.get(did)
            candidates = [j] if j is not None and step in ("", dec_step[j]) else []
        else:
            candidates = reversed(waiting.get((u, step), ()))  # the latest waiting decision gets the credit
        for j in candidates:
            if not closed[j] and dec_ts[j] <= t <= deadline[j]:
                closed[j] = True
                out[j] = name == STEP_COMPLETED
                break
    return idx, out


def prior_activity(act: Activity, experiment: str) -> np.ndarray:
    """Per user, ``log1p`` of the events they sent before their first decision in ``experiment``: what they
    did before the experiment could change anything, the pre-experiment covariate of CUPED (0 for users
    without a decision in it). Bursts of early activity are common, hence the log."""
    first = np.full(act.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    sel = (act.dec_experiment == experiment) & (act.dec_user >= 0)
    np.minimum.at(first, act.dec_user[sel], act.dec_ts[sel])
    before = act.ts < first[act.user]
    return np.log1p(np.bincount(act.user[before], minlength=act.n_users).astype(np.float64))
