"""GetNextStep under load from a separate client process (:mod:`bench.loadgen`): fixed rates and a
closed-loop maximum against Onramp (warm users) and, in the same run, against the bare server; ratios of
throughput and p99, and each server's CPU time per finished call (``/proc/PID/stat`` user + system of the
whole server process over the run / calls), which a machine shared with other work disturbs far less than
throughput or p99."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.common import (bandit_propensities, decisions_by_reason, now_ms, ratio_table, reasons_line, run_loadgen, start_bare,
                          start_scenario_onramp, warm_users)

RATES = (500, 1000, 2000)
FLOOR_VARIANTS = ("nolog", "floor")  # bench.floor_server, measured with --floor
_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, users: int | None = None,
        concurrency: int = 32, scenario: str = "personalized", floor: bool = False) -> dict:
    """Measure every load ``repeats`` times on both servers in ``scenario`` (see :mod:`bench.common`), and on
    :mod:`bench.floor_server`'s variants too when ``floor`` (``nolog``: Onramp deciding without writing the decision row; ``floor``: Onramp
    answering a constant without deciding); return raw runs, medians and the decisions Onramp logged under
    load by reason."""
    duration = duration if duration is not None else (0.5 if quick else 5.0)
    users = users if users is not None else (200 if quick else 2000)
    loads = [("rate", r) for r in RATES] + [("closed", 0)]
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        db = Path(tmp) / "serving.db"
        onramp = start_scenario_onramp(scenario, db)
        bare = start_bare()
        servers = [("onramp", onramp), ("bare", bare)]
        try:
            if floor:
                for i, name in enumerate(FLOOR_VARIANTS):
                    srv = start_scenario_onramp(scenario, Path(tmp) / f"{name}.db",
                                                module=("bench.floor_server", "--variant", name))
                    servers.insert(1 + i, (name, srv))
            for name, srv in servers:
                if name not in ("bare", "floor"):  # the ones that decide
                    warm_users(srv.address, users, scenario=scenario)
            load_start_ms = now_ms()
            for _ in range(repeats):
                for kind, rate in loads:
                    key = f"{rate} rps" if kind == "rate" else "closed loop"
                    for name, srv in servers:
                        cpu0 = process_cpu_s(srv.pid)
                        res = run_loadgen(["serving", "--target", srv.address, "--rate", str(rate), "--duration",
                                           str(duration), "--concurrency", str(concurrency), "--users", str(users)])
                        calls = res["ok"] + res["errors"] + 1  # + the loadgen's connecting call
                        res["server_cpu_us_per_call"] = (process_cpu_s(srv.pid) - cpu0) / calls * 1e6
                        raw.setdefault(key, {}).setdefault(name, []).append(res)
            reasons = decisions_by_reason(db, load_start_ms)
            bandit = bandit_propensities(db, load_start_ms)
        finally:
            for _, srv in servers:
                srv.stop()
    table = ratio_table(raw, ("throughput", "p50_ms", "p95_ms", "p99_ms", "errors", "server_cpu_us_per_call"))
    return {"scenario": scenario, "reasons_under_load": reasons, "bandit_under_load": bandit,
            "floor": floor, "duration_s": duration, "users": users, "concurrency": concurrency, "repeats": repeats,
            "table": table, "raw": raw}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"serving: GetNextStep, scenario {res['scenario']}, {res['users']} warm users, {res['duration_s']} s per run, "
           f"closed loop {res['concurrency']} in-flight, medians [min..max] of {res['repeats']} repeats"]
    names = ("onramp", *FLOOR_VARIANTS, "bare") if res.get("floor") else ("onramp", "bare")
    for key, row in res["table"].items():
        for name in names:
            out.append(f"  {key:11s} {name:6s} throughput {row[f'{name}_throughput'].fmt(',.0f', ' req/s')}  "
                       f"p50 {row[f'{name}_p50_ms'].fmt('.2f', ' ms')}  p95 {row[f'{name}_p95_ms'].fmt('.2f', ' ms')}"
                       f"  p99 {row[f'{name}_p99_ms'].fmt('.2f', ' ms')}  errors {row[f'{name}_errors'].median:.0f}"
                       f"  server CPU/call {row[f'{name}_server_cpu_us_per_call'].fmt(',.0f', ' us')}")
        out.append(f"  {key:11s} ratio  throughput onramp/bare {row['throughput_ratio'].fmt('.2f', 'x')}  "
                   f"p99 onramp/bare {row['p99_ratio'].fmt('.2f', 'x')}  "
                   f"CPU/call onramp/bare {row['cpu_ratio'].fmt('.2f', 'x')}")
        for name in names[1:-1]:
            out.append(f"  {key:11s} ratio  throughput {name}/bare {row[f'{name}_throughput_ratio'].fmt('.2f', 'x')}  "
                       f"p99 {name}/bare {row[f'{name}_p99_ratio'].fmt('.2f', 'x')}  "
                       f"CPU/call {name}/bare {row[f'{name}_cpu_ratio'].fmt('.2f', 'x')}")
    b = res["bandit_under_load"]
    out.append(f"  onramp decisions logged under load by reason: {reasons_line(res['reasons_under_load'])}; bandit "
               f"propensity < 1 in {100 * b['below_1']:.1f}% (range {b['min']:.3f}..{b['max']:.3f})")
    return out
