"""Shared helpers of the benchmarks: free ports, server subprocesses (Onramp and bare), warm-up of users,
and median/spread summaries over repeats."""
from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    """A server running as a child process on ``address``."""

    proc: subprocess.Popen[bytes]
    address: str
    started_s: float

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident set size of the server process now (VmRSS from /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait (bounded), SIGKILL if it did not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_ready(address: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until ``address`` accepts TCP connections and one gRPC channel to it connects (or the process
    died / timeout). Polls with plain sockets first: a new gRPC channel every half second for minutes (a long
    restart) left the sync client hung in a later call."""
    deadline = time.monotonic() + timeout
    host, _, port = address.rpartition(":")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server on {address} not ready in {timeout}s")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=max(1.0, deadline - time.monotonic()))


def start_onramp(db: Path, ready_timeout: float = 60.0) -> ServerProc:
    """Start ``python -m server serve`` on a free port with database ``db``; wait (at most ``ready_timeout``
    seconds) until it accepts connections."""
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port), "--db",
                             str(db), "--allow-insecure-no-auth"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, proc, ready_timeout)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return ServerProc(proc, address, time.perf_counter() - t)


def start_bare() -> ServerProc:
    """Start :mod:`bench.bare_server` on a free port; wait until it accepts."""
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "bench.bare_server", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    wait_ready(address, proc)
    return ServerProc(proc, address, time.perf_counter() - t)


def run_client(module: str, args: list[str], timeout: float = 600.0) -> dict:
    """Run the client ``python -m module`` in its own process with ``args``; return its last JSON line
    (a failing client raises with its stderr in the message)."""
    out = subprocess.run([PY, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{module} exited with {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_loadgen(args: list[str], timeout: float = 600.0) -> dict:
    """Run :mod:`bench.loadgen` in its own process with ``args``; return its JSON result."""
    return run_client("bench.loadgen", args, timeout)


def warm_users(address: str, n_users: int, prefix: str = "u", requests_per_user: int = 1) -> None:
    """Make ``n_users`` warm as in production: consent granted, a few events ingested (profiles exist),
    and ``requests_per_user`` GetNextStep decisions logged per user."""
    now = int(time.time() * 1000)
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        futs = []
        for i in range(n_users):
            uid = f"{prefix}{i}"
            for purpose in ("tracking", "personalization"):
                futs.append(stub.SetConsent.future(pb.ConsentRequest(
                    user_id=uid, purpose=purpose, granted=True, source="bench", timestamp_ms=now - 3_600_000)))
            if len(futs) > 400:
                [f.result(timeout=60) for f in futs]
                futs = []
        [f.result(timeout=60) for f in futs]
        batch_events = []
        for i in range(n_users):
            uid = f"{prefix}{i}"
            ts = now - 3_000_000 + i % 1000
            batch_events += [pb.Event(event_id=f"w-{uid}-0", user_id=uid, name="session_start", timestamp_ms=ts,
                                      channel="web", device_type="desktop"),
                             pb.Event(event_id=f"w-{uid}-1", user_id=uid, name="feature_used", timestamp_ms=ts + 1,
                                      channel="web", device_type="desktop", feature="reports")]
        batches = [pb.EventBatch(sequence=j, events=batch_events[k:k + 500])
                   for j, k in enumerate(range(0, len(batch_events), 500))]
        for _ack in stub.IngestEventBatches(iter(batches), timeout=600):
            pass
        for _ in range(requests_per_user):
            futs = []
            for i in range(n_users):
                futs.append(stub.GetNextStep.future(pb.NextStepRequest(user_id=f"{prefix}{i}",
                                                                       timestamp_ms=int(time.time() * 1000))))
                if len(futs) > 200:
                    [f.result(timeout=60) for f in futs]
                    futs = []
            [f.result(timeout=60) for f in futs]


@dataclass(frozen=True)
class Summary:
    """Median and spread (min, max) of one figure over repeats."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, spec: str = ",.0f", unit: str = "") -> str:
        """``median [min..max] (n=N)``."""
        return f"{self.median:{spec}}{unit} [{self.low:{spec}}..{self.high:{spec}}] (n={self.n})"


def summarize(values: list[float]) -> Summary:
    """Median and min/max of ``values``."""
    return Summary(statistics.median(values), min(values), max(values), len(values))


def load_average() -> str:
    """The 1/5/15-minute load average of the machine."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
