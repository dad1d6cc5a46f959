"""The numbers of the operator's dashboard (``/dashboard`` on the metrics port, :mod:`server.ops.dashboard_http`).

Analytics come from the offline reports' own functions over a read-only connection to the live database, so
they are the numbers ``onramp report funnel`` and ``onramp report experiments`` print for the same database
and config: the funnel, time to first value, retention and survey are :func:`~server.offline.reports.funnel_report`
(its ``to_dict()`` is the CLI's ``--json``), the experiment is :func:`~server.offline.experiment_report.experiment_report`.
Two views the reports do not have are computed here from the same loaded activity: decisions by reason over
time, and each step's shows, completion inside the reward window
(:func:`~server.offline.analytics.step_completion`, the experiments report's definition) and mean reward.

:class:`TtlCache` keeps the analytics for a few seconds (longer when they are slow to compute), so refreshing
the page does not reload the database each time; the live model figures (:class:`LiveModel`) are read at each
request.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from server.base.catalog import Catalog
from server.base.clock import DAY_MS, HOUR_MS
from server.base.config import PrivacyConfig
from server.base.reasons import BOOSTED_PREFIX, RULE_PREFIX
from server.offline.analytics import Activity, load_activity, step_completion
from server.offline.common import OfflineError, generic_order, json_clean, open_readonly
from server.offline.experiment_report import experiment_report
from server.offline.reports import funnel_report
from server.offline.stats import wilson_interval, z_for

log = logging.getLogger("onramp.dashboard")

MAX_BUCKETS = 60  # bars of the decisions-over-time chart
BUCKETS_MS = (HOUR_MS, 6 * HOUR_MS, DAY_MS, 7 * DAY_MS, 28 * DAY_MS)
MAX_REASONS = 8  # reasons shown apart; the rarest others are summed as "other"
TTV_BINS = 30


@dataclass(frozen=True, slots=True)
class DashboardSource:
    """What the analytics read: the live database (opened read-only each time), the server's catalog and its
    ``[privacy]`` section (where the pseudonym key is), and the significance level of the intervals."""

    db_path: str
    catalog: Catalog
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    alpha: float = 0.05


def analytics(source: DashboardSource) -> dict[str, Any]:
    """Every analytics section of the dashboard, as plain JSON values."""
    conn = open_readonly(source.db_path)
    try:
        conn.execute("BEGIN")  # one snapshot: events and decisions as of the same commit
        act = load_activity(conn, source.privacy)
    finally:
        conn.close()
    funnel = funnel_report(act, source.catalog, alpha=source.alpha)
    return json_clean({
        "funnel": funnel.to_dict(),
        "time_to_value_histogram": ttv_histogram(funnel.time_to_value.hours),
        "experiment": experiment_section(act, source.catalog, source.alpha),
        "decisions_over_time": decisions_over_time(act),
        "steps": step_outcomes(act, source.catalog, source.alpha),
    })


def experiment_section(act: Activity, catalog: Catalog, alpha: float) -> dict[str, Any]:
    """The catalog's running experiment as ``onramp report experiments --experiment NAME --json`` gives it, or
    ``{"name", "message"}`` saying why there is none to show."""
    running = catalog.active_experiment
    if running is None:
        return {"name": "", "message": "no experiment is enabled in the catalog"}
    try:
        report = experiment_report(act, catalog, running.name, alpha=alpha)
    except OfflineError as exc:
        return {"name": running.name, "message": str(exc)}
    return {"name": running.name, "message": "", "report": report.to_dict()}


def decisions_over_time(act: Activity, max_buckets: int = MAX_BUCKETS) -> dict[str, Any]:
    """Decisions per reason in time buckets (the smallest of an hour, 6 hours, a day, a week or 28 days that
    covers the log in ``max_buckets`` bars; beyond that the last ``max_buckets`` bars). Rule reasons are
    summed as ``rule:*``, and beyond :data:`MAX_REASONS` reasons the rarest as ``other``."""
    ts = act.dec_ts
    if ts.size == 0:
        return {"bucket_ms": DAY_MS, "starts_ms": [], "reasons": {}, "total": 0, "shown_from_ms": 0}
    first, last = int(ts.min()), int(ts.max())
    bucket = next((b for b in BUCKETS_MS if (last // b - first // b) < max_buckets), BUCKETS_MS[-1])
    offset = 4 * DAY_MS if bucket % (7 * DAY_MS) == 0 else 0  # week buckets start on Monday (1970-01-05)
    index = (ts - offset) // bucket
    lo = max(int(index.min()), int(index.max()) - max_buckets + 1)
    keep = index >= lo
    n = int(index.max()) - lo + 1
    reasons = np.array([RULE_PREFIX + "*" if r.startswith(RULE_PREFIX) else BOOSTED_PREFIX + "*"
                        if r.startswith(BOOSTED_PREFIX) else r for r in act.dec_reason.tolist()], dtype=object)
    names, totals = np.unique(reasons[keep], return_counts=True)
    order = [str(names[i]) for i in np.argsort(-totals, kind="stable")]
    if len(order) > MAX_REASONS:
        rest = set(order[MAX_REASONS - 1:])
        reasons = np.array(["other" if r in rest else r for r in reasons.tolist()], dtype=object)
        order = order[:MAX_REASONS - 1] + ["other"]
    counts = {r: np.bincount(index[keep & (reasons == r)] - lo, minlength=n).tolist() for r in order}
    return {"bucket_ms": bucket, "starts_ms": [(lo + i) * bucket + offset for i in range(n)], "reasons": counts,
            "total": int(keep.sum()), "shown_from_ms": (lo * bucket + offset)}


def step_outcomes(act: Activity, catalog: Catalog, alpha: float) -> list[dict[str, Any]]:
    """Per step (generic order, then steps only the log knows): decisions that showed it, how many were
    completed inside their reward window (Wilson interval), and the mean reward of those with an outcome
    (normal-approximation interval)."""
    idx, completed = step_completion(act, catalog)
    step = act.dec_step[idx]
    reward = act.dec_reward[idx]
    ids = list(generic_order(catalog))
    ids += sorted(set(step.tolist()) - set(ids))
    core = set(catalog.core_order)
    z = z_for(alpha)
    rows = []
    for sid in ids:
        m = step == sid
        shows, done = int(m.sum()), int(completed[m].sum())
        low, high = wilson_interval(done, shows, alpha)
        r = reward[m & np.isfinite(reward)]
        mean = float(r.mean()) if r.size else math.nan
        half = z * float(r.std(ddof=1)) / math.sqrt(r.size) if r.size > 1 else math.nan
        rows.append({"step_id": sid, "group": "core" if sid in core else "personalized", "shows": shows,
                     "completed": done, "completion_rate": done / shows if shows else math.nan,
                     "completion_low": low, "completion_high": high, "rewarded": int(r.size), "reward_mean": mean,
                     "reward_low": mean - half, "reward_high": mean + half})
    return rows


def ttv_histogram(hours: list[float], bins: int = TTV_BINS) -> dict[str, list[float]]:
    """Counts of the hours to first value in log-spaced bins (the funnel report's chart, as numbers)."""
    h = np.asarray(hours, dtype=np.float64)
    if h.size == 0:
        return {"edges_h": [], "counts": []}
    edges = np.logspace(np.log10(max(h.min(), 0.01)), np.log10(max(h.max(), 0.02)), bins + 1)
    counts, _ = np.histogram(np.clip(h, edges[0], edges[-1]), bins=edges)
    return {"edges_h": edges.tolist(), "counts": counts.tolist()}


@dataclass(frozen=True, slots=True)
class LiveModel:
    """What the running server says about its models, read on its event loop: the snapshot its decisions use
    (``policy_version`` ends with ``@<snapshot version>``) and the learner's progress. None where this server
    does not know (e.g. a custom decision engine)."""

    catalog_version: str
    policy_version: str | None = None
    snapshot_version: int | None = None
    outcomes_learned: int | None = None  # by the bandit of the snapshot in use
    awaiting_outcome: int | None = None  # the reward joiner's backlog: decisions still waiting for an outcome
    joined_since_start: dict[str, int] | None = None  # outcomes the learner joined since it started, by source
    writer_queue: int | None = None  # writes queued, not committed yet
    learner_lag_ms: float | None = None  # outcome read -> snapshot published, the latest
    learner_positions: dict[str, int] | None = None  # the last row of each feed the learner's models include

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Cached:
    """One computation of the analytics: its value or error, when and how fast it was made, how long it is kept."""

    value: dict[str, Any] | None
    error: str
    computed_at_ms: int
    compute_s: float
    ttl_s: float


class TtlCache:
    """Keeps the result of ``compute()`` for ``max(min_ttl_s, slow_factor x the time it took)`` seconds, so a
    refresh within that time reads no database and a slow computation cannot take more than about
    1/``slow_factor`` of a core however often the page is refreshed. One computation runs at a time; requests
    arriving meanwhile wait for it and share its result. A failed computation is kept the same way, with its
    message. ``clock`` is monotonic seconds, ``wall`` epoch seconds."""

    def __init__(self, compute: Callable[[], dict[str, Any]], min_ttl_s: float = 5.0, slow_factor: float = 4.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.compute = compute
        self.min_ttl_s = min_ttl_s
        self.slow_factor = slow_factor
        self.clock = clock
        self.wall = wall
        self.computed = 0  # computations run
        self._lock = threading.Lock()
        self._entry: Cached | None = None
        self._expires = -math.inf

    def get(self) -> Cached:
        """The kept result while it is fresh, else a new one."""
        with self._lock:
            if self._entry is not None and self.clock() < self._expires:
                return self._entry
            started = self.clock()
            value, error = None, ""
            try:
                value = self.compute()
            except Exception as exc:  # shown on the page; the server goes on serving
                log.warning("dashboard analytics failed: %s", exc, exc_info=not isinstance(exc, OfflineError))
                error = str(exc) or type(exc).__name__
            took = self.clock() - started
            self.computed += 1
            ttl = max(self.min_ttl_s, self.slow_factor * took)
            self._entry = Cached(value, error, int(self.wall() * 1000), took, ttl)
            self._expires = started + took + ttl
            return self._entry


def live_model(catalog: Catalog, engine: Any = None, writer_queue: Callable[[], int] | None = None,
               learner: Any = None) -> LiveModel:
    """The live figures of a :class:`~server.decide.engine.DecisionEngine` (``engine``; anything else gives
    None for its fields) and a :class:`~server.learn.learner.Learner`. Call on the server's event loop."""
    joiner = getattr(learner, "joiner", None)
    stats = getattr(learner, "stats", None)
    pos = getattr(learner, "pos", None)
    return LiveModel(
        catalog_version=catalog.version,
        policy_version=getattr(engine, "policy_version", None),
        snapshot_version=getattr(engine, "snapshot_version", None),
        outcomes_learned=getattr(engine, "learned", None),
        awaiting_outcome=len(joiner) if joiner is not None else None,
        joined_since_start=dict(joiner.joined) if joiner is not None else None,
        writer_queue=writer_queue() if writer_queue is not None else None,
        learner_lag_ms=stats.lag_ms[-1] if stats is not None and stats.lag_ms else None,
        learner_positions=pos.as_dict() if pos is not None else None,
    )
