"""GetNextStep under load from h2load (nghttp2's native HTTP/2 load generator, Debian package
``nghttp2-client``) posting prebuilt gRPC request bodies: a second serving driver next to the grpc.aio one
(:mod:`bench.loadgen`), which itself burns a core on a 2-core machine. Fixed rates and a closed-loop maximum
against Onramp (warm users) and, in the same run, the bare server; ratios of throughput and p99.
Run: ``python -m bench serving --driver h2load`` (or ``python -m bench.h2load``).

h2load posts the same body for every request of a process, so each run starts several h2load processes side
by side, each on its own connection asking for one warm user (the next users of the warm set for each load):
at a fixed rate one process per 100 req/s (h2load's ``--rps`` timer ticks at most every 10 ms, so a faster
client sends bursts), closed loop ``processes`` processes sharing the in-flight requests. A user asked
again within the guardrails' minimum gap gets a logged ``capped`` decision: the whole decide path (profile,
segments, shows, eligibility, decision row committed before the answer) but not the bandit's scoring. That is
``--scenario capped``; the default ``--scenario personalized`` (see :mod:`bench.common`) lifts gaps, caps and
cooldowns and warms users past the personalisation threshold, so every ask is scored by the bandit. h2load counts an HTTP 200 as a
success whatever the ``grpc-status`` says, so the driver counts non-OK statuses itself: h2load runs with ``-v``,
which prints each answer's first header block, where a gRPC error without a message (trailers-only, e.g.
CANCELLED from gRPC core, INVALID_ARGUMENT from the interceptor) carries its ``grpc-status``; and for Onramp
the decision rows logged during each run are counted (one per OK answer, committed before it is sent).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.common import (SCENARIOS, CpuSplit, ServerProc, decisions_by_reason, load_lines, measure_server_cpu,
                          pinned_here, ratio_table, read_only, reasons_line, start_bare, start_onramps, summarize,
                          warm_users, worker_report, workers_heading)
from onramp.v1 import onramp_pb2 as pb

RATES = (500, 1000, 2000)
SERVICE = pb.DESCRIPTOR.services_by_name["Onramp"].full_name  # "onramp.v1.Onramp"
GET_NEXT_STEP_PATH = f"/{SERVICE}/GetNextStep"
INSTALL_HINT = ("h2load (nghttp2's HTTP/2 load generator) is not on PATH. Install it: Debian/Ubuntu "
                "`sudo apt-get install -y nghttp2-client`, macOS `brew install nghttp2`; or set H2LOAD=/path/to/h2load. "
                "Without it, use the default grpc.aio driver: `python -m bench serving`.")
_COUNTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout")
_FINISHED = re.compile(r"finished in ([0-9.]+)(ms|s|us)")
_GRPC_STATUS = re.compile(r"^\[stream_id=\d+\] grpc-status: (\d+)$", re.MULTILINE)
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
_HTTP_STATUS = re.compile(r"^\[stream_id=\d+\] :status: ", re.MULTILINE)
MAX_RPS_PER_PROCESS = 100  # h2load's rps timer repeats every max(10 ms, 1/rps): keep one request per tick


class H2loadMissing(RuntimeError):
    """h2load is not installed; the message says how to get it."""


def h2load_path() -> str | None:
    """The h2load executable (``$H2LOAD`` or ``h2load`` on PATH), or None when it is missing."""
    return shutil.which(os.environ.get("H2LOAD", "h2load"))


def require_h2load() -> str:
    """The h2load executable; raises :class:`H2loadMissing` with install instructions when absent."""
    path = h2load_path()
    if path is None:
        raise H2loadMissing(INSTALL_HINT)
    return path


def h2load_version(path: str) -> str:
    """``h2load --version`` (e.g. ``h2load nghttp2/1.52.0``)."""
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def request_body(user_id: str) -> bytes:
    """The HTTP/2 body of a GetNextStep call for ``user_id``. No timestamp (0 = the server's now), so a
    body stays valid however often and late it is sent."""
    return grpc_frame(pb.NextStepRequest(user_id=user_id).SerializeToString())


@dataclass(frozen=True)
class LogRow:
    """One request of h2load's ``--log-file``: start (µs since the epoch), HTTP status, µs to the end."""

    start_us: int
    status: int
    latency_us: int

    @property
    def end_us(self) -> int:
        """When the response ended (µs since the epoch)."""
        return self.start_us + self.latency_us


def read_log(path: Path) -> list[LogRow]:
    """The rows of an h2load log file (tab-separated start, status, latency), in start order."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append(LogRow(int(parts[0]), int(parts[1]), int(parts[2])))
    rows.sort(key=lambda r: r.start_us)
    return rows


def parse_counts(stdout: str) -> dict[str, int]:
    """h2load's ``requests:`` summary line as numbers (total, started, done, succeeded, failed, errored,
    timeout) and ``finished in`` as ``elapsed_us``."""
    m = _COUNTS.search(stdout)
    if m is None:
        raise RuntimeError(f"no h2load summary in its output: {stdout[-1000:]!r}")
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    out = dict(zip(keys, (int(g) for g in m.groups())))
    f = _FINISHED.search(stdout)
    if f is not None:
        scale = {"s": 1e6, "ms": 1e3, "us": 1.0}[f.group(2)]
        out["elapsed_us"] = round(float(f.group(1)) * scale)
    return out


def trailers_only_statuses(verbose_stdout: str) -> tuple[int, dict[str, int]]:
    """From ``h2load -v`` output: the number of answers (first header blocks printed) and the count of each
    non-OK ``grpc-status`` among them (by code name). An OK answer's status comes in trailers h2load does not
    print, so only errors sent without a message show here."""
    answers = len(_HTTP_STATUS.findall(verbose_stdout))
    codes: dict[str, int] = {}
    for code in _GRPC_STATUS.findall(verbose_stdout):
        if code != "0":
            name = _CODE_NAMES.get(int(code), code)
            codes[name] = codes.get(name, 0) + 1
    return answers, codes


def latency_from_schedule(rows: list[LogRow], rps: float) -> list[float]:
    """Latencies (µs) counted from when each request was due at ``rps`` (the i-th request started at the
    first one's start + i/rps), as :mod:`bench.loadgen` counts them: h2load measures from when it sent the
    request, which hides the time a request waited in h2load for a free stream when the server fell behind."""
    if not rows:
        return []
    first = rows[0].start_us
    step = 1e6 / rps
    return [max(float(r.latency_us), r.end_us - (first + i * step)) for i, r in enumerate(rows)]


def decision_rows(db: Path) -> int:
    """Rows in the decisions table of Onramp's database (read-only; the server writes in WAL mode)."""
    with read_only(db) as conn:
        return int(conn.execute("SELECT count(*) FROM decisions").fetchone()[0])


def settled_decision_rows(db: Path, timeout: float = 10.0) -> int:
    """The decision row count once it stopped growing (answers still being written when h2load ended)."""
    last = decision_rows(db)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = decision_rows(db)
        if now == last:
            return now
        last = now
    return last


def sample_call(address: str, body: bytes) -> pb.NextStepResponse:
    """Send a prebuilt body's message through a gRPC channel (no serializer: the bytes go as they are) and
    decode the answer: checks the body is a valid request and the server answers it with OK."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(GET_NEXT_STEP_PATH)
        raw = call(body[5:], timeout=10)
    return pb.NextStepResponse.FromString(raw)


def nghttp_status(address: str, body_path: Path) -> int | None:
    """The ``grpc-status`` trailer of one POST of ``body_path`` with h2load's headers, sent by ``nghttp``
    (same package as h2load); None when nghttp is not installed."""
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        return None
    out = subprocess.run([nghttp, "-v", "-d", str(body_path), "-H", "content-type: application/grpc",
                          "-H", "te: trailers", f"http://{address}{GET_NEXT_STEP_PATH}"],
                         capture_output=True, timeout=30, check=False)
    m = re.search(rb"grpc-status: (\d+)", out.stdout)
    if m is None:
        raise RuntimeError(f"no grpc-status trailer from {address}: {out.stdout[-800:]!r} {out.stderr[-400:]!r}")
    return int(m.group(1))


def h2load_command(h2load: str, address: str, body: Path, log: Path, *, rate: float, requests: int,
                   duration: float, streams: int, deadline_s: float, verbose: bool = True) -> list[str]:
    """One h2load process on one connection: ``rate`` req/s for ``requests`` requests (fixed rate) or, when
    ``rate`` is 0, back to back for ``duration`` s (closed loop); at most ``streams`` in flight. Each call
    carries a ``grpc-timeout`` deadline like the grpc.aio driver's; ``verbose`` prints the answers' first
    header blocks (see :func:`trailers_only_statuses`)."""
    cmd = [h2load, *(["-v"] if verbose else []), "-c", "1", "-t", "1", "-m", str(streams), "-d", str(body),
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           "-H", f"grpc-timeout: {max(1, int(deadline_s * 1000))}m", "--log-file", str(log)]
    if rate > 0:
        cmd += ["--rps", f"{rate:g}", "-n", str(requests)]
    else:
        cmd += ["-D", f"{max(1, int(duration * 1000))}ms"]
    return cmd + [f"http://{address}{GET_NEXT_STEP_PATH}"]


def processes_for(rate: float, closed_loop_processes: int) -> int:
    """How many h2load processes (= users, connections) a load uses: one per 100 req/s at a fixed rate,
    ``closed_loop_processes`` closed loop."""
    return max(1, math.ceil(rate / MAX_RPS_PER_PROCESS)) if rate > 0 else closed_loop_processes


def one_load(h2load: str, server: ServerProc, db: Path | None, users: list[str], rate: float, duration: float,
             concurrency: int, deadline_s: float, work: Path) -> dict:
    """One run of ``len(users)`` h2load processes (one per user's body, see :func:`processes_for`) against
    ``server``: fixed total ``rate`` (req/s) or closed loop (``rate`` 0, ``concurrency`` streams in all,
    at least one per process). Returns the figures
    :mod:`bench.loadgen` returns (throughput of OK answers, p50/p95/p99 ms over every request, errors) plus
    h2load's counts and, for Onramp (``db`` given), the decision rows logged."""
    n_proc = len(users)
    per_rate = rate / n_proc
    per_n = max(1, round(rate * duration / n_proc)) if rate > 0 else 0
    streams = 64 if rate > 0 else max(1, concurrency // n_proc)
    procs = []
    before = decision_rows(db) if db is not None else 0
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i, uid in enumerate(users):
        body = work / f"body-{uid}.bin"
        body.write_bytes(request_body(uid))
        log = work / f"log-{i}.tsv"
        log.unlink(missing_ok=True)  # h2load appends
        cmd = h2load_command(h2load, server.address, body, log, rate=per_rate, requests=per_n, duration=duration,
                             streams=streams, deadline_s=deadline_s)
        out_path = work / f"out-{i}.txt"  # a file, not a pipe: -v output must never block h2load
        with out_path.open("w") as out_file:
            proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT)
        procs.append((proc, log, out_path))
    counts = {k: 0 for k in ("total", "started", "done", "succeeded", "failed", "errored", "timeout")}
    lat_us: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    ok_http = 0
    elapsed_us = 0
    answers = 0
    codes: dict[str, int] = {}
    for proc, log, out_path in procs:
        proc.wait(timeout=duration * 6 + deadline_s + 60)
        out = out_path.read_text(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"h2load exited with {proc.returncode}: {out[-2000:]}")
        c = parse_counts(out)
        n_answers, proc_codes = trailers_only_statuses(out)
        answers += n_answers
        for k, v in proc_codes.items():
            codes[k] = codes.get(k, 0) + v
        for k in counts:
            counts[k] += c[k]
        elapsed_us = max(elapsed_us, c.get("elapsed_us", 0))
        rows = read_log(log) if log.exists() else []
        ok_http += sum(1 for r in rows if r.status == 200)
        lat_us += latency_from_schedule(rows, per_rate) if rate > 0 else [float(r.latency_us) for r in rows]
        starts += [r.start_us for r in rows]
        ends += [r.end_us for r in rows]
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the h2load processes, reaped above
    client_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    http_failed = counts["failed"] + counts["errored"] + counts["timeout"]
    if rate > 0:
        http_failed += n_proc * per_n - counts["started"]  # never sent (h2load gave up)
        elapsed = (max(ends) - min(starts)) / 1e6 if starts else duration
    else:
        elapsed = elapsed_us / 1e6 if elapsed_us else duration
    logged = settled_decision_rows(db) - before if db is not None else None
    seen_failed = sum(codes.values())
    grpc_failed = max(seen_failed, ok_http - logged) if logged is not None else seen_failed
    ok = ok_http - grpc_failed
    a = np.asarray(lat_us) / 1000.0 if lat_us else np.zeros(1)
    return {"ok": ok, "errors": http_failed + grpc_failed, "http_failed": http_failed, "grpc_failed": grpc_failed,
            "error_codes": codes, "answers_seen": answers,
            "http_200": ok_http, "decisions_logged": logged, "in_flight_at_end": counts["started"] - counts["done"],
            "elapsed_s": elapsed, "throughput": ok / elapsed if elapsed > 0 else 0.0,
            "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "rate": rate, "processes": n_proc, "users": users,
            "client_cpu_s": client_cpu_s, "client_cpu_us_per_request": client_cpu_s * 1e6 / max(1, counts["done"]),
            "h2load": counts}


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, users: int | None = None,
        concurrency: int = 32, processes: int = 4, rates: tuple[int, ...] = RATES,
        deadline_s: float = 10.0, scenario: str = "personalized", workers: tuple[int, ...] = (1,),
        cpus: CpuSplit = CpuSplit()) -> dict:
    """Measure every load ``repeats`` times on Onramp (one server per entry of ``workers``) and the bare
    server with h2load in ``scenario`` (see :mod:`bench.common`), with each server's CPU per call over its
    whole process tree; ``cpus`` pins the servers and h2load apart. Returns raw runs, medians and the
    decision reasons the first Onramp logged under load. Raises :class:`H2loadMissing` when h2load is absent."""
    h2load = require_h2load()
    duration = duration if duration is not None else (0.5 if quick else 5.0)
    users = users if users is not None else (40 if quick else 2000)
    loads = [("rate", r) for r in rates] + [("closed", 0)]
    raw: dict[str, dict[str, list[dict]]] = {}
    checks: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-h2load-") as tmp, pinned_here(cpus.loadgen):
        work = Path(tmp)
        onramps = start_onramps(scenario, work, workers, cpus)
        servers: list[tuple[str, ServerProc, Path | None]] = [(o.name, o.server, o.db) for o in onramps]
        try:
            servers.append(("bare", start_bare(cpus.server), None))
            for o in onramps:
                warm_users(o.server.address, users, scenario=scenario)
            first = work / "body-check.bin"
            first.write_bytes(request_body("u0"))
            for name, srv, _ in servers:
                resp = sample_call(srv.address, first.read_bytes())
                checks[f"{name}_sample_reason"] = resp.reason
                checks[f"{name}_nghttp_grpc_status"] = nghttp_status(srv.address, first)
            load_start_ms = int(time.time() * 1000)
            turn = 0
            for _ in range(repeats):
                for kind, rate in loads:
                    key = f"{rate} rps" if kind == "rate" else "closed loop"
                    n_proc = processes_for(rate, processes)
                    who = [f"u{(turn + i) % users}" for i in range(n_proc)]
                    turn += n_proc
                    for name, srv, db in servers:
                        res = measure_server_cpu(
                            srv, lambda: one_load(h2load, srv, db, who, rate, duration, concurrency, deadline_s, work),
                            lambda r: r["h2load"]["done"])
                        raw.setdefault(key, {}).setdefault(name, []).append(res)
            checks["onramp_reasons_under_load"] = decisions_by_reason(onramps[0].db, load_start_ms)
        finally:
            for _, srv, _ in servers:
                srv.stop()
    table = ratio_table(raw, ("throughput", "p50_ms", "p95_ms", "p99_ms", "errors", "server_cpu_us_per_call"))
    return {"driver": h2load_version(h2load), "scenario": scenario, "duration_s": duration, "users": users, "concurrency": concurrency,
            "processes": processes, "repeats": repeats, "deadline_s": deadline_s, "checks": checks,
            "workers": {o.name: o.workers for o in onramps}, "cpus": str(cpus), "table": table, "raw": raw}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result, in :func:`bench.serving.report`'s format plus the
    checks of what the server answered."""
    out = [f"serving ({res['driver']}, one process and warm user per 100 req/s, closed loop {res['processes']}): "
           f"GetNextStep, scenario {res.get('scenario', 'capped')}, "
           f"{res['users']} warm users, {res['duration_s']} s per run, closed loop {res['concurrency']} in-flight, "
           f"fixed-rate latency from each request's due time, medians [min..max] of {res['repeats']} repeats"]
    workers = res.get("workers", {"onramp": 1})
    out[0] += "; " + workers_heading(workers, res.get("cpus", "not pinned"))
    names = (*workers, "bare")
    for key, row in res["table"].items():
        out += load_lines(key, row, names)
        out += worker_report(key, row, res["raw"][key], workers)

    def codes_of(name: str) -> str:
        """The non-OK statuses of all runs against server ``name``, e.g. ``CANCELLED 12``."""
        total: dict[str, int] = {}
        for by in res["raw"].values():
            for r in by[name]:
                for k, v in r["error_codes"].items():
                    total[k] = total.get(k, 0) + v
        return ", ".join(f"{k} {v:,}" for k, v in total.items()) or "none"

    runs = [r for by in res["raw"].values() for name in workers for r in by[name]]
    ok_http = sum(r["http_200"] for r in runs)
    logged = sum(r["decisions_logged"] for r in runs)
    unlogged = sum(max(0, r["http_200"] - r["decisions_logged"]) for r in runs)
    beyond = sum(max(0, r["decisions_logged"] - r["http_200"]) for r in runs)
    c = res["checks"]
    seen = "; ".join(f"{name} {codes_of(name)}" for name in names)
    out.append(f"  checks, all runs: non-OK grpc-status seen by h2load -v: {seen}. "
               f"Onramp HTTP 200 answers {ok_http:,}, decision rows logged {logged:,}: "
               f"answers without a row {unlogged:,}, rows of calls in flight when a closed-loop h2load stopped "
               f"{beyond:,}. Sample call: onramp reason {c['onramp_sample_reason']!r}; nghttp grpc-status onramp "
               f"{c['onramp_nghttp_grpc_status']} bare {c['bare_nghttp_grpc_status']}")
    cpu = [r["client_cpu_us_per_request"] for by in res["raw"].values() for rs in by.values() for r in rs]
    out.append(f"  h2load CPU (user+sys, all processes of a run) per request: {summarize(cpu).fmt('.1f', ' us')} "
               f"over all runs")
    reasons = reasons_line(c["onramp_reasons_under_load"])
    out.append(f"  onramp decisions logged under load by reason: {reasons}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: print the report (exit 2 with install instructions without h2load)."""
    ap = argparse.ArgumentParser(prog="python -m bench.h2load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--processes", type=int, default=4, help="closed loop: h2load processes (= users asked)")
    ap.add_argument("--scenario", choices=SCENARIOS, default="personalized", help="see bench.common")
    a = ap.parse_args(argv)
    try:
        res = run(a.quick, a.repeats or (1 if a.quick else 3), a.duration, a.users, processes=a.processes,
                  scenario=a.scenario)
    except H2loadMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    print("\n".join(report(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
