"""Resident memory of the Onramp server holding N users' profiles (bytes per user) and its restart time
with E events in the log. Users are given tracking consent, then events are streamed by the separate load
generator; the server is stopped and started again on the same database."""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import run_loadgen, start_onramp, summarize
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


async def grant_consent(address: str, users: int, prefix: str, in_flight: int = 128) -> None:
    """Tracking consent for ``users`` users (so their events are accepted and build profiles)."""
    now = int(time.time() * 1000) - 3_600_000
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        nxt = iter(range(users))

        async def worker() -> None:
            for i in nxt:
                await stub.SetConsent(pb.ConsentRequest(user_id=f"{prefix}{i}", purpose="tracking", granted=True,
                                                        source="bench", timestamp_ms=now), timeout=60)
        await asyncio.gather(*(worker() for _ in range(in_flight)))


def first_answer_s(address: str, timeout: float = 120.0) -> float:
    """Seconds until GetNextStep answers on ``address``."""
    t = time.perf_counter()
    with grpc.insecure_channel(address) as ch:
        pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="m0", timestamp_ms=int(time.time() * 1000)),
                                           timeout=timeout)
    return time.perf_counter() - t


def one(users: int, events: int, tmp: Path) -> dict:
    """One measurement: RSS before/after ``users`` profiles built from ``events`` events, then restart time."""
    db = tmp / f"memory-{users}-{time.time_ns()}.db"
    srv = start_onramp(db)
    try:
        first_answer_s(srv.address)
        rss0 = srv.rss_bytes()
        asyncio.run(grant_consent(srv.address, users, "m"))
        ing = run_loadgen(["ingest", "--target", srv.address, "--streams", "1", "--duration", "3600",
                           "--batch", "500", "--users", str(users), "--prefix", "m", "--max-events", str(events)],
                          timeout=7200)
        time.sleep(1.0)
        rss1 = srv.rss_bytes()
    finally:
        srv.stop(timeout=120)
    t = time.perf_counter()
    again = start_onramp(db)
    try:
        ready = time.perf_counter() - t
        first = ready + first_answer_s(again.address)
        rss2 = again.rss_bytes()
    finally:
        again.stop(timeout=120)
    return {"users": users, "events": events, "accepted": ing["accepted"], "rss_empty": rss0, "rss_loaded": rss1,
            "bytes_per_user": (rss1 - rss0) / users, "restart_ready_s": ready, "restart_first_answer_s": first,
            "rss_after_restart": rss2, "bytes_per_user_after_restart": (rss2 - rss0) / users,
            "db_bytes": db.stat().st_size}


def run(quick: bool = False, repeats: int = 3, sizes: list[tuple[int, int]] | None = None) -> dict:
    """Measure each (users, events) size ``repeats`` times. Defaults: quick 1,000 users / 5,000 events;
    otherwise 10,000 / 100,000 (the 100k and 1M user runs are asked for with ``--full``)."""
    sizes = sizes or ([(1000, 5000)] if quick else [(10_000, 100_000)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        for users, events in sizes:
            runs = [one(users, events, Path(tmp)) for _ in range(repeats)]
            rows.append({"users": users, "events": events, "accepted": summarize([r["accepted"] for r in runs]),
                         **{f: summarize([r[f] for r in runs]) for f in (
                             "rss_empty", "rss_loaded", "bytes_per_user", "restart_ready_s", "restart_first_answer_s",
                             "rss_after_restart", "bytes_per_user_after_restart", "db_bytes")}})
    return {"repeats": repeats, "rows": rows}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"memory: server RSS and restart, medians [min..max] of {res['repeats']} repeats"]
    for r in res["rows"]:
        mb = 1 / 2**20
        out.append(f"  {r['users']:,} users, {r['events']:,} events (accepted {r['accepted'].median:,.0f}): "
                   f"RSS empty {r['rss_empty'].median * mb:,.1f} MiB -> loaded {r['rss_loaded'].median * mb:,.1f} MiB; "
                   f"bytes/user {r['bytes_per_user'].fmt(',.0f')}")
        out.append(f"    restart: ready {r['restart_ready_s'].fmt('.2f', ' s')}, first GetNextStep answer "
                   f"{r['restart_first_answer_s'].fmt('.2f', ' s')}; RSS after restart "
                   f"{r['rss_after_restart'].median * mb:,.1f} MiB (bytes/user {r['bytes_per_user_after_restart'].fmt(',.0f')}); "
                   f"db {r['db_bytes'].median * mb:,.1f} MiB")
    return out
