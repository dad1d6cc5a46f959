"""The load generator, run in its own process: a grpc.aio client that drives GetNextStep at a fixed rate
(open loop, latency counted from each request's scheduled time) or closed loop (N workers back to back),
or streams event batches over IngestEventBatches on S streams. Prints one JSON line. Run:
``python -m bench.loadgen serving --target HOST:PORT --rate 1000 --duration 5`` or
``python -m bench.loadgen ingest --target HOST:PORT --streams 4 --duration 5``."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

ID_KINDS = ("uuid", "ordered")  # ingest event ids: random uuid4 hex (as onramp_client) or ordered counters


def latency_stats(lat_s: list[float], ok: int, errors: int, elapsed: float,
                  ok_lat_s: list[float] | None = None) -> dict:
    """Throughput (successful calls/s) and p50/p95/p99 in milliseconds over *every* finished call, a
    failed one counted with its time to failure (e.g. the whole deadline), so an overloaded server cannot
    look fast by failing its slowest calls; ``ok_p99_ms`` is the p99 of the successful calls alone."""
    a = np.asarray(lat_s) * 1000.0 if lat_s else np.zeros(1)
    ok_a = np.asarray(ok_lat_s) * 1000.0 if ok_lat_s else (a if ok_lat_s is None else np.zeros(1))
    return {"ok": ok, "errors": errors, "elapsed_s": elapsed, "throughput": ok / elapsed,
            "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "ok_p99_ms": float(np.percentile(ok_a, 99))}


SEPARATE_CONNECTION = ("grpc.use_local_subchannel_pool", 1)  # channels to one target otherwise share one


async def serving(target: str, rate: float, duration: float, concurrency: int, users: int, prefix: str,
                  deadline_s: float = 10.0, channels: int = 4) -> dict:
    """GetNextStep load: fixed ``rate`` (req/s, open loop) or closed loop when ``rate`` is 0; each call has
    a ``deadline_s`` deadline. Calls take turns over ``channels`` channels, each its own connection: the
    kernel spreads connections, not calls, over the workers of ``onramp serve --workers N``."""
    async with contextlib.AsyncExitStack() as stack:
        chans = [await stack.enter_async_context(grpc.aio.insecure_channel(target, options=[SEPARATE_CONNECTION]))
                 for _ in range(max(1, channels))]
        stubs = itertools.cycle([pb_grpc.OnrampStub(ch) for ch in chans])
        lat: list[float] = []  # every finished call (failed ones: time to failure)
        ok_lat: list[float] = []
        counts = {"ok": 0, "err": 0}
        codes: dict[str, int] = {}
        uid = itertools.count()

        async def call(t0: float, stub: pb_grpc.OnrampStub | None = None) -> None:
            req = pb.NextStepRequest(user_id=f"{prefix}{next(uid) % users}", timestamp_ms=int(time.time() * 1000))
            try:
                await (stub or next(stubs)).GetNextStep(req, timeout=deadline_s)
                took = time.perf_counter() - t0
                ok_lat.append(took)
                counts["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                took = time.perf_counter() - t0
                counts["err"] += 1
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            lat.append(took)

        for ch in chans:  # connect every channel with one call each (not counted; reported as connect_calls)
            await call(time.perf_counter(), pb_grpc.OnrampStub(ch))
        lat.clear()
        ok_lat.clear()
        counts.update(ok=0, err=0)
        codes.clear()
        start = time.perf_counter()
        end = start + duration
        if rate > 0:
            tasks = []
            n = int(rate * duration)
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(call(due)))
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + deadline_s + 30)
        else:
            async def worker() -> None:
                while time.perf_counter() < end:
                    await call(time.perf_counter())
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        out = latency_stats(lat, counts["ok"], counts["err"], elapsed, ok_lat)
        out.update(mode="serving", rate=rate, concurrency=concurrency, error_codes=codes, deadline_s=deadline_s,
                   channels=len(chans), connect_calls=len(chans))
        return out


async def ingest(target: str, streams: int, duration: float, batch: int, window: int, users: int,
                 prefix: str, max_events: int = 0, ids: str = "uuid") -> dict:
    """Stream batches of ``batch`` events on ``streams`` IngestEventBatches calls for ``duration`` seconds,
    at most ``window`` unacked batches per stream (and at most ``max_events`` events in all when > 0);
    count acknowledged events. Event ids are ``uuid`` (random uuid4 hex, as ``onramp_client`` makes them:
    each lands at a random place of the server's event_id index) or ``ordered`` (run-prefixed counters,
    which the index appends: the optimistic case)."""
    run = f"{time.time_ns():x}"
    if ids not in ID_KINDS:
        raise ValueError(f"ids: expected one of {', '.join(ID_KINDS)} (got {ids!r})")
    random_ids = ids == "uuid"
    totals = {"accepted": 0, "duplicates": 0, "dropped": 0, "rejected": 0, "sent": 0}
    # One connection per stream, as separate clients would have (onramp_client's channels too): with several
    # workers behind one port the kernel spreads connections (not calls) over them.
    chans = [grpc.aio.insecure_channel(target, options=[SEPARATE_CONNECTION]) for _ in range(streams)]
    try:
        start, cpu0 = time.perf_counter(), time.process_time()
        end = start + duration

        async def one_stream(s: int) -> None:
            stub = pb_grpc.OnrampStub(chans[s])
            sem = asyncio.Semaphore(window)
            seq = itertools.count()

            async def batches() -> AsyncIterator[pb.EventBatch]:
                while time.perf_counter() < end and not (max_events and totals["sent"] >= max_events):
                    await sem.acquire()
                    q = next(seq)
                    now = int(time.time() * 1000)
                    evs = [pb.Event(event_id=uuid.uuid4().hex if random_ids else f"{run}-{s}-{q}-{j}",
                                    user_id=f"{prefix}{(q * batch + j) % users}", name="feature_used",
                                    timestamp_ms=now, channel="web", device_type="desktop", feature="reports")
                           for j in range(batch)]
                    totals["sent"] += batch
                    yield pb.EventBatch(sequence=q, events=evs)

            async for ack in stub.IngestEventBatches(batches(), timeout=duration + 60):
                totals["accepted"] += ack.accepted
                totals["duplicates"] += ack.duplicates
                totals["dropped"] += sum(d.count for d in ack.dropped)
                totals["rejected"] += len(ack.rejected)
                sem.release()

        await asyncio.gather(*(one_stream(s) for s in range(streams)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    acked = totals["accepted"] + totals["duplicates"] + totals["dropped"] + totals["rejected"]
    return {"mode": "ingest", "streams": streams, "batch": batch, "elapsed_s": elapsed, **totals,
            "acked": acked, "acked_per_s": acked / elapsed, "accepted_per_s": totals["accepted"] / elapsed,
            "client_cpu_s": cpu}


def main() -> None:
    """Command line entry point; prints one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode", choices=("serving", "ingest"))
    ap.add_argument("--target", required=True)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=0.0, help="req/s; 0 = closed loop")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop workers")
    ap.add_argument("--channels", type=int, default=4,
                    help="serving: channels, each its own connection, the calls take turns over (reach every worker)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--deadline", type=float, default=10.0, help="serving: deadline of each call, seconds")
    ap.add_argument("--prefix", default="u")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--max-events", type=int, default=0, help="ingest: stop after this many events (0 = no cap)")
    ap.add_argument("--ids", choices=ID_KINDS, default="uuid",
                    help="ingest: event ids, random uuid4 hex as onramp_client makes them, or ordered counters")
    a = ap.parse_args()
    if a.mode == "serving":
        res = asyncio.run(serving(a.target, a.rate, a.duration, a.concurrency, a.users, a.prefix, a.deadline,
                                  a.channels))
    else:
        res = asyncio.run(ingest(a.target, a.streams, a.duration, a.batch, a.window, a.users, a.prefix,
                                 a.max_events, a.ids))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
