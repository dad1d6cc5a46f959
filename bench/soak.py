"""Soak test: a steady mixed load held for minutes against ``python -m server serve``, showing errors and
whether the server's memory stays flat (issue #6).

The server runs as a subprocess on a free 127.0.0.1 port with a temporary database and the Prometheus
endpoint on. After warming users (consent + events), a driver in a *separate process* (``python -m
bench.soak drive``, a grpc.aio client) holds for the whole duration: GetNextStep at a fixed rate (open
loop), ReportOutcome for a share of the decisions (with or without a step), and one IngestEventBatches stream at a
fixed event rate. Every ``--interval`` seconds the driver reports its counters; at each report this process
samples the server's RSS (``/proc/PID/status`` VmRSS, summed over its processes: ``onramp serve``'s default
workers and the learner process) and its metrics and prints a row.

Memory is called *flat* when the least-squares RSS slope over the second half of the samples (warm-up
excluded) is below ``--max-slope`` MiB/min (default 1) AND the final RSS is within ``--max-final-dev``
(default 5%) of the second half's mean. Run::

    .venv/bin/python -m bench.soak --minutes 5 --rate 300
    .venv/bin/python -m bench.soak --quick          # a few seconds (smoke test)
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.common import PY, ROOT, free_port, load_average, tree_rss_bytes, wait_ready, warm_users
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

MIB = 1024 * 1024


# -- the driver (its own process) ------------------------------------------------------------------------------
@dataclass
class DriverCounters:
    """What the driver has done so far (cumulative), plus the GetNextStep latencies of the current interval."""

    requests_ok: int = 0
    steps: int = 0
    outcomes_ok: int = 0
    events_acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    interval_latency_s: list[float] = field(default_factory=list)

    def error(self, rpc: str, code: grpc.StatusCode) -> None:
        """Count one failed call as ``<rpc>:<CODE>``."""
        key = f"{rpc}:{code.name}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def report(self, t_s: float) -> dict:
        """One progress line (and start a new latency interval)."""
        lat = self.interval_latency_s
        p99 = float(np.percentile(np.asarray(lat) * 1000.0, 99)) if lat else float("nan")
        self.interval_latency_s = []
        return {"t_s": round(t_s, 2), "requests_ok": self.requests_ok, "steps": self.steps,
                "outcomes_ok": self.outcomes_ok,
                "events_acked": self.events_acked, "errors": dict(self.errors), "p99_ms": p99,
                "interval_calls": len(lat)}


async def drive(target: str, duration: float, rate: float, events_per_s: float, outcome_share: float,
                users: int, prefix: str, interval: float, batch: int = 100, deadline_s: float = 10.0) -> None:
    """Hold the mixed load on ``target`` for ``duration`` seconds; print a JSON progress line every
    ``interval`` seconds and a final one with ``"done": true``."""
    counters = DriverCounters()
    rng = random.Random(7)
    run = f"{time.time_ns():x}"
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.OnrampStub(ch)
        await stub.GetNextStep(pb.NextStepRequest(user_id=f"{prefix}0"), timeout=deadline_s)  # connect
        start = time.perf_counter()
        end = start + duration
        pending: set[asyncio.Task[None]] = set()

        async def outcome(decision_id: str) -> None:
            try:
                await stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision_id, reward=1.0, outcome="completed"),
                                         timeout=deadline_s)
                counters.outcomes_ok += 1
            except grpc.aio.AioRpcError as exc:
                counters.error("ReportOutcome", exc.code())

        async def decide(due: float, n: int) -> None:
            req = pb.NextStepRequest(user_id=f"{prefix}{n % users}", timestamp_ms=int(time.time() * 1000))
            try:
                resp = await stub.GetNextStep(req, timeout=deadline_s)
            except grpc.aio.AioRpcError as exc:
                counters.error("GetNextStep", exc.code())
                counters.interval_latency_s.append(time.perf_counter() - due)
                return
            counters.interval_latency_s.append(time.perf_counter() - due)
            counters.requests_ok += 1
            counters.steps += resp.has_step
            if resp.decision_id and rng.random() < outcome_share:
                await outcome(resp.decision_id)

        async def decisions() -> None:
            for i in itertools.count():
                due = start + i / rate
                if due >= end:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(decide(due, i))
                pending.add(task)
                task.add_done_callback(pending.discard)

        async def batches() -> AsyncIterator[pb.EventBatch]:
            per_batch_s = batch / events_per_s
            for q in itertools.count():
                due = start + q * per_batch_s
                if due >= end:
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = int(time.time() * 1000)
                yield pb.EventBatch(sequence=q, events=[
                    pb.Event(event_id=f"soak-{run}-{q}-{j}", user_id=f"{prefix}{(q * batch + j) % users}",
                             name="feature_used", timestamp_ms=now, channel="web", device_type="desktop",
                             feature="reports") for j in range(batch)])

        async def ingest() -> None:
            if events_per_s <= 0:
                return
            try:
                async for ack in stub.IngestEventBatches(batches(), timeout=duration + 60):
                    counters.events_acked += ack.accepted + ack.duplicates
            except grpc.aio.AioRpcError as exc:
                counters.error("IngestEventBatches", exc.code())

        async def reporter() -> None:
            next_t = start + interval
            while next_t <= end + 1e-6:
                await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
                print(json.dumps(counters.report(time.perf_counter() - start)), flush=True)
                next_t += interval

        await asyncio.gather(decisions(), ingest(), reporter())
        if pending:
            await asyncio.wait(pending, timeout=deadline_s + 5)
        final = counters.report(time.perf_counter() - start)
        final["done"] = True
        print(json.dumps(final), flush=True)


# -- the soak (this process) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One row of the soak table: the driver's counters and the server's RSS and metrics at that time."""

    t_s: float
    rss_mib: float
    requests_ok: int
    steps: int
    outcomes_ok: int
    events_acked: int
    errors: dict[str, int]
    p99_ms: float
    server_codes: dict[str, int]


