"""GetNextStep under load from a separate client process (:mod:`bench.loadgen`, several connections): fixed
rates and a closed-loop maximum against Onramp (warm users; with ``workers`` (1, 2), one Onramp per worker
count) and, in the same run, against the bare server; ratios of throughput and p99, and each server's CPU time
per finished call (``/proc/PID/stat`` user + system of the server's whole process tree -- supervisor, workers,
learner process -- over the run / calls), which a machine shared with other work disturbs far less than
throughput or p99. ``cpus`` pins the servers and the load generator to separate CPUs."""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import (CpuSplit, bandit_propensities, decisions_by_reason, load_lines, measure_server_cpu, now_ms,
                          pinned_here, ratio_table, reasons_line, run_loadgen, start_bare, start_onramps,
                          start_scenario_onramp, warm_users, worker_report, workers_heading)

RATES = (500, 1000, 2000)
FLOOR_VARIANTS = ("fresh", "nolog", "floor")  # bench.floor_server, measured with --floor


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, users: int | None = None,
        concurrency: int = 32, scenario: str = "personalized", floor: bool = False,
        workers: tuple[int, ...] = (1,), cpus: CpuSplit = CpuSplit(), channels: int = 4) -> dict:
    """Measure every load ``repeats`` times on Onramp (one server per entry of ``workers``) and the bare
    server in ``scenario`` (see :mod:`bench.common`), and on :mod:`bench.floor_server`'s variants too when
    ``floor`` (``fresh``: Onramp with no per-person cache hit; ``nolog``: Onramp deciding without writing the
    decision row; ``floor``: Onramp answering a constant without deciding; each one process); return raw runs, medians and the decisions the first Onramp
    logged under load by reason."""
    duration = duration if duration is not None else (0.5 if quick else 5.0)
    users = users if users is not None else (200 if quick else 2000)
    loads = [("rate", r) for r in RATES] + [("closed", 0)]
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp, pinned_here(cpus.loadgen):
        onramps = start_onramps(scenario, Path(tmp), workers, cpus)
        servers = [(o.name, o.server) for o in onramps]
        try:
            servers.append(("bare", start_bare(cpus.server)))
            if floor:
                for i, name in enumerate(FLOOR_VARIANTS):
                    # the variants patch the process they run in: one process, no workers
                    srv = start_scenario_onramp(scenario, Path(tmp) / f"{name}.db", workers=1, cpus=cpus.server,
                                                module=("bench.floor_server", "--variant", name))
                    servers.insert(len(onramps) + i, (name, srv))
            for name, srv in servers:
                if name not in ("bare", "floor"):  # the ones that decide
                    warm_users(srv.address, users, scenario=scenario)
            load_start_ms = now_ms()
            for _ in range(repeats):
                for kind, rate in loads:
                    key = f"{rate} rps" if kind == "rate" else "closed loop"
                    for name, srv in servers:
                        args = ["serving", "--target", srv.address, "--rate", str(rate), "--duration", str(duration),
                                "--concurrency", str(concurrency), "--users", str(users), "--channels", str(channels)]
                        res = measure_server_cpu(srv, lambda: run_loadgen(args),
                                                 lambda r: r["ok"] + r["errors"] + r["connect_calls"])
                        raw.setdefault(key, {}).setdefault(name, []).append(res)
            reasons = decisions_by_reason(onramps[0].db, load_start_ms)
            bandit = bandit_propensities(onramps[0].db, load_start_ms)
        finally:
            for _, srv in servers:
                srv.stop()
    table = ratio_table(raw, ("throughput", "p50_ms", "p95_ms", "p99_ms", "errors", "server_cpu_us_per_call"))
    return {"scenario": scenario, "reasons_under_load": reasons, "bandit_under_load": bandit,
            "floor": floor, "duration_s": duration, "users": users, "concurrency": concurrency, "repeats": repeats,
            "workers": {o.name: o.workers for o in onramps}, "cpus": str(cpus), "channels": channels,
            "table": table, "raw": raw}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    workers = res.get("workers", {"onramp": 1})
    out = [f"serving: GetNextStep, scenario {res['scenario']}, {res['users']} warm users, {res['duration_s']} s per run, "
           f"closed loop {res['concurrency']} in-flight over {res.get('channels', 1)} connections, "
           f"medians [min..max] of {res['repeats']} repeats; {workers_heading(workers, res.get('cpus', 'not pinned'))}"]
    names = (*workers, *FLOOR_VARIANTS, "bare") if res.get("floor") else (*workers, "bare")
    for key, row in res["table"].items():
        out += load_lines(key, row, names)
        out += worker_report(key, row, res["raw"][key], workers)
    b = res["bandit_under_load"]
    out.append(f"  onramp decisions logged under load by reason: {reasons_line(res['reasons_under_load'])}; bandit "
               f"propensity < 1 in {100 * b['below_1']:.1f}% (range {b['min']:.3f}..{b['max']:.3f})")
    return out
