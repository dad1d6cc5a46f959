"""The writer's CPU per logged decision as the person's shown history grows: ``python -m bench.history_cost
[--keeps 16,256] [--decisions 1500] [--rounds 3]``.

One decision per transaction (``synchronous=full``), in process on a scratch database, for 10 people asked again
and again (as the serving benchmark's h2load loads ask them), each person's history holding ``keep`` show times
for each of 10 steps: the engine keeps ``max_per_day + 1`` times per step, at most 256, so the demo catalog's caps
keep 16 and the serving benchmark's lifted caps 256. The rounds alternate the sizes; medians [min..max]."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid

from server.store.decision_logger import Decision
from server.store.rows import LoggedDecision
from server.store.show_codec import encode_shows
from server.store.sqlite import open_store
from server.store.user_state import log_decisions

T0 = 1_700_000_000_000
STEPS = [f"step_{c}" for c in "abcdefghij"]
CONTEXT = json.dumps({f"f{i}": 0.5 for i in range(20)})


def writer_cpu_us(keep: int, decisions: int, people: int = 10) -> tuple[float, int]:
    """Median over 3 runs of the writer thread's CPU per decision (µs), and the stored history's size (bytes)."""
    with tempfile.TemporaryDirectory(prefix="onramp-history-") as tmp:
        store = open_store(os.path.join(tmp, "h.db"), synchronous="full")
        try:
            shows = {s: list(range(T0, T0 + keep)) for s in STEPS}
            versions: dict[str, int] = {}

            def item(i: int) -> LoggedDecision:
                who = f"p{i % people:04d}"
                v = versions.get(who, 0)
                versions[who] = v + 1
                d = Decision(uuid.uuid4().hex, who, T0 + i, "home", "step_a", 0.25, "bandit", "v1", "", "",
                             CONTEXT, STEPS[:4], {s: 0.25 for s in STEPS[:4]}, T0 + i + 86_400_000)
                return LoggedDecision(d.flat(), who, v, shows, True, True)

            def run(k: int) -> float:
                items = [item(i) for i in range(k)]
                t0 = time.thread_time()
                for it in items:
                    store.begin()
                    log_decisions(store, [it])
                    store.commit()
                return (time.thread_time() - t0) / k * 1e6

            run(max(1, decisions // 5))  # warm the cache and the WAL
            return statistics.median(run(decisions) for _ in range(3)), len(encode_shows(shows))
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.history_cost", description=__doc__)
    ap.add_argument("--keeps", default="16,256", help="show times kept per step, comma-separated")
    ap.add_argument("--decisions", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    keeps = [int(k) for k in a.keeps.split(",")]
    res: dict[int, list[float]] = {}
    sizes: dict[int, int] = {}
    for _ in range(a.rounds):
        for keep in keeps:
            cpu, sizes[keep] = writer_cpu_us(keep, a.decisions)
            res.setdefault(keep, []).append(cpu)
    for keep in keeps:
        xs = res[keep]
        print(f"keep {keep} per step: history {sizes[keep]:,} bytes, writer CPU per decision "
              f"{statistics.median(xs):.0f} us [{min(xs):.0f}..{max(xs):.0f}] (n={len(xs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
