"""Resident memory of the Onramp server holding N users' profiles (bytes per user) and its restart time
with E events in the log. Profiles are built through the public API only, by :mod:`bench.populate` in its
own process (tracking consent with one SetConsent per user, hundreds in flight; then the events over several
IngestEventBatches streams) on one worker; the server is then stopped and started again on the same database
(nothing is replayed: profiles, shown history and models are read from the database), with one worker and with
the default of ``onramp serve`` (one worker per core: a supervisor, its workers and the learner process)."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import load_average, run_client, start_onramp, summarize, wait_workers
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

PREFIX = "m"
RESTART_FIELDS = ("ready_s", "first_answer_s", "all_workers_s", "rss", "bytes_per_user")
RESTART_WORKERS = (1, 0)  # one worker, and onramp serve's default (0 = one per core)


def first_answer_s(address: str, timeout: float = 600.0) -> float:
    """Seconds until GetNextStep answers on ``address``."""
    t = time.perf_counter()
    with grpc.insecure_channel(address) as ch:
        pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id=f"{PREFIX}0",
                                                              timestamp_ms=int(time.time() * 1000)), timeout=timeout)
    return time.perf_counter() - t


def populate(address: str, users: int, events: int, in_flight: int = 256, streams: int = 4) -> dict:
    """Build ``users`` profiles from ``events`` events on the server at ``address`` with :mod:`bench.populate`
    (a separate process); its counts and timings."""
    return run_client("bench.populate", ["--target", address, "--users", str(users), "--events", str(events),
                                         "--prefix", PREFIX, "--in-flight", str(in_flight),
                                         "--streams", str(streams)], timeout=4 * 3600)


def restart(db: Path, rss_empty: int, users: int, workers: int = 1) -> dict:
    """Start a server on ``db`` with ``workers`` (0 = one per core): seconds to accepting connections, to the
    first GetNextStep answer and until every worker listens; RSS then (all its processes) and bytes per user
    over ``rss_empty`` (one worker's)."""
    load = load_average()
    t = time.perf_counter()
    srv = start_onramp(db, ready_timeout=3600, workers=workers, all_workers=False)
    try:
        ready = time.perf_counter() - t
        first = ready + first_answer_s(srv.address)
        wait_workers(srv, timeout=3600)
        every = time.perf_counter() - t
        rss = srv.rss_bytes()
    finally:
        srv.stop(timeout=600)
    return {"workers": srv.workers, "ready_s": ready, "first_answer_s": first, "all_workers_s": every, "rss": rss,
            "bytes_per_user": (rss - rss_empty) / users, "load": load}


def one(users: int, events: int, tmp: Path, restarts: int = 1) -> dict:
    """One measurement on a fresh database: RSS before/after ``users`` profiles built from ``events`` events,
    then ``restarts`` restarts on that database."""
    db = tmp / f"memory-{users}-{time.time_ns()}.db"
    load_start = load_average()
    srv = start_onramp(db)
    try:
        fresh_start = srv.started_s
        first_answer_s(srv.address)
        rss0 = srv.rss_bytes()
        build = populate(srv.address, users, events)
        time.sleep(1.0)
        rss1 = srv.rss_bytes()
    finally:
        srv.stop(timeout=600)
    rounds: dict[str, list[dict]] = {}
    for _ in range(restarts):
        for w in RESTART_WORKERS:
            rounds.setdefault(str(w), []).append(restart(db, rss0, users, w))
    size = db.stat().st_size
    for f in db.parent.glob(f"{db.name}*"):
        f.unlink()
    return {"users": users, "events": events, "accepted": build["accepted"], "build": build,
            "rss_empty": rss0, "rss_loaded": rss1, "bytes_per_user": (rss1 - rss0) / users, "restarts": rounds,
            "fresh_start_s": fresh_start, "db_bytes": size, "load_start": load_start, "load_end": load_average()}


def _restart_summary(runs: list[dict], workers: int) -> dict:
    rows = [r for run in runs for r in run["restarts"].get(str(workers), [])]
    return {f: summarize([r[f] for r in rows]) for f in (*RESTART_FIELDS, "workers")} if rows else {}


def run(quick: bool = False, repeats: int = 3, sizes: list[tuple[int, int]] | None = None,
        restarts: int = 1, partial: Path | None = None) -> dict:
    """Measure each (users, events) size ``repeats`` times. Defaults: quick 1,000 users / 5,000 events;
    otherwise 10,000 / 100,000 (the 100k and 1M user runs are asked for with ``--full``). Each finished
    measurement is also appended as one JSON line to ``partial`` (long runs keep what they measured)."""
    sizes = sizes or ([(1000, 5000)] if quick else [(10_000, 100_000)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="onramp-bench-", dir=os.environ.get("ONRAMP_BENCH_TMP")) as tmp:
        for users, events in sizes:
            runs = []
            for _ in range(repeats):
                runs.append(one(users, events, Path(tmp), restarts))
                if partial is not None:
                    with partial.open("a") as f:
                        f.write(json.dumps(runs[-1]) + "\n")
            plain, default = _restart_summary(runs, 1), _restart_summary(runs, 0)
            rows.append({
                "users": users, "events": events, "accepted": summarize([r["accepted"] for r in runs]),
                **{f: summarize([r[f] for r in runs]) for f in ("rss_empty", "rss_loaded", "bytes_per_user",
                                                               "fresh_start_s", "db_bytes")},
                **{f"build_{f}": summarize([r["build"][f] for r in runs])
                   for f in ("consent_s", "consents_per_s", "ingest_s", "accepted_per_s", "total_s")},
                "restart_ready_s": plain["ready_s"], "restart_first_answer_s": plain["first_answer_s"],
                "rss_after_restart": plain["rss"], "bytes_per_user_after_restart": plain["bytes_per_user"],
                "default_restart": default,
                "loads": [(r["load_start"], r["load_end"]) for r in runs], "raw": runs})
    return {"repeats": repeats, "restarts": restarts, "rows": rows}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    mb = 1 / 2**20
    out = [f"memory: server RSS and restart, medians [min..max] of {res['repeats']} builds "
           f"x {res.get('restarts', 1)} restarts"]
    for r in res["rows"]:
        out.append(f"  {r['users']:,} users, {r['events']:,} events (accepted {r['accepted'].median:,.0f}): "
                   f"RSS empty {r['rss_empty'].median * mb:,.1f} MiB -> loaded {r['rss_loaded'].median * mb:,.1f} MiB; "
                   f"bytes/user {r['bytes_per_user'].fmt(',.0f')}")
        out.append(f"    build through the API: consent {r['build_consent_s'].fmt(',.1f', ' s')} "
                   f"({r['build_consents_per_s'].median:,.0f} calls/s), ingest {r['build_ingest_s'].fmt(',.1f', ' s')} "
                   f"({r['build_accepted_per_s'].median:,.0f} ev/s), total {r['build_total_s'].fmt(',.1f', ' s')}")
        out.append(f"    start of a fresh server on an empty database (baseline): {r['fresh_start_s'].fmt('.2f', ' s')}")
        out.append(f"    restart, 1 worker: ready {r['restart_ready_s'].fmt('.2f', ' s')}, first GetNextStep answer "
                   f"{r['restart_first_answer_s'].fmt('.2f', ' s')}; RSS after restart "
                   f"{r['rss_after_restart'].median * mb:,.1f} MiB (bytes/user {r['bytes_per_user_after_restart'].fmt(',.0f')}); "
                   f"db {r['db_bytes'].median * mb:,.1f} MiB")
        d = r.get("default_restart")
        if d:
            out.append(f"    restart with onramp serve's default workers ({d['workers'].median:.0f} workers + the "
                       f"learner process): first worker ready {d['ready_s'].fmt('.2f', ' s')}, first GetNextStep "
                       f"answer {d['first_answer_s'].fmt('.2f', ' s')}, every worker listening "
                       f"{d['all_workers_s'].fmt('.2f', ' s')}; RSS of all processes {d['rss'].median * mb:,.1f} MiB")
        out.append("    load average at start/end of each build: "
                   + "; ".join(f"{a} / {b}" for a, b in r["loads"]))
    return out