@dataclass(frozen=True)
class Verdict:
    """The end of a soak: errors, and whether memory stayed flat over the second half."""

    total_errors: int
    server_non_ok: int
    slope_mib_per_min: float
    second_half_mean_mib: float
    final_rss_mib: float
    final_dev: float
    flat: bool


def rss_mib(pid: int) -> float:
    """Resident set size of server ``pid`` in MiB (VmRSS): of all its processes, as ``onramp serve`` runs one
    worker per core and the learner process by default."""
    return tree_rss_bytes(pid) / MIB


def server_codes(metrics_text: str) -> dict[str, int]:
    """RPCs handled by the server so far, by final status code, from ``onramp_rpc_duration_seconds_count``."""
    out: dict[str, int] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("onramp_rpc_duration_seconds_count{"):
            continue
        labels, value = line.rsplit(" ", 1)
        code = next((part.split("=", 1)[1].strip('"') for part in labels[labels.index("{") + 1:-1].split(",")
                     if part.startswith("code=")), "?")
        out[code] = out.get(code, 0) + int(float(value))
    return out


def verdict(samples: list[Sample], max_slope: float = 1.0, max_final_dev: float = 0.05) -> Verdict:
    """Errors and the memory verdict: least-squares RSS slope (MiB/min) over the second half of the samples,
    and the final RSS against that half's mean."""
    last = samples[-1]
    half = samples[len(samples) // 2:]
    t = np.array([s.t_s for s in half]) / 60.0
    rss = np.array([s.rss_mib for s in half])
    slope = float(np.polyfit(t, rss, 1)[0]) if len(half) >= 2 and np.ptp(t) > 0 else 0.0
    mean = float(rss.mean())
    dev = abs(last.rss_mib - mean) / mean
    non_ok = sum(n for code, n in last.server_codes.items() if code != "OK")
    return Verdict(sum(last.errors.values()), non_ok, slope, mean, last.rss_mib, dev,
                   slope < max_slope and dev <= max_final_dev)


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    """``python -m server serve`` on free 127.0.0.1 ports (gRPC and metrics) with a database in ``tmp``."""
    port, metrics_port = free_port(), free_port()
    config = tmp / "soak.toml"
    config.write_text(f'[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = {metrics_port}\n')
    proc = subprocess.Popen([PY, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port), "--db",
                             str(tmp / "soak.db"), "--config", str(config), "--allow-insecure-no-auth"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=(tmp / "server.log").open("wb"))
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, proc, 60)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return proc, address, metrics_port


def driver_lines(proc: subprocess.Popen[str]) -> Iterator[dict]:
    """The driver's JSON progress lines as they come."""
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            yield json.loads(line)


