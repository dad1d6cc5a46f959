"""``onramp report funnel``: onboarding analytics a product manager reads - drop-off at each step (core
steps in their catalog order, then personalized steps) with abnormal drop-offs flagged, time to first
value, D1/D7/D30 retention by signup-week cohort and survey scores - as terminal tables (rich), PNG charts
(matplotlib, Agg) and one self-contained HTML file (charts inlined as base64).

A step is *shown* to a user when a decision chose it for them or they sent ``screen_viewed`` with its
step id, and *completed* when they sent ``step_completed`` with its step id. Drop-off = 1 - completed/shown.
A step is flagged when its drop-off is above the median step's and a binomial test of its completions
against the median step's completion rate gives p < alpha / number of steps (Bonferroni), or when its
drop-off exceeds mean + k * sd of the group's drop-offs (groups: core steps, personalized steps).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from server.base.catalog import Catalog, CatalogError
from server.base.config import ConfigError
from server.offline.analytics import Activity, FirstValue, first_value_ms, load_activity, retained
from server.offline.console import ReportTable, new_console
from server.offline.common import DAY_MS, HOUR_MS, OfflineError, demo_hint, load_setup, open_readonly
from server.offline.stats import binomial_lower_p, bootstrap_mean_interval, wilson_interval

RETENTION_DAYS = (1, 7, 30)
MIN_SHOWN = 20  # users a step must be shown to before its drop-off may be flagged


@dataclass
class StepRow:
    """Funnel numbers of one step."""

    step_id: str
    group: str  # core | personalized
    shown: int
    completed: int
    completion_rate: float
    drop_off: float
    low: float  # interval of the completion rate
    high: float
    p_value: float
    flagged: bool
    why: str = ""


@dataclass
class TimeToValue:
    """Time to first value (hours from signup) of the users who reached it."""

    event: str
    users: int
    reached: int
    median_h: float
    p25_h: float
    p75_h: float
    p90_h: float
    mean_h: float
    within: dict[str, float]
    hours: list[float] = field(repr=False, default_factory=list)


@dataclass
class Cohort:
    """One signup-week cohort's D1/D7/D30 retention (None where the data does not cover day N yet)."""

    week: str
    users: int
    retention: dict[str, float | None]
    observable: dict[str, int]


@dataclass
class Survey:
    """Survey scores: count, mean with a bootstrap interval, and the count of each score."""

    responses: int
    mean: float
    low: float
    high: float
    distribution: dict[str, int]


@dataclass
class FunnelReport:
    """Everything ``onramp report funnel`` shows."""

    users: int
    erased_left_out: int
    end: str
    steps: list[StepRow]
    time_to_value: TimeToValue
    cohorts: list[Cohort]
    overall_retention: dict[str, float | None]
    survey: Survey
    alpha: float
    k_sd: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["time_to_value"].pop("hours", None)
        return _clean(d)

    def step(self, step_id: str) -> StepRow:
        return next(s for s in self.steps if s.step_id == step_id)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _iso_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


# ------------------------------------------------------------------------------------------ computing
def funnel_steps(act: Activity, catalog: Catalog, alpha: float = 0.05, k_sd: float = 2.0,
                 min_shown: int = MIN_SHOWN) -> list[StepRow]:
    """Shown -> completed per step (core order, then personalized steps), with abnormal drop-offs flagged."""
    shown: dict[str, set[int]] = {}
    done: dict[str, set[int]] = {}
    m = act.dec_user >= 0
    for u, s in zip(act.dec_user[m].tolist(), act.dec_step[m].tolist()):
        if s:
            shown.setdefault(s, set()).add(u)
    for u, n, s in zip(act.user.tolist(), act.name.tolist(), act.step_id.tolist()):
        if s and n == "screen_viewed":
            shown.setdefault(s, set()).add(u)
        elif s and n == "step_completed":
            done.setdefault(s, set()).add(u)
    rows: list[StepRow] = []
    groups = (("core", list(catalog.core_order)), ("personalized", [s.id for s in catalog.personalized_steps]))
    for group, ids in groups:
        part: list[StepRow] = []
        for sid in ids:
            sh = shown.get(sid, set()) | done.get(sid, set())
            c = len(done.get(sid, set()) & sh)
            n = len(sh)
            rate = c / n if n else math.nan
            lo, hi = wilson_interval(c, n, alpha)
            part.append(StepRow(sid, group, n, c, rate, 1 - rate if n else math.nan, lo, hi, math.nan, False))
        _flag(part, alpha, k_sd, min_shown)
        rows.extend(part)
    return rows


