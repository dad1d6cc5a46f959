"""What one stored event costs the writer as the log grows: in process, on a scratch database, transactions of
``--group`` events as the ingest pipeline's writer thread runs them, per slice of ``--every`` events: CPU and
wall microseconds per event and the database size.

Variants: the event log as it is (``SqliteStore.append_new_events``: the dedupe window's levels and runs, the
append-only ``events`` table and its subject index; server/store/events.py) and as it was before
(``v1-``: a UNIQUE index on ``events.event_id``, a SELECT ... IN duplicate check, then the INSERT), each with
event ids random (uuid4 hex, as ``onramp_client`` makes them) or ordered (counters). Every event is inside
the dedupe window (event times of the last hours), so the window holds every id: the worst case for its
levels. Run: ``python -m bench.store_scaling --events 10000000``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from server.base.clock import now_ms
from server.store.sqlite import EVENT_COLUMNS, SqliteStore, insert_flat

VARIANTS = ("uuid", "ordered", "v1-uuid", "v1-ordered")
V1_INDEX = "idx_v1_events_event_id"


def _v1_append(store: SqliteStore, ids: list[str], flat: list[object]) -> None:
    """The writer's path before the dedupe window: look every id up in the unique index, then insert."""
    for k in range(0, len(ids), 5000):
        part = ids[k:k + 5000]
        store.conn.execute(f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(part))})",
                           part).fetchall()
    insert_flat(store.conn, "events", EVENT_COLUMNS, flat)


def measure(variant: str, directory: Path, events: int, group: int = 8000, every: int = 200_000,
            users: int = 2000, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Store ``events`` events of ``users`` subjects in transactions of ``group``; one row per ``every``
    events: stored count, CPU and wall µs per event over that slice, the slice's longest transaction (wall
    and CPU ms, from its BEGIN to its COMMIT: how long the writer holds every ack), database MB (each also
    passed to ``on_row`` as it is measured: a 10M run takes a quarter of an hour)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)} (got {variant!r})")
    path = directory / f"{variant}.db"
    store = SqliteStore(path)
    v1 = variant.startswith("v1-")
    if v1:
        store.conn.execute(f"CREATE UNIQUE INDEX {V1_INDEX} ON events (event_id)")
    random_ids = variant.endswith("uuid")
    run = f"{time.time_ns():x}"
    start_ms = now_ms() - events  # one event per millisecond of event time, ending now: all inside the window
    rows: list[dict] = []
    n = 0
    slice_start = n
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    longest_wall = longest_cpu = 0.0
    try:
        while n < events:
            size = min(group, events - n)
            ids = [uuid.uuid4().hex if random_ids else f"{run}-{n + j:012d}" for j in range(size)]
            flat: list[object] = []
            for j, eid in enumerate(ids):
                subject = f"u{(n + j) % users}"
                ts = start_ms + n + j
                flat.extend((eid, subject, subject, "", "", "feature_used", ts, ts, "web", "desktop", "reports",
                             "", "", "{}"))
            t_cpu, t_wall = time.thread_time(), time.perf_counter()
            store.begin()
            if v1:
                _v1_append(store, ids, flat)
            else:
                store.append_new_events(flat, start_ms + n + size)
            store.commit()
            longest_wall = max(longest_wall, time.perf_counter() - t_wall)
            longest_cpu = max(longest_cpu, time.thread_time() - t_cpu)
            n += size
            if n - slice_start >= every or n >= events:
                cpu, wall = time.thread_time(), time.perf_counter()
                done = n - slice_start
                rows.append({"variant": variant, "stored": n, "cpu_us_per_event": (cpu - cpu0) / done * 1e6,
                             "wall_us_per_event": (wall - wall0) / done * 1e6,
                             "longest_txn_wall_ms": longest_wall * 1e3, "longest_txn_cpu_ms": longest_cpu * 1e3,
                             "db_mb": path.stat().st_size / 1e6})
                if on_row is not None:
                    on_row(rows[-1])
                slice_start, cpu0, wall0 = n, cpu, wall
                longest_wall = longest_cpu = 0.0
    finally:
        store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: one line per slice, then the JSON of all rows when ``--json`` is given."""
    ap = argparse.ArgumentParser(prog="python -m bench.store_scaling", description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000, help="events stored per variant")
    ap.add_argument("--group", type=int, default=8000, help="events per transaction (a group commit)")
    ap.add_argument("--every", type=int, default=200_000, help="events per reported slice")
    ap.add_argument("--users", type=int, default=2000, help="distinct subjects, round robin")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--dir", default=None, help="directory of the scratch databases (default: a temporary one)")
    ap.add_argument("--json", default=None, metavar="PATH")
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: expected names of {', '.join(VARIANTS)} (got {', '.join(unknown)})")
    if min(a.events, a.group, a.every, a.users) < 1:
        ap.error("--events, --group, --every and --users must be >= 1")
    print(f"store scaling: transactions of {a.group:,} events over {a.users:,} subjects; writer CPU and wall "
          f"per event for each slice of {a.every:,} events", flush=True)
    out: list[dict] = []

    def show(row: dict) -> None:
        out.append(row)
        print(f"  {row['variant']:12s} {row['stored']:>10,} stored  CPU {row['cpu_us_per_event']:6.1f} µs/event  "
              f"wall {row['wall_us_per_event']:6.1f} µs/event  longest txn {row['longest_txn_wall_ms']:6.0f} ms "
              f"(CPU {row['longest_txn_cpu_ms']:.0f})  db {row['db_mb']:,.0f} MB", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1))
    with tempfile.TemporaryDirectory(prefix="onramp-store-scaling-", dir=a.dir) as tmp:
        for variant in variants:
            measure(variant, Path(tmp), a.events, a.group, a.every, a.users, on_row=show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