def fmt_errors(errors: dict[str, int]) -> str:
    """``{"GetNextStep:UNAVAILABLE": 2}`` -> ``GetNextStep:UNAVAILABLE=2`` (``0`` when none)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(errors.items())) or "0"


def soak(minutes: float, rate: float, events_per_s: float, outcome_share: float, users: int, interval: float,
         max_slope: float = 1.0, max_final_dev: float = 0.05) -> dict:
    """Run the whole soak, print the table and the verdict; return everything as a dict."""
    duration = minutes * 60.0
    print(f"soak: {minutes:g} min, GetNextStep {rate:g}/s (open loop), events {events_per_s:g}/s on one stream, "
          f"ReportOutcome for {outcome_share:.0%} of decisions, {users} warm users; "
          f"load average {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="onramp-soak-") as tmpdir:
        tmp = Path(tmpdir)
        server, address, metrics_port = start_server(tmp)
        try:
            warm_users(address, users, prefix="s", requests_per_user=0)  # consent + events; decisions come in the load
            rss0 = rss_mib(server.pid)
            print(f"server pid {server.pid} on {address}; RSS after warm-up {rss0:.1f} MiB", flush=True)
            driver = subprocess.Popen(
                [PY, "-m", "bench.soak", "drive", "--target", address, "--duration", str(duration), "--rate",
                 str(rate), "--events-per-s", str(events_per_s), "--outcome-share", str(outcome_share), "--users",
                 str(users), "--interval", str(interval)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            samples: list[Sample] = []
            header = f"{'time':>7} {'RSS MiB':>8} {'decisions':>10} {'outcomes':>9} {'events':>10} " \
                     f"{'p99 ms':>7}  errors (client, cumulative) | server non-OK"
            print(header, flush=True)
            final: dict = {}
            for line in driver_lines(driver):
                if line.get("done"):
                    final = line
                    continue
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
                    codes = server_codes(r.read().decode())
                s = Sample(line["t_s"], rss_mib(server.pid), line["requests_ok"], line["steps"], line["outcomes_ok"],
                           line["events_acked"], line["errors"], line["p99_ms"], codes)
                samples.append(s)
                non_ok = {k: v for k, v in codes.items() if k != "OK"}
                print(f"{s.t_s:>6.0f}s {s.rss_mib:>8.1f} {s.requests_ok:>10,} {s.outcomes_ok:>9,} "
                      f"{s.events_acked:>10,} {s.p99_ms:>7.1f}  {fmt_errors(s.errors)} | {fmt_errors(non_ok)}",
                      flush=True)
            if driver.wait(60) != 0:
                raise RuntimeError(f"the load driver exited with {driver.returncode}")
            if not samples:
                raise RuntimeError("the load driver reported nothing")
            # the last row also counts calls finished after the last interval
            if final:
                samples[-1] = Sample(samples[-1].t_s, samples[-1].rss_mib, final["requests_ok"], final["steps"],
                                     final["outcomes_ok"],
                                     final["events_acked"], final["errors"], samples[-1].p99_ms,
                                     samples[-1].server_codes)
        finally:
            server_alive = server.poll() is None
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
    v = verdict(samples, max_slope, max_final_dev)
    achieved = samples[-1].requests_ok / samples[-1].t_s if samples[-1].t_s else 0.0
    print(f"total: {samples[-1].requests_ok:,} decisions ({achieved:,.0f}/s, {samples[-1].steps:,} with a step), "
          f"{samples[-1].outcomes_ok:,} outcomes, "
          f"{samples[-1].events_acked:,} events acked; client errors {v.total_errors}, "
          f"server non-OK {v.server_non_ok}; "
          f"server alive at the end: {server_alive}")
    print(f"memory: RSS {rss0:.1f} MiB after warm-up -> {v.final_rss_mib:.1f} MiB at the end; second half: slope "
          f"{v.slope_mib_per_min:+.2f} MiB/min, mean {v.second_half_mean_mib:.1f} MiB, final within "
          f"{v.final_dev:.1%} of it -> {'FLAT' if v.flat else 'NOT FLAT'} (flat = slope < {max_slope:g} MiB/min "
          f"and final within {max_final_dev:.0%} of the second-half mean)")
    print(f"load average at the end {load_average()}")
    return {"minutes": minutes, "rate": rate, "events_per_s": events_per_s, "outcome_share": outcome_share,
            "users": users, "interval_s": interval, "rss_after_warmup_mib": rss0, "server_alive": server_alive,
            "samples": [asdict(s) for s in samples], "verdict": asdict(v), "decisions_per_s": achieved}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.soak [--minutes M --rate R ...]`` or ``python -m bench.soak drive ...`` (the driver)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["drive"]:
        ap = argparse.ArgumentParser(prog="bench.soak drive", description="the load driver of the soak test")
        ap.add_argument("--target", required=True)
        ap.add_argument("--duration", type=float, required=True)
        ap.add_argument("--rate", type=float, required=True)
        ap.add_argument("--events-per-s", type=float, default=3000.0)
        ap.add_argument("--outcome-share", type=float, default=0.2)
        ap.add_argument("--users", type=int, default=2000)
        ap.add_argument("--interval", type=float, default=10.0)
        a = ap.parse_args(argv[1:])
        asyncio.run(drive(a.target, a.duration, a.rate, a.events_per_s, a.outcome_share, a.users, "s", a.interval))
        return 0
    ap = argparse.ArgumentParser(prog="bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=300.0, help="GetNextStep per second (open loop)")
    ap.add_argument("--events-per-s", type=float, default=3000.0, help="events per second on one batch stream")
    ap.add_argument("--outcome-share", type=float, default=0.2,
                    help="share of decisions that get a ReportOutcome")
    ap.add_argument("--users", type=int, default=2000, help="warm users the load spreads over")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--max-slope", type=float, default=1.0, help="flat: RSS slope below this (MiB/min)")
    ap.add_argument("--max-final-dev", type=float, default=0.05,
                    help="flat: final RSS within this share of the second-half mean")
    ap.add_argument("--quick", action="store_true", help="a few seconds at a low rate (smoke test)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes, a.rate, a.events_per_s, a.users, a.interval = 0.1, 50.0, 500.0, 100, 1.0
    res = soak(a.minutes, a.rate, a.events_per_s, a.outcome_share, a.users, a.interval, a.max_slope,
               a.max_final_dev)
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
