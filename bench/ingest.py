"""Events per second acknowledged through IngestEventBatches on one and on four streams, from a separate
client process, against Onramp (consented users) and a bare server that only counts messages.

The store's cost per event may grow with the events already stored (``bench/store_scaling.py``), so Onramp
is first filled with ``prefill`` events through the same API (or a database filled earlier is reused:
``--db``) and every figure says how many events were stored while it was measured. Event ids are random uuid4
hex, as ``onramp_client`` makes them; the ``ordered`` runs (counters the index only appends) show the
optimistic case earlier figures measured.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import (measure_server_cpu, metrics_config, read_only, run_loadgen, scrape, start_bare,
                          start_onramp, summarize, warm_users, worker_shares)

LOCK_HELD = "onramp_write_lock_held_seconds_total"  # the workers' writers' time holding the write lock, summed
# As onramp_client sends: batches of its default batch_size (500), several unacknowledged at once (the
# client keeps streaming while up to max_queue = 100,000 events wait for their ack; 16 batches here).
BATCH = 500
WINDOW = 16
FULL_PREFILL = 1_000_000


def stored_events(db: Path) -> int:
    """Events in Onramp's log now (the highest ``seq``; read-only, beside the running server)."""
    with read_only(db) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, users: int | None = None,
        batch: int = BATCH, window: int = WINDOW, prefill: int | None = None, db: Path | None = None,
        workers: int = 1) -> dict:
    """Fill Onramp with ``prefill`` events (4 streams, uuid ids), then measure 1 and 4 streams ``repeats``
    times: Onramp with uuid and with ordered event ids, and the bare server; return raw runs and medians.
    ``db``: a database file kept after the run; when it exists it is reused, filled up to ``prefill`` events
    only (a 10M prefill takes a quarter of an hour). ``workers``: ``onramp serve --workers`` (0 = one per
    core, the default deployment: a supervisor, the workers and the learner process); each stream has its
    own connection, so the kernel spreads streams (not batches) over the workers."""
    duration = duration if duration is not None else (0.5 if quick else 5.0)
    users = users if users is not None else (200 if quick else 2000)
    prefill = prefill if prefill is not None else (2_000 if quick else FULL_PREFILL)
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        db = db if db is not None else Path(tmp) / "ingest.db"
        reused = stored_events(db) if db.exists() else 0
        config, metrics_port = metrics_config(Path(tmp))
        onramp = start_onramp(db, ready_timeout=600.0, workers=workers, config=config)
        bare = start_bare()
        try:
            warm_users(onramp.address, users, requests_per_user=0)
            t0 = time.perf_counter()
            top_up = max(0, prefill - reused)
            fill = run_loadgen(["ingest", "--target", onramp.address, "--streams", "4", "--duration", "3600",
                                "--batch", str(batch), "--window", str(window), "--users", str(users),
                                "--max-events", str(top_up)], timeout=7200) if top_up else None
            prefill_s = time.perf_counter() - t0
            for _ in range(repeats):
                for streams in (1, 4):
                    key = f"{streams} stream{'s' if streams > 1 else ''}"
                    for name, srv, ids in (("onramp", onramp, "uuid"), ("onramp_ordered", onramp, "ordered"),
                                           ("bare", bare, "uuid")):
                        before = stored_events(db)
                        held = scrape(metrics_port, LOCK_HELD) if srv is onramp else 0.0
                        args = ["ingest", "--target", srv.address, "--streams", str(streams), "--duration",
                                str(duration), "--batch", str(batch), "--window", str(window), "--users", str(users),
                                "--ids", ids]
                        res = measure_server_cpu(srv, lambda: run_loadgen(args), lambda r: r["accepted"])
                        res["stored_before"] = before
                        # the cores the run kept busy: the server's process tree and the load generator's process
                        res["cores_busy"] = (res["server_cpu_us_per_call"] * res["server_calls"] / 1e6
                                             + res.get("client_cpu_s", 0.0)) / res["elapsed_s"]
                        res["workers_cpu_split"] = workers_split(res["server_cpu_by_role_s"])
                        if srv is onramp:  # the share of the run's time some worker's writer held the write lock
                            res["write_lock_busy"] = (scrape(metrics_port, LOCK_HELD) - held) / res["elapsed_s"]
                        raw.setdefault(key, {}).setdefault(name, []).append(res)
            stored_after = stored_events(db)
        finally:
            onramp.stop()
            bare.stop()
    table = {}
    for key, by in raw.items():
        row = {f"{n}_{f}": summarize([r[f] for r in runs]) for n, runs in by.items()
               for f in ("accepted_per_s", "acked_per_s", "dropped", "server_cpu_us_per_call", "cores_busy")}
        row["onramp_write_lock_busy"] = summarize([r["write_lock_busy"] for r in by["onramp"]])
        for n in ("onramp", "onramp_ordered"):
            suffix = "" if n == "onramp" else "_ordered"
            row[f"ratio{suffix}"] = summarize([o["accepted_per_s"] / b["accepted_per_s"]
                                               for o, b in zip(by[n], by["bare"])])
        stored = [r["stored_before"] for n in ("onramp", "onramp_ordered") for r in by[n]]
        row["stored_min"], row["stored_max"] = min(stored), max(stored)
        table[key] = row
    return {"duration_s": duration, "users": users, "batch": batch, "window": window, "repeats": repeats,
            "workers": workers,
            "prefill": prefill, "prefill_s": prefill_s, "reused": reused,
            "prefill_per_s": (fill["accepted"] / fill["elapsed_s"]) if fill else 0.0,
            "stored_after": stored_after, "table": table, "raw": raw}