def _flag(part: list[StepRow], alpha: float, k_sd: float, min_shown: int) -> None:
    usable = [r for r in part if r.shown >= min_shown]
    if len(usable) < 2:
        return
    drops = [r.drop_off for r in usable]
    median_rate = statistics.median(r.completion_rate for r in usable)
    mean, sd = statistics.mean(drops), statistics.pstdev(drops)
    for r in usable:
        r.p_value = binomial_lower_p(r.completed, r.shown, median_rate)
        reasons = []
        if r.drop_off > 1 - median_rate and r.p_value < alpha / len(usable):
            reasons.append(f"completes less often than the median step ({r.completion_rate:.0%} vs "
                           f"{median_rate:.0%}, binomial p={r.p_value:.2g})")
        if len(usable) >= 3 and sd > 0 and r.drop_off > mean + k_sd * sd:
            reasons.append(f"drop-off above mean + {k_sd:g} sd ({mean:.0%} + {k_sd:g} x {sd:.0%})")
        r.flagged = bool(reasons)
        r.why = "; ".join(reasons)


def time_to_value(act: Activity, fv: FirstValue) -> TimeToValue:
    """Hours from signup (first event) to the first "first value" event."""
    first = first_value_ms(act, fv)
    ok = first >= 0
    hours = (first[ok] - act.signup_ms[ok]) / HOUR_MS
    if hours.size == 0:
        return TimeToValue(str(fv), act.n_users, 0, math.nan, math.nan, math.nan, math.nan, math.nan, {})
    q = np.quantile(hours, [0.25, 0.5, 0.75, 0.9])
    within = {label: float(np.mean(hours <= h)) for label, h in (("1h", 1), ("24h", 24), ("7d", 168))}
    return TimeToValue(str(fv), act.n_users, int(ok.sum()), float(q[1]), float(q[0]), float(q[2]), float(q[3]),
                       float(hours.mean()), within, hours.tolist())


def retention_cohorts(act: Activity, active_event: str = "session_start") -> tuple[list[Cohort], dict[str, float | None]]:
    """D1/D7/D30 retention per signup week (weeks start on Monday, UTC) and over all users."""
    days = (act.signup_ms // DAY_MS).astype(np.int64)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    week_start = (days - weekday) * DAY_MS
    per_day = {d: retained(act, d, active_event) for d in RETENTION_DAYS}
    cohorts = []
    for w in np.unique(week_start).tolist():
        m = week_start == w
        ret: dict[str, float | None] = {}
        obs: dict[str, int] = {}
        for d, (observable, kept) in per_day.items():
            n = int((observable & m).sum())
            obs[f"D{d}"] = n
            ret[f"D{d}"] = float((kept & m).sum() / n) if n else None
        cohorts.append(Cohort(_iso_day(w), int(m.sum()), ret, obs))
    overall: dict[str, float | None] = {}
    for d, (observable, kept) in per_day.items():
        n = int(observable.sum())
        overall[f"D{d}"] = float(kept.sum() / n) if n else None
    return cohorts, overall


def survey_scores(act: Activity, alpha: float = 0.05) -> Survey:
    """Numeric ``properties.score`` of ``survey_response`` events."""
    s = act.score[(act.name == "survey_response") & np.isfinite(act.score)]
    if s.size == 0:
        return Survey(0, math.nan, math.nan, math.nan, {})
    lo, hi = bootstrap_mean_interval(s, alpha)
    values, counts = np.unique(s, return_counts=True)
    return Survey(int(s.size), float(s.mean()), lo, hi, {f"{v:g}": int(c) for v, c in zip(values, counts)})


def funnel_report(act: Activity, catalog: Catalog, fv: FirstValue | None = None, alpha: float = 0.05,
                  k_sd: float = 2.0, active_event: str = "session_start") -> FunnelReport:
    """The whole funnel report of ``act``."""
    cohorts, overall = retention_cohorts(act, active_event)
    return FunnelReport(act.n_users, act.n_erased, _iso_day(act.end_ms) if act.end_ms else "",
                        funnel_steps(act, catalog, alpha, k_sd), time_to_value(act, fv or FirstValue.from_catalog(catalog)),
                        cohorts, overall, survey_scores(act, alpha), alpha, k_sd)


# ------------------------------------------------------------------------------------------ output
def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.1%}"


