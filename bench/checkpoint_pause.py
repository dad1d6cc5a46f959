"""How long a checkpoint pauses ingest and decisions (the writer waiting for the snapshot) and how long it
takes in all, with the copy-on-write snapshot of a forked child (``[server] checkpoint_fork = true``) and
with the in-process pickle (``false``), A/B interleaved on one server holding N users. Also the memory the
forked child costs: its private pages at the end (copied since the fork + its own buffers), its peak RSS,
and the server's own RSS rise while the checkpoint runs (sampled every 10 ms); and what a client sees: the
slowest of the GetNextStep calls one client makes back to back during the checkpoint.

The users are built once through the public API (:mod:`bench.populate` against ``python -m server serve``,
which writes a checkpoint at its shutdown); the measured server then runs in this process on that database
(it resumes from that checkpoint) and each checkpoint is asked for directly. Run:
``python -m bench.checkpoint_pause --users 100000 --events 1000000 --repeats 3 --db /tmp/cp100k.db``
(an existing ``--db`` is reused as it is)."""
from __future__ import annotations

import os

# as `python -m server serve` (server/ops/cli.py) does, before grpc is imported: no gRPC core fork handlers
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402

from bench.common import load_average, start_onramp, summarize  # noqa: E402
from bench.memory import PREFIX, populate  # noqa: E402
from onramp.v1 import onramp_pb2 as pb  # noqa: E402
from onramp.v1 import onramp_pb2_grpc as pb_grpc  # noqa: E402
from server.ops.app import running_server  # noqa: E402
from server.ops.state import CheckpointInfo  # noqa: E402


def rss_bytes() -> int:
    """This process's resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def build(db: Path, users: int, events: int) -> dict[str, Any]:
    """``users`` profiles from ``events`` events in a new database ``db`` (through the API)."""
    srv = start_onramp(db)
    try:
        return populate(srv.address, users, events)
    finally:
        srv.stop(timeout=900)


def one_checkpoint(handle: Any, fork: bool) -> dict[str, Any]:
    """One checkpoint with ``fork`` on or off: its CheckpointInfo figures, the server's RSS rise, and the
    slowest GetNextStep of a client asking one after the other while the checkpoint runs."""
    checkpointer = handle.server.checkpointer
    checkpointer.fork = fork
    base = rss_bytes()
    peak = [base]
    slowest = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_bytes())

    def ask() -> None:
        with grpc.insecure_channel(handle.address) as ch:
            stub = pb_grpc.OnrampStub(ch)
            n = 0
            while not done.is_set():
                n += 1
                t = time.perf_counter()
                stub.GetNextStep(pb.NextStepRequest(user_id=f"{PREFIX}{n % 1000}",
                                                    timestamp_ms=int(time.time() * 1000)), timeout=120)
                slowest[0] = max(slowest[0], time.perf_counter() - t)
    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=ask, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    try:
        info: CheckpointInfo = asyncio.run_coroutine_threadsafe(checkpointer.checkpoint(), handle.loop).result(900)
    finally:
        done.set()
        for t in threads:
            t.join()
    return {"fork": fork, "pause_s": info.pause_s, "total_s": info.total_s, "bytes": info.bytes,
            "forked": info.forked, "child_private": info.child_private_bytes, "child_peak_rss": info.child_peak_rss_bytes,
            "server_rss": base, "server_rss_rise": peak[0] - base, "slowest_decision_s": slowest[0],
            "load": load_average()}


def run(db: Path, users: int, events: int, repeats: int) -> dict[str, Any]:
    """Build ``db`` if missing, then ``repeats`` rounds of one checkpoint per mode (order alternating)."""
    built = None
    if not db.exists():
        built = build(db, users, events)
    rows: list[dict[str, Any]] = []
    cfg = {"server": {"checkpoint_interval_s": 3600, "checkpoint_fork": True}}
    with running_server(cfg, db_path=db) as h:
        assert h.runtime.resume is not None, "the measured server should resume from the build's checkpoint"
        for r in range(repeats):
            for fork in ((False, True) if r % 2 == 0 else (True, False)):
                rows.append(one_checkpoint(h, fork))
                print(json.dumps(rows[-1]), flush=True)
        h.server.checkpointer.at_stop = False
    return {"users": users, "events": events, "built": built, "rows": rows}


def report(res: dict[str, Any]) -> list[str]:
    """Medians [min..max] per mode."""
    mb = 1 / 2**20
    out = [f"checkpoint of {res['users']:,} users ({res['events']:,} events), medians [min..max]:"]
    for fork in (False, True):
        rows = [r for r in res["rows"] if r["fork"] == fork]
        if not rows:
            continue
        out.append(f"  checkpoint_fork = {str(fork).lower()}: writer pause {summarize([r['pause_s'] for r in rows]).fmt('.3f', ' s')}, "
                   f"total {summarize([r['total_s'] for r in rows]).fmt('.2f', ' s')}, file "
                   f"{summarize([r['bytes'] * mb for r in rows]).fmt('.1f', ' MiB')}, server RSS rise "
                   f"{summarize([r['server_rss_rise'] * mb for r in rows]).fmt('.1f', ' MiB')} "
                   f"(server RSS {rows[0]['server_rss'] * mb:,.0f} MiB); slowest GetNextStep during it "
                   f"{summarize([r['slowest_decision_s'] for r in rows]).fmt('.3f', ' s')}")
        if fork:
            out.append(f"    forked child: private memory at its end {summarize([r['child_private'] * mb for r in rows]).fmt('.1f', ' MiB')}, "
                       f"peak RSS {summarize([r['child_peak_rss'] * mb for r in rows]).fmt('.1f', ' MiB')}")
    out.append("  load average at each checkpoint: " + "; ".join(r["load"] for r in res["rows"]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.checkpoint_pause", description=__doc__)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--db", type=Path, required=True, help="database to build (or reuse when it exists)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    a = ap.parse_args(argv)
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {load_average()}, "
          f"nproc {os.cpu_count()}", flush=True)
    res = run(a.db, a.users, a.events, a.repeats)
    for line in report(res):
        print(line)
    print(f"end {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {load_average()}")
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
