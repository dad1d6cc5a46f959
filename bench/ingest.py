"""Events per second acknowledged through IngestEventBatches on one and on four streams, from a separate
client process, against Onramp (consented users) and a bare server that only counts messages."""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import run_loadgen, start_bare, start_onramp, summarize, warm_users


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, users: int | None = None,
        batch: int = 200) -> dict:
    """Measure 1 and 4 streams ``repeats`` times on both servers; return raw runs and medians."""
    duration = duration if duration is not None else (0.5 if quick else 5.0)
    users = users if users is not None else (200 if quick else 2000)
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        onramp = start_onramp(Path(tmp) / "ingest.db")
        bare = start_bare()
        try:
            warm_users(onramp.address, users, requests_per_user=0)
            for _ in range(repeats):
                for streams in (1, 4):
                    for name, srv in (("onramp", onramp), ("bare", bare)):
                        res = run_loadgen(["ingest", "--target", srv.address, "--streams", str(streams),
                                           "--duration", str(duration), "--batch", str(batch), "--users", str(users)])
                        raw.setdefault(f"{streams} stream{'s' if streams > 1 else ''}", {}).setdefault(
                            name, []).append(res)
        finally:
            onramp.stop()
            bare.stop()
    table = {}
    for key, by in raw.items():
        row = {f"{n}_{f}": summarize([r[f] for r in runs]) for n, runs in by.items()
               for f in ("accepted_per_s", "acked_per_s", "dropped")}
        row["ratio"] = summarize([o["accepted_per_s"] / b["accepted_per_s"] for o, b in zip(by["onramp"], by["bare"])])
        table[key] = row
    return {"duration_s": duration, "users": users, "batch": batch, "repeats": repeats, "table": table, "raw": raw}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"ingest: IngestEventBatches, batches of {res['batch']} events over {res['users']} consented users, "
           f"{res['duration_s']} s per run, medians [min..max] of {res['repeats']} repeats"]
    for key, row in res["table"].items():
        out.append(f"  {key:9s} onramp accepted {row['onramp_accepted_per_s'].fmt(',.0f', ' ev/s')} "
                   f"(dropped {row['onramp_dropped'].median:,.0f})  bare {row['bare_accepted_per_s'].fmt(',.0f', ' ev/s')}"
                   f"  ratio {row['ratio'].fmt('.3f', 'x')}")
    return out
