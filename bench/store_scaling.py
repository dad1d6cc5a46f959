"""What one stored event costs the writer as the log grows: in process, on a scratch database, transactions of
``--group`` events (the duplicate check and the INSERT the ingest pipeline runs on the writer thread,
``SqliteStore.existing_event_ids`` and ``append_event_rows``), per slice of ``--every`` events: CPU and wall
microseconds per event and the database size.

Variants: event ids random (uuid4 hex, as ``onramp_client`` makes them) or ordered (counters, which the
event_id index only appends), each with the schema as shipped and with the subject index dropped, to show
what each index costs once the log no longer fits a transaction's worth of index pages. Run:
``python -m bench.store_scaling --events 1000000``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from server.store.sqlite import SqliteStore

VARIANTS = ("uuid", "ordered", "uuid-no-subject-index", "ordered-no-subject-index")
SUBJECT_INDEX = "idx_events_subject"


def measure(variant: str, directory: Path, events: int, group: int = 8000, every: int = 200_000,
            users: int = 2000) -> list[dict]:
    """Store ``events`` events of ``users`` subjects in transactions of ``group``; one row per ``every``
    events: stored count, CPU and wall µs per event over that slice, database MB."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)} (got {variant!r})")
    path = directory / f"{variant}.db"
    store = SqliteStore(path)
    if variant.endswith("no-subject-index"):
        store.conn.execute(f"DROP INDEX {SUBJECT_INDEX}")
    random_ids = variant.startswith("uuid")
    run = f"{time.time_ns():x}"
    rows: list[dict] = []
    n = 0
    slice_start = n
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    try:
        while n < events:
            size = min(group, events - n)
            ids = [uuid.uuid4().hex if random_ids else f"{run}-{n + j:012d}" for j in range(size)]
            flat: list[object] = []
            for j, eid in enumerate(ids):
                subject = f"u{(n + j) % users}"
                ts = 1_700_000_000_000 + n + j
                flat.extend((eid, subject, subject, "", "", "feature_used", ts, ts, "web", "desktop", "reports",
                             "", "", "{}"))
            store.begin()
            store.existing_event_ids(ids)
            store.append_event_rows(flat)
            store.commit()
            n += size
            if n - slice_start >= every or n >= events:
                cpu, wall = time.thread_time(), time.perf_counter()
                done = n - slice_start
                rows.append({"variant": variant, "stored": n, "cpu_us_per_event": (cpu - cpu0) / done * 1e6,
                             "wall_us_per_event": (wall - wall0) / done * 1e6,
                             "db_mb": path.stat().st_size / 1e6})
                slice_start, cpu0, wall0 = n, cpu, wall
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
    with tempfile.TemporaryDirectory(prefix="onramp-store-scaling-") as tmp:
        for variant in variants:
            for row in measure(variant, Path(tmp), a.events, a.group, a.every, a.users):
                out.append(row)
                print(f"  {variant:26s} {row['stored']:>10,} stored  CPU {row['cpu_us_per_event']:6.1f} µs/event  "
                      f"wall {row['wall_us_per_event']:6.1f} µs/event  db {row['db_mb']:,.0f} MB", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