def workers_split(by_role: dict[str, float]) -> list[float]:
    """Each worker's share of the workers' CPU in one run, busiest first (empty with one server process): the
    kernel spreads connections, not streams' batches, over the workers, so four streams may land 2:2, 3:1 or
    4:0, and the figures differ with it."""
    return sorted(worker_shares([{"server_cpu_by_role_s": by_role}]).values(), reverse=True)


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"ingest: IngestEventBatches, batches of {res['batch']} events, at most {res['window']} unacked per "
           f"stream, over {res['users']} consented users, {res['duration_s']} s per run, medians [min..max] of "
           f"{res['repeats']} repeats; onramp serve --workers {res.get('workers', 1)}",
           f"  prefill: {res['prefill']:,} events (uuid ids, 4 streams; {res.get('reused', 0):,} of them already in "
           f"the reused database) in {res['prefill_s']:.1f} s "
           f"({res['prefill_per_s']:,.0f} ev/s); {res['stored_after']:,} events stored at the end"]
    for key, row in res["table"].items():
        out.append(f"  {key:9s} ({row['stored_min']:,}..{row['stored_max']:,} events stored)")
        out.append(f"    onramp, uuid ids     accepted {row['onramp_accepted_per_s'].fmt(',.0f', ' ev/s')} "
                   f"(dropped {row['onramp_dropped'].median:,.0f})  ratio {row['ratio'].fmt('.3f', 'x')}  "
                   f"server CPU/event {row['onramp_server_cpu_us_per_call'].fmt('.1f', ' us')}  "
                   f"cores busy (server + load generator) {row['onramp_cores_busy'].fmt('.2f')}  "
                   f"write lock busy {row['onramp_write_lock_busy'].fmt('.0%')}")
        splits = [r.get("workers_cpu_split") for r in res.get("raw", {}).get(key, {}).get("onramp", [])]
        if any(splits):
            out.append("    onramp, uuid ids: the workers' CPU split per run (the kernel spreads connections): "
                       + ", ".join("/".join(f"{share * 100:.0f}" for share in split) for split in splits if split))
        out.append(f"    onramp, ordered ids  accepted {row['onramp_ordered_accepted_per_s'].fmt(',.0f', ' ev/s')} "
                   f"(dropped {row['onramp_ordered_dropped'].median:,.0f})  ratio {row['ratio_ordered'].fmt('.3f', 'x')}")
        out.append(f"    bare                 {row['bare_accepted_per_s'].fmt(',.0f', ' ev/s')}")
    return out
