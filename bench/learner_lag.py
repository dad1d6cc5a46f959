"""Learner lag: how long from an outcome's report until every probed worker decides with a model that includes
it. Run: ``python -m bench lag`` (``--rate`` outcomes/s, ``--workers N``).

The bench starts Onramp (personalised scenario), warms users, and runs :func:`client` in its own process:

1. it asks GetNextStep ``rate * duration`` times (closed loop) to have decisions to reward;
2. while it reports an outcome for each of them at ``rate`` per second (several connections), it
   - reads the database (read-only) every few milliseconds for new ``model_snapshots``: each snapshot names the
     last ``outcome_log`` id its models include, and
   - asks GetNextStep on ``probes`` connections of their own every ``probe_ms``: the answer's
     ``policy_version`` ends with ``@<snapshot version>`` the answering worker decided with;
3. after the run it reads each outcome's ``outcome_log`` id.

An outcome's lag is from the moment its ReportOutcome was sent (before its commit: an upper bound) until the
first probe answer, on every probe connection, with a snapshot that includes it. Probes ask every ``probe_ms``,
so a figure can be late by up to that much. With ``--workers N`` the kernel hands each probe connection to a
worker; the report says how many connections there were, not which worker each reached.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import run_client, start_scenario_onramp, summarize, warm_users
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

# Each channel keeps a connection of its own (grpc otherwise shares one between channels to one target).
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def snapshot_version(policy_version: str) -> int:
    """The snapshot a decision was drawn from: the number after the last ``@`` of its ``policy_version``.

    >>> snapshot_version("linucb-1a2b@17")
    17
    """
    return int(policy_version.rpartition("@")[2])


class SnapshotWatch(threading.Thread):
    """Reads the database every ``interval_s`` for snapshots newer than the last seen; keeps, in version order,
    each snapshot's version and the last ``outcome_log`` id its models include."""

    def __init__(self, db: str, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True, name="snapshot-watch")
        self.db, self.interval_s = db, interval_s
        self.versions: list[int] = []
        self.outcome_pos: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            while not self.stop.wait(self.interval_s):
                last = self.versions[-1] if self.versions else 0
                for version, positions in conn.execute(
                        "SELECT version, positions FROM model_snapshots WHERE version > ? ORDER BY version", (last,)):
                    self.versions.append(int(version))
                    self.outcome_pos.append(int(json.loads(positions).get("outcomes", 0)))
        finally:
            conn.close()

    def first_including(self, outcome_id: int) -> int | None:
        """The first snapshot version whose models include outcome ``outcome_id`` (None: none seen)."""
        # positions only grow, except that an erasure can publish anew; the bench erases nobody
        i = bisect.bisect_left(self.outcome_pos, outcome_id)
        return self.versions[i] if i < len(self.versions) else None


def lag_ms(sent_s: float, version: int | None, probes: list[list[tuple[float, int]]]) -> float | None:
    """Milliseconds from ``sent_s`` until every probe connection got an answer from snapshot ``version`` or newer
    (None: some connection never did). ``probes`` holds, per connection, (answer time, snapshot version) in time
    order.

    >>> lag_ms(1.0, 3, [[(1.1, 2), (1.2, 3)], [(1.15, 4)]])
    200.0
    """
    if version is None:
        return None
    worst = sent_s
    for answers in probes:
        t = next((t for t, v in answers if v >= version and t >= sent_s), None)
        if t is None:
            return None
        worst = max(worst, t)
    return round((worst - sent_s) * 1000.0, 6)


async def _decide(stubs: list[pb_grpc.OnrampStub], n: int, users: int, prefix: str) -> list[str]:
    """``n`` decisions for the warm users, closed loop over every stub."""
    ids: list[str] = []
    k = itertools.count()

    async def worker(stub: pb_grpc.OnrampStub) -> None:
        while (i := next(k)) < n:
            resp = await stub.GetNextStep(pb.NextStepRequest(user_id=f"{prefix}{i % users}"), timeout=30)
            ids.append(resp.decision_id)
    await asyncio.gather(*(worker(s) for s in stubs * 8))
    return ids


