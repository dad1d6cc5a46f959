"""Shared helpers of the benchmarks: free ports, server subprocesses (Onramp and bare), the serving scenarios
(bench catalog and warm-up of users), decisions-by-reason counts, and median/spread summaries over repeats.

Serving scenarios (``--scenario``): ``personalized`` (default) runs every GetNextStep through the whole
personalised path -- guardrails, segments, rules checked, the contextual bandit's scoring, the decision
logged -- with users past the personalisation threshold and the demo catalog's caps/gaps/cooldowns lifted
(:func:`bench_catalog`); ``capped`` is the earlier benchmark: demo catalog, users with one session, so under
load every ask is a logged ``capped`` decision (the minimum gap blocks it) that never reaches the bandit."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    """A server running as a child process on ``address``."""

    proc: subprocess.Popen[bytes]
    address: str
    started_s: float

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident set size of the server process now (VmRSS from /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait (bounded), SIGKILL if it did not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_ready(address: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until ``address`` accepts TCP connections and one gRPC channel to it connects (or the process
    died / timeout). Polls with plain sockets first: a new gRPC channel every half second for minutes (a long
    restart) left the sync client hung in a later call."""
    deadline = time.monotonic() + timeout
    host, _, port = address.rpartition(":")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server on {address} not ready in {timeout}s")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=max(1.0, deadline - time.monotonic()))


