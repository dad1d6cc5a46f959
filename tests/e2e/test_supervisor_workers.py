"""`onramp serve` with 2 real workers and the learner under one supervisor, the mechanics (what they answer:
test_workers_share_state.py, tests/server/test_identity_across_workers.py). Both workers serve Health and GetNextStep on the one shared
port, /metrics (worker 0's) adds up both and worker 0 serves the dashboard, a worker killed with SIGKILL is
restarted, SIGTERM drains both (every event either acknowledged is in the database) and the supervisor exits
0 without having imported grpc, a supervisor killed with SIGKILL leaves no worker serving, and the workers decide
without River or scipy in their memory (the learner has them), also from a database an earlier version left."""
from __future__ import annotations

import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(240), pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                            reason="reads /proc")]

SUPERVISOR = textwrap.dedent("""
    import sys
    from server.ops import cli
    code = cli.main(["serve", *sys.argv[1:]])
    print("grpc imported by the supervisor:", "grpc" in sys.modules, flush=True)
    sys.exit(code)
""")
CONFIG = "[metrics]\nenabled = true\nport = 0\n"
CONNECTIONS = 16  # the kernel spreads connections over the workers: all on one has odds 2**-15


class TwoWorkers:
    """The supervisor process, its log (stderr) in a file, the shared port and the worker pids."""

    def __init__(self, tmp_path: pathlib.Path, config_text: str = CONFIG) -> None:
        config = tmp_path / "onramp.toml"
        config.write_text(config_text)
        self.log = tmp_path / "serve.log"
        self.db = tmp_path / "o.db"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SUPERVISOR, "--workers", "2", "--port", "0", "--db", str(self.db),
                 "--config", str(config)], cwd=ROOT, stderr=log, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        match = self.wait_for(r"onramp serving on 127\.0\.0\.1:(\d+) .*2 workers, pids (\d+) (\d+)")
        self.port = int(match.group(1))
        self.pids = [int(match.group(2)), int(match.group(3))]
        self.metrics_port = int(self.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 90, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log from character ``start`` on, once it is there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text()[start:])
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _metrics_dir(pid: int) -> pathlib.Path:
    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return pathlib.Path(value.split(b"=", 1)[1].decode())


def _call_over_new_connections(port: int, n: int = CONNECTIONS) -> None:
    """Health and GetNextStep over ``n`` separate connections (a local subchannel pool each)."""
    for i in range(n):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reply = pb_grpc.OnrampStub(channel).GetNextStep(pb.NextStepRequest(user_id=f"u{i}"), timeout=10)
            assert reply.decision_id


def _ingest_over_new_connections(port: int, n: int = 8, events: int = 20) -> int:
    """Consent and ``events`` events of one user per connection (each user's calls on one worker: the workers
    do not share user state yet); returns how many events the workers acknowledged."""
    acked = 0
    for i in range(n):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.OnrampStub(channel)
            stub.SetConsent(pb.ConsentRequest(user_id=f"w{i}", purpose="tracking", granted=True), timeout=10)
            summary = stub.IngestEvents(iter([pb.Event(event_id=f"w{i}-{j}", user_id=f"w{i}", name="session_start")
                                              for j in range(events)]), timeout=30)
            acked += summary.accepted
    return acked


def _served(metrics_dir: pathlib.Path, pid: int) -> bool:
    """Whether worker ``pid`` recorded a call (its histogram file in the shared metrics directory)."""
    return (metrics_dir / f"histogram_{pid}.db").exists()


