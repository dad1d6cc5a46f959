"""``python -m bench [serving|ingest|learning|memory|auth|erasure|lag|replay|all] [--quick] [--repeats N] [--json PATH]``
(lag also ``--rate``, ``--lag-workers``; serving also ``--driver aio|h2load``, ``--scenario personalized|capped``, ``--floor``, ``--workers 1,2``, ``--cpus 1:0``; memory also ``--full``, ``--sizes USERS:EVENTS,...``, ``--restarts N``; ingest also ``--prefill N``, ``--db PATH``; learning also ``--peers``, ``--sweep``):
run the benchmarks, print medians with spread, optionally write the raw results as JSON."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import auth_flood, erasure, h2load, ingest, learner_lag, learning, learning_sweep, memory, serving
from bench.common import PY, ROOT, SCENARIOS, CpuSplit, Summary, load_average, parse_workers

PARTS = ("serving", "ingest", "learning", "memory", "auth", "erasure", "lag")


def machine() -> str:
    """nproc, CPU model, Python version, load average and UTC date."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return (f"machine: nproc={os.cpu_count()} cpu={model!r} python={platform.python_version()} "
            f"load average={load_average()} date={time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


def _jsonable(o: object) -> object:
    if isinstance(o, Summary):
        return dataclasses.asdict(o)
    raise TypeError(type(o))


def parse_size(text: str) -> tuple[int, int]:
    """``"100000:1000000"`` -> (users, events)."""
    users, _, events = text.partition(":")
    try:
        return int(users.replace("_", "")), int(events.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: expected USERS:EVENTS pairs, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("part", nargs="?", default="all", choices=(*PARTS, "replay", "all"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes and short runs (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3, quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per load run (serving, ingest, auth)")
    ap.add_argument("--driver", choices=("aio", "h2load"), default="aio",
                    help="serving: load generator, the grpc.aio client (bench.loadgen) or h2load (bench.h2load)")
    ap.add_argument("--scenario", choices=SCENARIOS, default="personalized",
                    help="serving: personalized = every ask scored by the bandit (caps lifted, users past the "
                         "personalisation threshold); capped = demo catalog, asks blocked by the min gap (bench.common)")
    ap.add_argument("--floor", action="store_true",
                    help="serving (aio driver): also measure bench.floor_server's variants: the decision row "
                         "not written (nolog), no decision (floor)")
    ap.add_argument("--workers", default="1", metavar="N,...",
                    help="serving: worker counts of the Onramp servers measured side by side, e.g. 1,2 (default 1); "
                         "ingest: the one worker count measured (2 on this machine is onramp serve's default: a "
                         "supervisor, 2 workers and the learner process)")
    ap.add_argument("--cpus", default=None, metavar="SERVER:LOADGEN",
                    help="serving: CPU lists to pin the servers (every process of each) and the load generator "
                         "apart, e.g. 1:0 or 2-3:0-1 (default: not pinned)")
    ap.add_argument("--full", action="store_true", help="memory at 100k and 1M users with 1M events (slow: 1M SetConsent calls)")
    ap.add_argument("--sizes", default=None, metavar="U:E,...",
                    help="memory: users:events pairs to measure, e.g. 1000000:1000000 (overrides --full)")
    ap.add_argument("--restarts", type=int, default=1, help="memory: restarts measured per build")
    ap.add_argument("--prefill", type=int, default=None, metavar="N",
                    help="ingest: events stored through the API before measuring (default 1,000,000; quick 2,000)")
    ap.add_argument("--db", default=None, metavar="PATH",
                    help="ingest: keep the database here, and reuse it when it exists (filled up to --prefill)")
    ap.add_argument("--peers", action="store_true",
                    help="learning: also run Vowpal Wabbit, MABWiser and River on every scenario (pip install -e '.[bench]')")
    ap.add_argument("--sweep", action="store_true",
                    help="learning: instead, the sweep that chooses the bandit's defaults (bench.learning_sweep)")
    ap.add_argument("--rate", type=float, default=1000.0, help="lag: outcomes reported per second")
    ap.add_argument("--lag-workers", default="1", metavar="N,...",
                    help="lag: worker counts to measure, e.g. 1,2 (onramp serve --workers)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write all results here")
    a = ap.parse_args(argv)
    if a.floor and a.driver != "aio":
        ap.error("--floor is measured with the aio driver only")
    try:
        workers = parse_workers(a.workers)
        cpus = CpuSplit.parse(a.cpus)
    except ValueError as exc:
        ap.error(str(exc))
    repeats = a.repeats or (1 if a.quick else 3)
    print(machine(), flush=True)
    results: dict[str, object] = {}
    parts = PARTS if a.part == "all" else (a.part,)
    for part in parts:
        t = time.perf_counter()
        if part == "serving" and a.driver == "h2load":
            res = h2load.run(a.quick, repeats, duration=a.duration, scenario=a.scenario, workers=workers, cpus=cpus)
            lines = h2load.report(res)
        elif part == "serving":
            res = serving.run(a.quick, repeats, duration=a.duration, scenario=a.scenario, floor=a.floor,
                              workers=workers, cpus=cpus)
            lines = serving.report(res)
        elif part == "ingest":
            if len(workers) != 1:
                ap.error("ingest measures one worker count: --workers N")
            res = ingest.run(a.quick, repeats, duration=a.duration, prefill=a.prefill,
                             db=Path(a.db) if a.db else None, workers=workers[0])
            lines = ingest.report(res)
        elif part == "lag":
            res = {str(n): learner_lag.run(a.quick, repeats, duration=a.duration, rate=a.rate, workers=int(n))
                   for n in a.lag_workers.split(",")}
            lines = [line for r in res.values() for line in learner_lag.report(r)]
        elif part == "auth":
            res = auth_flood.run(a.quick, repeats, duration=a.duration)
            lines = auth_flood.report(res)
        elif part == "erasure":
            res = erasure.run(a.quick, repeats)
            lines = erasure.report(res)
        elif part == "learning" and a.sweep:
            res = learning_sweep.run(a.quick)
            lines = learning_sweep.report(res)
        elif part == "learning":
            res = learning.run(a.quick, repeats, with_peers=a.peers)
            lines = learning.report(res)
        elif part == "memory":
            sizes = [(100_000, 1_000_000), (1_000_000, 1_000_000)] if a.full else None
            if a.sizes:
                sizes = [parse_size(x) for x in a.sizes.split(",")]
            res = memory.run(a.quick, repeats, sizes=sizes, restarts=a.restarts,
                             partial=Path(f"{a.json}.partial.jsonl") if a.json else None)
            lines = memory.report(res)
        else:
            args = ["--decisions", "20000"] if a.quick else []
            out = subprocess.run([PY, "bench/replay_speed.py", *args], cwd=ROOT, capture_output=True, text=True,
                                 check=True)
            res = {"output": out.stdout}
            lines = ["replay:"] + ["  " + line for line in out.stdout.splitlines()]
        results[part] = res
        print("\n".join(lines), flush=True)
        print(f"({part} took {time.perf_counter() - t:.1f} s; load average {load_average()})", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, default=_jsonable, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