def start_onramp(db: Path, ready_timeout: float = 60.0, config: Path | None = None,
                 module: Sequence[str] = ("server",), workers: int = 1) -> ServerProc:
    """Start ``python -m server serve --workers N`` (or ``python -m <module...> serve``, e.g. ``("bench.floor_server",
    "--variant", "nolog")``) on a free port with database ``db`` (and config file ``config``, e.g.
    :func:`write_scenario_config`'s; None = built-in defaults, demo catalog); wait (at most ``ready_timeout``
    seconds) until it accepts connections."""
    port = free_port()
    t = time.perf_counter()
    extra = ["--config", str(config)] if config is not None else []
    proc = subprocess.Popen([PY, "-m", *module, "serve", "--host", "127.0.0.1", "--port", str(port), "--db",
                             str(db), "--workers", str(workers), "--allow-insecure-no-auth", *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, proc, ready_timeout)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return ServerProc(proc, address, time.perf_counter() - t)


def start_bare() -> ServerProc:
    """Start :mod:`bench.bare_server` on a free port; wait until it accepts."""
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "bench.bare_server", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    wait_ready(address, proc)
    return ServerProc(proc, address, time.perf_counter() - t)


def run_client(module: str, args: list[str], timeout: float = 600.0) -> dict:
    """Run the client ``python -m module`` in its own process with ``args``; return its last JSON line
    (a failing client raises with its stderr in the message)."""
    out = subprocess.run([PY, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{module} exited with {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_loadgen(args: list[str], timeout: float = 600.0) -> dict:
    """Run :mod:`bench.loadgen` in its own process with ``args``; return its JSON result."""
    return run_client("bench.loadgen", args, timeout)


SCENARIOS = ("personalized", "capped")
DEMO_CATALOG = ROOT / "server" / "catalog" / "demo.toml"
HOUR_MS = 3_600_000
UNCAPPED = 1_000_000  # a per-day cap no benchmark run reaches
# Feature patterns of warm users (cycled by user index): varied contexts for the segmenter and the bandit,
# each feature used fewer than 5 times (the demo's feature_explored rule threshold) so no rule fires.
_FEATURE_MIX = (("reports", "automations", "dashboards"), ("integrations", "reports"), ("templates",),
                ("dashboards", "api", "reports", "custom_fields"))


def bench_catalog(demo: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The demo catalog (parsed TOML) with the limits lifted that would block repeated asks of one user:
    guardrails ``min_gap_minutes = 0`` and per-day caps (total, per channel) of :data:`UNCAPPED`; every step
    ``cooldown_hours = 0`` and ``max_per_day`` :data:`UNCAPPED`; and the experiment reduced to its tailored
    arm (share 1), so every warm user is decided by rules or the bandit rather than 45% generic / 10%
    holdout. Everything else (steps, core order, rules, personalisation thresholds, segments, rewards,
    bandit) stays as shipped."""
    doc = tomllib.loads(DEMO_CATALOG.read_text(encoding="utf-8")) if demo is None else json.loads(json.dumps(demo))
    g = doc.setdefault("guardrails", {})
    g["min_gap_minutes"] = 0
    g["max_per_day_total"] = UNCAPPED
    g["max_per_day_per_channel"] = {ch: UNCAPPED for ch in ("in_app", "email", "push")}
    for step in doc.get("steps", []):
        step["cooldown_hours"] = 0
        step["max_per_day"] = UNCAPPED
    for exp in doc.get("experiments", []):
        tailored = [a for a in exp.get("arms", []) if a.get("kind") == "tailored"][:1]
        if tailored:
            exp["arms"] = [{**tailored[0], "share": 1.0}]
    return doc


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """TOML text of a parsed document of the catalog's shape: top-level scalars, tables (one level of
    sub-tables) and arrays of tables; deeper values inline. ``tomllib.loads(to_toml(d)) == d``."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{_toml_key(k)}]"]
            lines += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in v.items() if not isinstance(b, dict)]
            for a, b in v.items():
                if isinstance(b, dict):
                    lines += ["", f"[{_toml_key(k)}.{_toml_key(a)}]"]
                    lines += [f"{_toml_key(c)} = {_toml_value(d)}" for c, d in b.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines += ["", f"[[{_toml_key(k)}]]"]
                lines += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in item.items()]
    return "\n".join(lines) + "\n"


def write_scenario_config(scenario: str, directory: Path) -> Path | None:
    """The config file Onramp is started with for ``scenario``: for ``personalized`` :func:`bench_catalog`
    written to ``directory/bench-catalog.toml`` (validated with the server's own parser first); for
    ``capped`` None (built-in defaults: the demo catalog as shipped)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    if scenario == "capped":
        return None
    from server.base.catalog import parse_catalog  # the server's validation: a bad override fails here, loudly

    doc = bench_catalog()
    parse_catalog(doc)
    path = directory / "bench-catalog.toml"
    path.write_text("# Onramp benchmark catalog: the demo catalog with caps, gaps and cooldowns lifted "
                    "(bench/common.py bench_catalog)\n" + to_toml(doc), encoding="utf-8")
    return path


def start_scenario_onramp(scenario: str, db: Path, ready_timeout: float = 60.0,
                          module: Sequence[str] = ("server",), workers: int = 1) -> ServerProc:
    """:func:`start_onramp` with ``scenario``'s config (written next to ``db``)."""
    return start_onramp(db, ready_timeout, write_scenario_config(scenario, db.parent), module, workers)


def warm_events(uid: str, i: int, now_ms: int) -> list[pb.Event]:
    """The event history of a personalised-scenario warm user: four sessions 30, 20, 8 and 1 hours ago (so
    at least two UTC days, gaps under the 24 h re-engagement rule), the three core steps completed in the
    first, and a few feature uses (pattern ``i`` of :data:`_FEATURE_MIX`, under 5 per feature) on web or
    mobile."""
    device = "mobile" if i % 3 == 0 else "desktop"
    channel = "ios" if device == "mobile" else "web"
    feats = _FEATURE_MIX[i % len(_FEATURE_MIX)]
    evs: list[pb.Event] = []
    for s, hours_ago in enumerate((30, 20, 8, 1)):
        ts = now_ms - hours_ago * HOUR_MS + i % 1000

        def ev(name: str, k: int, **kw: str) -> pb.Event:
            return pb.Event(event_id=f"w-{uid}-{s}-{k}", user_id=uid, name=name, timestamp_ms=ts + k,
                            channel=channel, device_type=device, **kw)

        evs.append(ev("session_start", 0))
        if s == 0:
            evs += [ev("step_completed", 1 + j, step_id=core) for j, core in
                    enumerate(("welcome", "profile_setup", "first_project"))]
        evs += [ev("feature_used", 10 + j, feature=f) for j, f in enumerate(feats)]
    return evs


def warm_users(address: str, n_users: int, prefix: str = "u", requests_per_user: int = 1,
               scenario: str = "capped") -> None:
    """Make ``n_users`` warm as in production: consent for tracking and personalization granted, events
    ingested (profiles exist), and ``requests_per_user`` GetNextStep decisions logged per user. ``capped``
    (the default, the earlier warm-up): one session of two events 50 minutes ago; ``personalized``: the
    history of :func:`warm_events`, past the personalisation threshold (>= 3 sessions on >= 2 days)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    now = int(time.time() * 1000)
    consent_ts = now - 3_600_000 if scenario == "capped" else now - 40 * HOUR_MS
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        futs = []
        for i in range(n_users):
            uid = f"{prefix}{i}"
            for purpose in ("tracking", "personalization"):
                futs.append(stub.SetConsent.future(pb.ConsentRequest(
                    user_id=uid, purpose=purpose, granted=True, source="bench", timestamp_ms=consent_ts)))
            if len(futs) > 400:
                [f.result(timeout=60) for f in futs]
                futs = []
        [f.result(timeout=60) for f in futs]
        batch_events = []
        for i in range(n_users):
            uid = f"{prefix}{i}"
            if scenario == "personalized":
                batch_events += warm_events(uid, i, now)
                continue
            ts = now - 3_000_000 + i % 1000
            batch_events += [pb.Event(event_id=f"w-{uid}-0", user_id=uid, name="session_start", timestamp_ms=ts,
                                      channel="web", device_type="desktop"),
                             pb.Event(event_id=f"w-{uid}-1", user_id=uid, name="feature_used", timestamp_ms=ts + 1,
                                      channel="web", device_type="desktop", feature="reports")]
        batches = [pb.EventBatch(sequence=j, events=batch_events[k:k + 500])
                   for j, k in enumerate(range(0, len(batch_events), 500))]
        for _ack in stub.IngestEventBatches(iter(batches), timeout=600):
            pass
        for _ in range(requests_per_user):
            futs = []
            for i in range(n_users):
                futs.append(stub.GetNextStep.future(pb.NextStepRequest(user_id=f"{prefix}{i}",
                                                                       timestamp_ms=int(time.time() * 1000))))
                if len(futs) > 200:
                    [f.result(timeout=60) for f in futs]
                    futs = []
            [f.result(timeout=60) for f in futs]


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the decisions table's ``timestamp_ms`` clock)."""
    return int(time.time() * 1000)


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to Onramp's database ``db``, closed on exit; usable while the server runs (it
    writes in WAL mode). sqlite3's own ``with conn`` only ends a transaction, it does not close."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def decisions_by_reason(db: Path, since_ms: int = 0) -> dict[str, int]:
    """Rows of Onramp's decisions table per ``reason`` logged at or after ``since_ms``, most first (read-only;
    the server writes in WAL mode, so this works while it runs)."""
    with read_only(db) as conn:
        return {r: int(n) for r, n in conn.execute(
            "SELECT reason, count(*) FROM decisions WHERE timestamp_ms >= ? GROUP BY reason ORDER BY 2 DESC, 1",
            (since_ms,))}


def bandit_propensities(db: Path, since_ms: int = 0) -> dict[str, float]:
    """Among ``bandit`` decisions logged at or after ``since_ms``: how many, the share with a logged
    propensity below 1 (an exploring policy's true probability) and the min/max propensity."""
    with read_only(db) as conn:
        n, below, lo, hi = conn.execute(
            "SELECT count(*), sum(propensity < 1.0), min(propensity), max(propensity) FROM decisions "
            "WHERE reason = 'bandit' AND timestamp_ms >= ?", (since_ms,)).fetchone()
    return {"n": int(n or 0), "below_1": (below or 0) / n if n else 0.0, "min": lo or 0.0, "max": hi or 0.0}


def reasons_line(reasons: Mapping[str, int]) -> str:
    """``bandit 1,234 (97.1%), capped 12 (0.9%)``: a reasons count for a report."""
    total = sum(reasons.values()) or 1
    return ", ".join(f"{k} {v:,} ({100 * v / total:.1f}%)" for k, v in reasons.items()) or "none"


@dataclass(frozen=True)
class Summary:
    """Median and spread (min, max) of one figure over repeats."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, spec: str = ",.0f", unit: str = "") -> str:
        """``median [min..max] (n=N)``."""
        return f"{self.median:{spec}}{unit} [{self.low:{spec}}..{self.high:{spec}}] (n={self.n})"


def summarize(values: list[float]) -> Summary:
    """Median and min/max of ``values``."""
    return Summary(statistics.median(values), min(values), max(values), len(values))


def ratio_table(raw: dict[str, dict[str, list[dict]]], fields: tuple[str, ...]) -> dict[str, dict[str, Summary]]:
    """Per load (``raw[load][server]`` = one result dict per repeat): each server's ``fields`` summarised as
    ``<server>_<field>``, plus onramp/bare ratios per repeat of throughput and p99 (``throughput_ratio``,
    ``p99_ratio``) and, when ``server_cpu_us_per_call`` is among the fields, of CPU per call (``cpu_ratio``;
    repeats where the bare server's CPU time read 0 are left out: it counts in 10 ms ticks); the same ratios
    of any other server but bare (e.g. ``floor``) are prefixed with its name (``floor_p99_ratio``)."""
    table: dict[str, dict[str, Summary]] = {}
    for key, by in raw.items():
        row = {f"{name}_{f}": summarize([r[f] for r in runs]) for name, runs in by.items() for f in fields}
        for name in [n for n in by if n != "bare"]:  # onramp, and bench.floor_server's variants when measured
            prefix = "" if name == "onramp" else f"{name}_"
            pairs = list(zip(by[name], by["bare"]))
            row[f"{prefix}throughput_ratio"] = summarize([o["throughput"] / b["throughput"] for o, b in pairs])
            row[f"{prefix}p99_ratio"] = summarize([o["p99_ms"] / b["p99_ms"] for o, b in pairs])
            if "server_cpu_us_per_call" in fields:
                row[f"{prefix}cpu_ratio"] = summarize(
                    [o["server_cpu_us_per_call"] / b["server_cpu_us_per_call"] for o, b in pairs
                     if b["server_cpu_us_per_call"] > 0] or [float("nan")])
        table[key] = row
    return table


def load_average() -> str:
    """The 1/5/15-minute load average of the machine."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
