"""GetNextStep under load from a separate client process (:mod:`bench.loadgen`): fixed rates and a
closed-loop maximum against Onramp (warm users) and, in the same run, against the bare server; ratios of
throughput and p99."""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import run_loadgen, start_bare, start_onramp, summarize, warm_users

RATES = (500, 1000, 2000)


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, users: int | None = None,
        concurrency: int = 32) -> dict:
    """Measure every load ``repeats`` times on both servers; return raw runs and medians."""
    duration = duration if duration is not None else (0.5 if quick else 5.0)
    users = users if users is not None else (200 if quick else 2000)
    loads = [("rate", r) for r in RATES] + [("closed", 0)]
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        onramp = start_onramp(Path(tmp) / "serving.db")
        bare = start_bare()
        try:
            warm_users(onramp.address, users)
            for _ in range(repeats):
                for kind, rate in loads:
                    key = f"{rate} rps" if kind == "rate" else "closed loop"
                    for name, srv in (("onramp", onramp), ("bare", bare)):
                        res = run_loadgen(["serving", "--target", srv.address, "--rate", str(rate), "--duration",
                                           str(duration), "--concurrency", str(concurrency), "--users", str(users)])
                        raw.setdefault(key, {}).setdefault(name, []).append(res)
        finally:
            onramp.stop()
            bare.stop()
    table = {}
    for key, by in raw.items():
        row = {}
        for name, runs in by.items():
            for f in ("throughput", "p50_ms", "p95_ms", "p99_ms", "errors"):
                row[f"{name}_{f}"] = summarize([r[f] for r in runs])
        row["throughput_ratio"] = summarize([o["throughput"] / b["throughput"]
                                             for o, b in zip(by["onramp"], by["bare"])])
        row["p99_ratio"] = summarize([o["p99_ms"] / b["p99_ms"] for o, b in zip(by["onramp"], by["bare"])])
        table[key] = row
    return {"duration_s": duration, "users": users, "concurrency": concurrency, "repeats": repeats,
            "table": table, "raw": raw}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"serving: GetNextStep, {res['users']} warm users, {res['duration_s']} s per run, closed loop "
           f"{res['concurrency']} in-flight, medians [min..max] of {res['repeats']} repeats"]
    for key, row in res["table"].items():
        for name in ("onramp", "bare"):
            out.append(f"  {key:11s} {name:6s} throughput {row[f'{name}_throughput'].fmt(',.0f', ' req/s')}  "
                       f"p50 {row[f'{name}_p50_ms'].fmt('.2f', ' ms')}  p95 {row[f'{name}_p95_ms'].fmt('.2f', ' ms')}"
                       f"  p99 {row[f'{name}_p99_ms'].fmt('.2f', ' ms')}  errors {row[f'{name}_errors'].median:.0f}")
        out.append(f"  {key:11s} ratio  throughput onramp/bare {row['throughput_ratio'].fmt('.2f', 'x')}  "
                   f"p99 onramp/bare {row['p99_ratio'].fmt('.2f', 'x')}")
    return out