def _grpc_calls_counted(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert re.search(r'^onramp_queue_depth\{queue="writer"\} 0\.0$', body, re.MULTILINE), body  # live workers' sum
    return sum(float(m) for m in re.findall(
        r'^onramp_rpc_duration_seconds_count\{code="OK",method="onramp\.v1\.Onramp/GetNextStep"\} (\S+)$', body,
        re.MULTILINE))


def test_two_workers_share_the_port_restart_and_drain(tmp_path: pathlib.Path) -> None:
    server = TwoWorkers(tmp_path)
    try:
        metrics_dir = _metrics_dir(server.pids[0])
        _call_over_new_connections(server.port)
        assert all(_served(metrics_dir, pid) for pid in server.pids), server.text()
        assert _grpc_calls_counted(server.metrics_port) == CONNECTIONS  # /metrics adds up both workers
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/dashboard", timeout=10)
        assert page.status == 200 and b"<html" in page.read().lower()  # worker 0 serves the dashboard

        seen = len(server.text())
        os.kill(server.pids[1], signal.SIGKILL)
        server.wait_for(rf"worker 1 \(pid {server.pids[1]}\) died \(killed by SIGKILL\) after [\d.]+ s; "
                        "restarting it", start=seen)
        restarted = int(server.wait_for(r"worker 1 \(pid (\d+)\) ready on port", start=seen).group(1))
        assert restarted != server.pids[1]
        server.pids.append(restarted)
        _call_over_new_connections(server.port)
        assert _served(metrics_dir, restarted), server.text()
        assert _grpc_calls_counted(server.metrics_port) == 2 * CONNECTIONS  # the dead worker's calls still count

        acked = _ingest_over_new_connections(server.port)
        assert acked == 8 * 20
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.text()
        with sqlite3.connect(server.db) as conn:  # both workers committed what they acknowledged
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == acked
        assert server.proc.stdout.read().strip() == "grpc imported by the supervisor: False"
        log = server.text()
        assert "stopping (SIGTERM received): draining 3 processes" in log  # 2 workers and the learner
        for name, pid in (("worker 0", server.pids[0]), ("worker 1", restarted)):
            assert f"{name} (pid {pid}) stopped: exit status 0" in log
            assert not _alive(pid)
        assert re.search(r"learner 0 \(pid \d+\) stopped: exit status 0", log), log
        assert not metrics_dir.exists()
    finally:
        server.close()


def test_killing_the_supervisor_leaves_no_worker_serving(tmp_path: pathlib.Path) -> None:
    server = TwoWorkers(tmp_path)
    try:
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in server.pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in server.pids)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.close()


def _mapped(pid: int, packages: tuple[str, ...]) -> set[str]:
    """Which of ``packages`` have a shared object mapped into process ``pid`` (River's Rust core, scipy's
    extensions: loaded once any of their modules is imported)."""
    found = set()
    for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1]
        found.update(p for p in packages if f"/site-packages/{p}/" in path)
    return found


def _publish_old_snapshot(db: pathlib.Path) -> None:
    """A snapshot as the version before plain-number models wrote it (River models pickled), in a new database."""
    import pickle

    from server.base.catalog import load_catalog
    from server.learn.segments import Segmenter
    from server.learn.snapshot import STATE_FORMAT
    from server.store.sqlite import open_store

    catalog = load_catalog(None)
    segmenter = Segmenter(catalog)
    body = pickle.dumps({"format": STATE_FORMAT, "catalog": catalog.version,
                         "arms": [s.id for s in catalog.personalized_steps], "features": list(segmenter.space.names),
                         "policy": None, "segmenter": segmenter.to_state(marks=False), "learned": 0,
                         "demoted_rules": []})
    store = open_store(str(db))
    try:
        store.begin()
        assert store.publish_snapshot(int(time.time() * 1000), {}, body) == 1
        store.commit()
    finally:
        store.close()


def test_workers_decide_without_river_also_from_an_old_snapshot(tmp_path: pathlib.Path) -> None:
    """Worker 0 starts on a database whose latest snapshot an earlier version wrote: it says it waits for the
    learner's next one, and both workers then answer with the learner's snapshots; neither has River or scipy
    loaded (nor needs them to read any snapshot), the learner process has both."""
    _publish_old_snapshot(tmp_path / "o.db")
    server = TwoWorkers(tmp_path)
    try:
        server.wait_for(r"model snapshot 1 was written by an earlier version of Onramp .* until the learner "
                        r"publishes its next")
        learner = int(server.wait_for(r"learner pid (\d+)\)").group(1))
        deadline = time.monotonic() + 60
        while True:  # every connection's worker decides with a snapshot the learner published since
            versions = []
            for i in range(CONNECTIONS):
                with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                           options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                    reply = pb_grpc.OnrampStub(channel).GetNextStep(pb.NextStepRequest(user_id=f"r{i}"), timeout=10)
                    versions.append(int(reply.policy_version.rpartition("@")[2]))
            if min(versions) >= 2:
                break
            assert time.monotonic() < deadline, versions
            time.sleep(0.2)
        assert all(_served(_metrics_dir(server.pids[0]), pid) for pid in server.pids), server.text()
        for pid in server.pids:
            assert _mapped(pid, ("river", "scipy")) == set(), pid
        assert _mapped(learner, ("river", "scipy")) == {"river", "scipy"}
        assert "Traceback" not in server.text()
    finally:
        server.close()
