"""``python -m bench.write_lock [--rate 200] [--rows 10] [--duration 5] [--repeats 5] [--quick]``: how long a
writer waits to begin a transaction while another process writes the same database, with the write lock
(server/store/write_lock.py, ``lock``) and with SQLite's busy handler alone (``busy``: the store's lock taken
away), as two decision workers' writer threads do.

Two processes (real :class:`~server.store.sqlite.SqliteStore` on one file in WAL mode, ``synchronous=full`` as
served) each commit ``--rate`` transactions per second on average for ``--duration`` seconds (Poisson arrivals,
seeded per round and process, the same in both modes); each transaction writes ``--rows`` rows of about 300
bytes under random keys (a decision row's size). A transaction's wait counts from its scheduled time to
``begin()`` returning, so a writer that fell behind shows it. The modes take turns over ``--repeats`` rounds
(``lock busy``, then ``busy lock``, ...). Prints per mode the median over rounds of the p50 / p99 / max wait with
``[min..max]``, and the per-round ratio busy/lock of the p99."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from server.store.sqlite import SqliteStore

MODES = ("lock", "busy")


def _writer(db: str, mode: str, rate: float, duration: float, rows: int, start_at: float, seed: int,
            out: "mp.Queue") -> None:
    store = SqliteStore(db)
    if mode == "busy":
        store.write_lock.close()
        store.write_lock = None
    waits: list[float] = []
    rng = random.Random(seed)
    due = start_at
    try:
        for _ in range(round(rate * duration)):
            due += rng.expovariate(rate)
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            store.begin()
            waits.append(time.perf_counter() - due)  # from its scheduled time: a writer behind counts
            for _ in range(rows):
                store.meta_set(os.urandom(12).hex(), os.urandom(150).hex())
            store.commit()
    finally:
        store.close()
    out.put(waits)


def one_round(mode: str, rate: float, duration: float, rows: int, work: Path, seed: int = 0) -> dict:
    """Two writer processes on a fresh database; the begin() waits of both, in ms."""
    db = str(work / f"{mode}-{time.monotonic_ns()}.db")
    SqliteStore(db).close()
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.perf_counter() + 1.5  # both spawned and past their imports (perf_counter is system-wide)
    procs = [ctx.Process(target=_writer, args=(db, mode, rate, duration, rows, start_at, seed + i, out)) for i in range(2)]
    for p in procs:
        p.start()
    waits = sorted(w * 1e3 for _ in procs for w in out.get(timeout=duration * 10 + 60))
    for p in procs:
        p.join(30)
        if p.exitcode != 0:
            raise RuntimeError(f"writer exited with {p.exitcode}")
    n = len(waits)
    return {"mode": mode, "transactions": n, "p50_ms": waits[n // 2],
            "p99_ms": waits[min(n - 1, int(n * 0.99))], "max_ms": waits[-1], "load": os.getloadavg()[0]}


def _summary(values: list[float], spec: str = ".2f") -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}..{max(values):{spec}}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.write_lock", description=__doc__)
    ap.add_argument("--rate", type=float, default=200.0, help="transactions per second per process")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    ap.add_argument("--repeats", type=int, default=5, help="rounds per mode")
    ap.add_argument("--rows", type=int, default=10, help="rows written per transaction")
    ap.add_argument("--quick", action="store_true", help="one short round per mode (smoke test)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every round's figures here")
    a = ap.parse_args(argv)
    if a.quick:
        a.rate, a.duration, a.repeats = 100.0, 1.0, 1
    print(f"machine: nproc={os.cpu_count()} load average={os.getloadavg()[0]:.2f} "
          f"date={time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)
    res: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-write-lock-") as tmp:
        for r in range(a.repeats):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                out = one_round(mode, a.rate, a.duration, a.rows, Path(tmp), seed=2 * r)
                res[mode].append(out)
                print(f"round {r} {mode}: begin() wait p50 {out['p50_ms']:.3f} p99 {out['p99_ms']:.2f} max "
                      f"{out['max_ms']:.1f} ms, {out['transactions']} transactions, load {out['load']:.2f}", flush=True)
    for mode in MODES:
        runs = res[mode]
        print(f"{mode}: begin() wait p50 {_summary([x['p50_ms'] for x in runs], '.3f')} ms, p99 "
              f"{_summary([x['p99_ms'] for x in runs])} ms, max {_summary([x['max_ms'] for x in runs])} ms")
    ratio = [b["p99_ms"] / max(l_["p99_ms"], 1e-6) for l_, b in zip(res["lock"], res["busy"])]
    print(f"p99 busy/lock: {_summary(ratio)}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