async def _client(target: str, db: str, rate: float, duration: float, users: int, prefix: str, connections: int,
                  probes: int, probe_ms: float, settle_s: float, seed: int) -> dict:
    rng = random.Random(seed)
    chans = [grpc.aio.insecure_channel(target, options=_OWN_CONNECTION) for _ in range(connections + probes)]
    try:
        stubs = [pb_grpc.OnrampStub(c) for c in chans]
        senders, probers = stubs[:connections], stubs[connections:]
        decision_ids = await _decide(senders, int(rate * duration), users, prefix)
        watch = SnapshotWatch(db)
        watch.start()
        answers: list[list[tuple[float, int]]] = [[] for _ in probers]
        done = asyncio.Event()

        async def probe(i: int, stub: pb_grpc.OnrampStub) -> None:
            while not done.is_set():
                resp = await stub.GetNextStep(pb.NextStepRequest(user_id=f"probe{i}"), timeout=30)
                answers[i].append((time.perf_counter(), snapshot_version(resp.policy_version)))
                await asyncio.sleep(probe_ms / 1000)
        probe_tasks = [asyncio.ensure_future(probe(i, s)) for i, s in enumerate(probers)]

        sent: dict[str, float] = {}
        errors: dict[str, int] = {}

        async def report(decision_id: str, stub: pb_grpc.OnrampStub) -> None:
            sent[decision_id] = time.perf_counter()
            try:
                await stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision_id, reward=float(rng.random() < 0.3),
                                                           outcome="bench"), timeout=30)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                del sent[decision_id]

        start = time.perf_counter()
        tasks = []
        for i, decision_id in enumerate(decision_ids):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(report(decision_id, senders[i % len(senders)])))
        await asyncio.gather(*tasks)
        send_s = time.perf_counter() - start
        await asyncio.sleep(settle_s)  # the last outcomes' snapshots reach the probes
        done.set()
        await asyncio.gather(*probe_tasks)
        watch.stop.set()
        watch.join()
    finally:
        for c in chans:
            await c.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        outcome_id = dict(conn.execute("SELECT decision_id, id FROM outcome_log").fetchall())
    finally:
        conn.close()
    lags = [lag_ms(t, watch.first_including(outcome_id[d]), answers) for d, t in sent.items() if d in outcome_id]
    measured = [x for x in lags if x is not None]
    a = np.asarray(measured) if measured else np.zeros(1)
    return {"rate": rate, "duration_s": duration, "sent": len(sent), "send_s": send_s, "errors": errors,
            "not_logged": len(sent) - len(lags), "never_seen": len(lags) - len(measured),
            "snapshots": len(watch.versions), "probes": probes, "probe_ms": probe_ms,
            "probe_answers": [len(x) for x in answers],
            "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, rate: float = 1000.0,
        workers: int = 1, users: int | None = None) -> dict:
    """Start Onramp with ``workers`` workers and measure the lag ``repeats`` times, each on a fresh database."""
    duration = duration if duration is not None else (2.0 if quick else 10.0)
    users = users if users is not None else (100 if quick else 1000)
    runs = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="onramp-lag-") as tmp:
            db = Path(tmp) / "lag.db"
            srv = start_scenario_onramp("personalized", db, workers=workers)
            try:
                warm_users(srv.address, users, scenario="personalized")
                runs.append(run_client("bench.learner_lag", [
                    "--target", srv.address, "--db", str(db), "--rate", str(rate), "--duration", str(duration),
                    "--users", str(users), "--seed", str(r)]))
            finally:
                srv.stop()
    return {"rate": rate, "workers": workers, "duration_s": duration, "users": users, "repeats": repeats,
            "p50_ms": summarize([x["p50_ms"] for x in runs]), "p99_ms": summarize([x["p99_ms"] for x in runs]),
            "max_ms": summarize([x["max_ms"] for x in runs]), "runs": runs}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    first = res["runs"][0]
    out = [f"learner lag: outcome reported -> every probe connection decides with a snapshot including it; "
           f"{res['rate']:.0f} outcomes/s for {res['duration_s']} s, {res['workers']} worker(s), "
           f"{first['probes']} probe connections every {first['probe_ms']:.0f} ms, medians [min..max] of "
           f"{res['repeats']} runs",
           f"  p50 {res['p50_ms'].fmt('.0f', ' ms')}  p99 {res['p99_ms'].fmt('.0f', ' ms')}  "
           f"max {res['max_ms'].fmt('.0f', ' ms')}  (target: p99 <= 1000 ms)"]
    for i, x in enumerate(res["runs"]):
        out.append(f"  run {i}: {x['sent']} outcomes in {x['send_s']:.2f} s ({x['sent'] / x['send_s']:,.0f}/s), "
                   f"{x['snapshots']} snapshots, errors {x['errors'] or 0}, not logged {x['not_logged']}, "
                   f"never seen by every probe {x['never_seen']}")
    return out


def main(argv: list[str] | None = None) -> int:
    """The client process (started by :func:`run`); prints one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m bench.learner_lag", description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--db", required=True, help="the server's database file, read-only")
    ap.add_argument("--rate", type=float, default=1000.0, help="outcomes per second")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--prefix", default="u")
    ap.add_argument("--connections", type=int, default=4, help="connections that report outcomes")
    ap.add_argument("--probes", type=int, default=4, help="connections that probe the snapshot in use")
    ap.add_argument("--probe-ms", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of probing after the last outcome")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = asyncio.run(_client(a.target, a.db, a.rate, a.duration, a.users, a.prefix, a.connections, a.probes,
                              a.probe_ms, a.settle, a.seed))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
