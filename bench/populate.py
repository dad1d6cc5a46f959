"""Builds many users' profiles on a running server through its public API, in its own process (so the
client does not compete with the measured server inside one interpreter): tracking consent with one
``SetConsent`` call per user, hundreds in flight (the writer group-commits them), then events streamed over
several ``IngestEventBatches`` calls. Prints one JSON line. Run:
``python -m bench.populate --target HOST:PORT --users 1000000 --events 1000000 --prefix m``."""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


async def grant_consent(target: str, users: int, prefix: str, in_flight: int = 256, channels: int = 2) -> dict:
    """Tracking consent for users ``prefix0 .. prefix{users-1}`` with ``in_flight`` calls outstanding,
    spread over ``channels`` channels; returns the count and the seconds taken."""
    at = int(time.time() * 1000) - 3_600_000
    chans = [grpc.aio.insecure_channel(target) for _ in range(max(1, channels))]
    stubs = [pb_grpc.OnrampStub(ch) for ch in chans]
    nxt = iter(range(users))
    done = 0
    start = time.perf_counter()

    async def worker(w: int) -> None:
        nonlocal done
        stub = stubs[w % len(stubs)]
        for i in nxt:
            await stub.SetConsent(pb.ConsentRequest(user_id=f"{prefix}{i}", purpose="tracking", granted=True,
                                                    source="bench", timestamp_ms=at), timeout=120)
            done += 1

    try:
        await asyncio.gather(*(worker(w) for w in range(in_flight)))
    finally:
        for ch in chans:
            await ch.close()
    elapsed = time.perf_counter() - start
    return {"consents": done, "consent_s": elapsed, "consents_per_s": done / elapsed if elapsed else 0.0}


def event_user(k: int, users: int) -> int:
    """The user of the ``k``-th event: round robin, so every user gets ``events // users`` events (+1)."""
    return k % users


async def ingest(target: str, users: int, prefix: str, events: int, streams: int = 4, batch: int = 500,
                 window: int = 4) -> dict:
    """Stream ``events`` events (``feature_used``/reports, web, desktop, as the ingest benchmark) for users
    ``prefix0..`` round robin, split into ``streams`` contiguous ranges, one ``IngestEventBatches`` call each,
    at most ``window`` unacked batches per stream. Returns acknowledged counts and the seconds taken."""
    run = f"{time.time_ns():x}"
    totals = {"accepted": 0, "duplicates": 0, "dropped": 0, "rejected": 0}
    streams = max(1, min(streams, events or 1))
    bounds = [events * s // streams for s in range(streams + 1)]
    start = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.OnrampStub(ch)

        async def one_stream(s: int) -> None:
            sem = asyncio.Semaphore(window)
            lo, hi = bounds[s], bounds[s + 1]

            async def batches() -> AsyncIterator[pb.EventBatch]:
                for q, k0 in zip(itertools.count(), range(lo, hi, batch)):
                    await sem.acquire()
                    now = int(time.time() * 1000)
                    evs = [pb.Event(event_id=f"{run}-{k}", user_id=f"{prefix}{event_user(k, users)}",
                                    name="feature_used", timestamp_ms=now, channel="web", device_type="desktop",
                                    feature="reports") for k in range(k0, min(k0 + batch, hi))]
                    yield pb.EventBatch(sequence=q, events=evs)

            async for ack in stub.IngestEventBatches(batches(), timeout=7200):
                totals["accepted"] += ack.accepted
                totals["duplicates"] += ack.duplicates
                totals["dropped"] += sum(d.count for d in ack.dropped)
                totals["rejected"] += len(ack.rejected)
                sem.release()

        if events:
            await asyncio.gather(*(one_stream(s) for s in range(streams)))
    elapsed = time.perf_counter() - start
    return {"events": events, "streams": streams, "ingest_s": elapsed,
            "accepted_per_s": totals["accepted"] / elapsed if elapsed else 0.0, **totals}


async def populate(target: str, users: int, events: int, prefix: str, in_flight: int, streams: int,
                   batch: int) -> dict:
    """Consent for every user, then the events; one dict of counts and timings."""
    c = await grant_consent(target, users, prefix, in_flight)
    i = await ingest(target, users, prefix, events, streams, batch)
    return {"users": users, **c, **i, "total_s": c["consent_s"] + i["ingest_s"]}


def main() -> None:
    """Command line entry point; prints one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--prefix", default="m")
    ap.add_argument("--in-flight", type=int, default=256, help="SetConsent calls outstanding at once")
    ap.add_argument("--streams", type=int, default=4, help="IngestEventBatches calls at once")
    ap.add_argument("--batch", type=int, default=500, help="events per batch")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(populate(a.target, a.users, a.events, a.prefix, a.in_flight, a.streams,
                                          a.batch))))


if __name__ == "__main__":
    main()