def time_to_value_text(v: TimeToValue) -> str:
    """One sentence on time to first value (no quantiles when nobody reached it)."""
    if v.reached == 0:
        return f"0 of {v.users} users reached it yet"
    return (f"{v.reached} of {v.users} users reached it; median {v.median_h:.1f} h (p25 {v.p25_h:.1f} h, "
            f"p75 {v.p75_h:.1f} h, p90 {v.p90_h:.1f} h); "
            + ", ".join(f"within {k}: {_pct(x)}" for k, x in v.within.items()))


def render_funnel(rep: FunnelReport, console: Any) -> None:
    """Terminal tables of a funnel report."""
    console.print(f"[bold]Onboarding report[/bold]: {rep.users} users (erased users left out: {rep.erased_left_out}), "
                  f"data up to {rep.end}")
    if rep.users < MIN_SHOWN:
        console.print(f"only {rep.users} user{'s' if rep.users != 1 else ''}: a drop-off is flagged once its step was "
                      f"shown to {MIN_SHOWN} users; {demo_hint('onramp report funnel')}", markup=False, highlight=False)
    t = ReportTable(title="Drop-off per step (shown -> completed)")
    for col, just in (("step", "left"), ("group", "left"), ("shown", "right"), ("completed", "right"),
                      ("completion", "right"), ("drop-off", "right"), ("flag", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for s in rep.steps:
        t.add_row(s.step_id, s.group, str(s.shown), str(s.completed),
                  f"{_pct(s.completion_rate)} [{_pct(s.low)}, {_pct(s.high)}]" if s.shown else "n/a",
                  _pct(s.drop_off), "[red]ABNORMAL[/red]" if s.flagged else "")
    console.print(t)
    for s in rep.steps:
        if s.flagged:
            console.print(f"  [red]{s.step_id}[/red]: {s.why}")
    v = rep.time_to_value
    console.print(f"[bold]Time to first value[/bold] ({v.event}): {time_to_value_text(v)}")
    r = ReportTable(title="Retention by signup week (active = session on day N)")
    r.add_column("signup week")
    r.add_column("users", justify="right")
    for d in RETENTION_DAYS:
        r.add_column(f"D{d}", justify="right")
    for c in rep.cohorts:
        r.add_row(c.week, str(c.users), *(_pct(c.retention[f"D{d}"]) for d in RETENTION_DAYS))
    r.add_row("all", str(rep.users), *(_pct(rep.overall_retention[f"D{d}"]) for d in RETENTION_DAYS), style="bold")
    console.print(r)
    s = rep.survey
    if s.responses:
        console.print(f"[bold]Survey[/bold]: {s.responses} responses, mean score {s.mean:.2f} "
                      f"[{s.low:.2f}, {s.high:.2f}]; distribution " + ", ".join(f"{k}: {v}" for k, v in s.distribution.items()))
    else:
        console.print("[bold]Survey[/bold]: no survey_response events with a numeric score")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def funnel_charts(rep: FunnelReport) -> dict[str, bytes]:
    """PNG charts (name -> bytes): funnel, time to first value, retention, survey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: dict[str, bytes] = {}
    steps = [s for s in rep.steps if s.shown]
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(steps))
    ax.bar(x - 0.2, [s.shown for s in steps], 0.4, label="shown", color="#9ecae1")
    ax.bar(x + 0.2, [s.completed for s in steps], 0.4, label="completed",
           color=["#de2d26" if s.flagged else "#3182bd" for s in steps])
    ax.set_xticks(x, [s.step_id for s in steps], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("users")
    ax.set_title("Shown and completed per step (red: abnormal drop-off)")
    ax.legend()
    fig.tight_layout()
    charts["funnel"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    hours = np.asarray(rep.time_to_value.hours)
    if hours.size:
        bins = np.logspace(np.log10(max(hours.min(), 0.01)), np.log10(max(hours.max(), 0.02)), 40)
        ax.hist(hours, bins=bins, color="#3182bd")
        ax.set_xscale("log")
        ax.axvline(rep.time_to_value.median_h, color="black", linestyle="--",
                   label=f"median {rep.time_to_value.median_h:.1f} h")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no user reached first value yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("hours from signup")
    ax.set_ylabel("users")
    ax.set_title(f"Time to first value ({rep.time_to_value.event})")
    fig.tight_layout()
    charts["time_to_value"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for c in rep.cohorts:
        pts = [(d, c.retention[f"D{d}"]) for d in RETENTION_DAYS if c.retention[f"D{d}"] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{c.week} ({c.users})")
    ax.set_xticks(list(RETENTION_DAYS), [f"D{d}" for d in RETENTION_DAYS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("retained")
    ax.set_title("Retention by signup week")
    ax.legend(fontsize=7)
    fig.tight_layout()
    charts["retention"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    dist = rep.survey.distribution
    ax.bar(list(dist), list(dist.values()), color="#31a354")
    ax.set_xlabel("score")
    ax.set_ylabel("responses")
    ax.set_title(f"Survey scores (mean {rep.survey.mean:.2f})" if rep.survey.responses else "Survey scores (none)")
    fig.tight_layout()
    charts["survey"] = _png(fig)
    return charts


_CSS = ("body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        ".flag{color:#b00;font-weight:bold}img{max-width:100%}.note{color:#555;font-size:90%}")


def _table(headers: list[str], rows: list[list[str]], flags: list[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = ' class="flag"' if flags and flags[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def funnel_html(rep: FunnelReport, charts: dict[str, bytes], title: str = "Onramp onboarding report",
                extra_sections: list[str] | None = None) -> str:
    """One self-contained HTML page (no external resources) with the tables and the charts inlined."""
    v = rep.time_to_value
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{rep.users} users (erased users left out: {rep.erased_left_out}); data up to {html.escape(rep.end)}.</p>",
             "<h2>Drop-off per step</h2>",
             "<p class='note'>Shown = a decision chose the step or the user viewed it; completed = step_completed. "
             f"Flagged steps complete significantly less often than the median step (binomial test, alpha "
             f"{rep.alpha:g} / steps) or have a drop-off above mean + {rep.k_sd:g} sd.</p>",
             _table(["step", "group", "shown", "completed", "completion", "drop-off", "flag"],
                    [[s.step_id, s.group, str(s.shown), str(s.completed), _pct(s.completion_rate), _pct(s.drop_off),
                      ("ABNORMAL: " + s.why) if s.flagged else ""] for s in rep.steps],
                    [s.flagged for s in rep.steps]),
             _img(charts["funnel"], "funnel chart"),
             "<h2>Time to first value</h2>",
             f"<p>First value = <code>{html.escape(v.event)}</code>. {html.escape(time_to_value_text(v))}.</p>",
             _img(charts["time_to_value"], "time to first value histogram"),
             "<h2>Retention by signup week</h2>",
             _table(["signup week", "users"] + [f"D{d}" for d in RETENTION_DAYS],
                    [[c.week, str(c.users)] + [_pct(c.retention[f"D{d}"]) for d in RETENTION_DAYS] for c in rep.cohorts]
                    + [["all", str(rep.users)] + [_pct(rep.overall_retention[f"D{d}"]) for d in RETENTION_DAYS]]),
             _img(charts["retention"], "retention chart"),
             "<h2>Survey</h2>",
             (f"<p>{rep.survey.responses} responses, mean {rep.survey.mean:.2f} "
              f"[{rep.survey.low:.2f}, {rep.survey.high:.2f}].</p>" if rep.survey.responses else "<p>No responses.</p>"),
             _img(charts["survey"], "survey scores")]
    parts.extend(extra_sections or [])
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ CLI
def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register ``onramp report funnel``, ``onramp report experiments`` and ``onramp report rules``."""
    from server.offline.experiment_report import add_experiments_parser
    from server.offline.rule_report import add_rules_parser

    p = subparsers.add_parser("report", help="onboarding analytics: funnel, time to value, retention, surveys, "
                                             "experiments", description="Onboarding analytics reports.")
    sub = p.add_subparsers(dest="report", metavar="REPORT")
    sub.required = True
    f = sub.add_parser("funnel", help="drop-off per step, time to first value, retention cohorts, survey scores",
                       description="Drop-off per onboarding step (abnormal ones flagged), time to first value, "
                                   "D1/D7/D30 retention by signup week and survey scores.")
    add_common_report_args(f)
    f.add_argument("--k-sd", type=float, default=2.0, help="flag drop-offs above mean + K sd (default 2)")
    f.set_defaults(func=cmd_funnel)
    add_experiments_parser(sub)
    add_rules_parser(sub)
    return p


def add_common_report_args(p: argparse.ArgumentParser) -> None:
    """Options every report shares."""
    p.add_argument("--db", required=True, metavar="PATH", help="the server's SQLite database")
    p.add_argument("--config", metavar="TOML", help="the server's config (catalog, pseudonym key)")
    p.add_argument("--first-value", metavar="EVENT[:STEP|FEATURE]",
                   help="the first-value event (default: the catalog's activation event, e.g. step_completed:first_project)")
    p.add_argument("--active-event", default="session_start",
                   help="event that makes a user active on a day for retention ('' = any event; default session_start)")
    p.add_argument("--as-of", metavar="YYYY-MM-DD", help="ignore events after this day (default: the last event)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--out-dir", metavar="DIR", help="write the PNG charts and the HTML report here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def no_users(db: str, act: Activity, as_of: str | None, command: str) -> str:
    """The message of a report on a database without (non-erased) users: what is missing and what to run."""
    erased = f", {act.n_erased} erased users left out" if act.n_erased else ""
    until = f" up to --as-of {as_of}" if as_of else ""
    return (f"no users to report on: {db} holds no user's events{until}{erased} (the server stores the events "
            f"clients send, with the user's tracking consent); {demo_hint(command)}")


def parse_as_of(text: str | None) -> int | None:
    """End of the given UTC day in ms (``--as-of``)."""
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise OfflineError(f"--as-of: expected YYYY-MM-DD (got {text!r})") from None
    return int((day + timedelta(days=1)).timestamp() * 1000) - 1


def cmd_funnel(args: argparse.Namespace) -> int:
    """``onramp report funnel``."""
    out = new_console()
    try:
        if not 0 < args.alpha < 1:
            raise OfflineError(f"--alpha: must be in (0, 1) (got {args.alpha})")
        setup = load_setup(args.config)
        fv = FirstValue.parse(args.first_value) if args.first_value else FirstValue.from_catalog(setup.catalog)
        conn = open_readonly(args.db)
        try:
            act = load_activity(conn, setup.privacy, parse_as_of(args.as_of))
        finally:
            conn.close()
        if act.n_users == 0:
            raise OfflineError(no_users(args.db, act, args.as_of, "onramp report funnel"))
        rep = funnel_report(act, setup.catalog, fv, args.alpha, args.k_sd, args.active_event)
    except (OfflineError, ConfigError, CatalogError, OSError, ValueError) as exc:
        new_console(stderr=True).print(f"onramp report funnel: {exc}", markup=False, highlight=False)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(rep.to_dict(), indent=2) + "\n")
    else:
        render_funnel(rep, out)
    if args.out_dir:
        d = Path(args.out_dir)
        d.mkdir(parents=True, exist_ok=True)
        charts = funnel_charts(rep)
        for name, png in charts.items():
            (d / f"{name}.png").write_bytes(png)
        (d / "report.html").write_text(funnel_html(rep, charts), encoding="utf-8")
        (out if not args.json else new_console(stderr=True)).print(f"charts and {d / 'report.html'} written")
    return 0
