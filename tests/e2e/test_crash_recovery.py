"""Crash safety: the server process is killed with SIGKILL at random points during streaming ingest (fixed
seed, at least 10 rounds), restarted on the same database, and the producer re-sends every batch it has no
ack for. Afterwards every event is stored exactly once, every acknowledged decision and outcome is there,
and each profile equals the one of a server that was fed the same events once and never crashed."""
from __future__ import annotations

import os
import pathlib
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.learn.segment_model import CLUSTER_PREFIX

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = 20261129
ROUNDS = 11
USERS = [f"crash-u{i}" for i in range(12)]
BATCHES = 200  # more than ROUNDS * (10 + MAX_EXTRA), so no round runs out of unacknowledged batches
BATCH_SIZE = 40
MAX_EXTRA = 8  # a killed round sends at most n + MAX_EXTRA batches, n being the ack the kill is timed from
# Fixed for the run (both runs see the same events), 40 days ago: past every recency cap (30 days), so the
# profiles read at different times agree; the servers keep a 60-day dedupe window (within which an event_id
# is stored at most once; the default is 7 days).
BASE_MS = (int(time.time()) // 86_400 - 40) * 86_400_000
DEDUPE_CONFIG = "[ingest]\ndedupe_window_hours = 1440\n"

pytestmark = pytest.mark.timeout(300)


class ServerProcess:
    """``python -m server serve --workers 1`` as a child process on a free 127.0.0.1 port; stderr goes to a file."""

    def __init__(self, db: pathlib.Path, log: pathlib.Path, extra: tuple[str, ...] = ()) -> None:
        self.log = log
        self._log_file = log.open("a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = log.stat().st_size
        # one process (--workers 1): a kill -9 of it is the crash tested here (a supervisor's workers and learner
        # are killed in tests/e2e/test_supervisor_workers.py and test_learner_crash_e2e.py)
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--workers", "1", "--port", "0",
                                      "--db", str(db), *extra], cwd=ROOT, env=env, stderr=self._log_file,
                                     stdout=subprocess.DEVNULL)
        self.port = self._wait_for_port(start)
        self.address = f"127.0.0.1:{self.port}"

    def _wait_for_port(self, start: int) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text()[start:]
            match = re.search(r"onramp serving on 127\.0\.0\.1:(\d+) ", text)
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"server did not start:\n{self.log.read_text()[start:]}")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log_file.close()

    def terminate(self) -> int:
        """SIGTERM and wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._log_file.close()


def make_batches(rng: random.Random) -> list[pb.EventBatch]:
    """Deterministic events of every profile-relevant kind, spread over the users, with fixed timestamps."""
    names = ["feature_used"] * 5 + ["session_start", "screen_skipped", "tutorial_completed", "step_completed"]
    features = ["reports", "boards", "export", "invite", "search"]
    steps = ["welcome", "profile_setup", "connect_data", "invite_team", "first_report"]
    batches = []
    n = 0
    for seq in range(BATCHES):
        evs = []
        for _ in range(BATCH_SIZE):
            name = rng.choice(names)
            fields: dict[str, object] = {"event_id": f"crash-ev-{n}", "user_id": rng.choice(USERS), "name": name,
                                         "timestamp_ms": BASE_MS + n * 1000,
                                         "channel": rng.choice(["web", "ios", "android", "email"]),
                                         "device_type": rng.choice(["desktop", "phone"])}
            if name == "feature_used":
                fields["feature"] = rng.choice(features)
            if name == "step_completed":
                fields["step_id"] = rng.choice(steps)
            evs.append(pb.Event(**fields))
            n += 1
        batches.append(pb.EventBatch(sequence=seq + 1, events=evs))
    return batches


def grant_all(stub: pb_grpc.OnrampStub) -> None:
    for user in USERS:
        stub.SetConsent(pb.ConsentRequest(user_id=user, purpose="tracking", granted=True, source="test"))


def stream(address: str, batches: list[pb.EventBatch], acked: set[int], kill: tuple[int, float] | None,
           server: ServerProcess) -> None:
    """Send ``batches`` on one IngestEventBatches stream, adding each acknowledged sequence to ``acked``.
    With ``kill = (n, delay)`` the server gets SIGKILL ``delay`` seconds after the n-th ack of this stream,
    while later batches are in flight (being sent, validated, written or committed)."""
    done = threading.Event()

    def requests() -> Iterator[pb.EventBatch]:
        for batch in batches:
            if done.is_set():
                return
            yield batch

    killer = None
    got = 0
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        try:
            for ack in stub.IngestEventBatches(requests()):
                assert ack.accepted + ack.duplicates == BATCH_SIZE, ack
                acked.add(ack.sequence)
                got += 1
                if kill is not None and got == kill[0]:
                    killer = threading.Timer(kill[1], server.kill)
                    killer.start()
                if len(acked) == BATCHES and kill is None:
                    break
        except grpc.RpcError as exc:
            assert kill is not None, exc
        finally:
            done.set()
    if killer is not None:
        killer.join()
    elif kill is not None:
        server.kill()


def profiles(address: str) -> dict[str, dict]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        return {u: MessageToDict(stub.GetUserProfile(pb.GetUserProfileRequest(user_id=u))) for u in USERS}


def test_sigkill_during_ingest_loses_no_acknowledged_write(tmp_path: pathlib.Path) -> None:
    rng = random.Random(SEED)
    batches = make_batches(rng)
    all_ids = {e.event_id for b in batches for e in b.events}
    db = tmp_path / "crash.db"
    log = tmp_path / "server.log"
    log.touch()
    config = tmp_path / "onramp.toml"
    config.write_text(DEDUPE_CONFIG)
    window = ("--config", str(config))
    acked: set[int] = set()
    decisions: list[str] = []  # acknowledged decisions
    outcomes: list[str] = []  # decisions whose outcome was acknowledged as recorded
    kills = 0
    for round_no in range(ROUNDS):
        server = ServerProcess(db, log, window)
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.OnrampStub(channel)
                grant_all(stub)
                # everything acknowledged before any earlier kill is still stored
                with sqlite3.connect(db) as conn:
                    stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
                    stored_decisions = {r[0] for r in conn.execute("SELECT decision_id FROM decisions")}
                    stored_outcomes = {r[0] for r in conn.execute("SELECT decision_id FROM outcomes")}
                acked_ids = {e.event_id for b in batches if b.sequence in acked for e in b.events}
                assert acked_ids <= stored, f"round {round_no}: lost {len(acked_ids - stored)} acked events"
                assert set(decisions) <= stored_decisions, f"round {round_no}: lost a decision"
                assert set(outcomes) <= stored_outcomes, f"round {round_no}: lost an outcome"
                user = USERS[round_no % len(USERS)]
                decision = stub.GetNextStep(pb.NextStepRequest(user_id=user, surface="in_app"))
                if decision.decision_id:
                    decisions.append(decision.decision_id)
                    answer = stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, reward=1.0,
                                                                  outcome="completed"))
                    if answer.recorded:
                        outcomes.append(decision.decision_id)
            pending = [b for b in batches if b.sequence not in acked]
            if not pending:
                server.terminate()
                break
            # at most n + MAX_EXTRA batches per killed round: however fast the machine, the rounds cannot use
            # up all batches before the tenth kill
            n = rng.randint(1, 10)
            stream(server.address, pending[:n + rng.randint(1, MAX_EXTRA)], acked, (n, rng.uniform(0.0, 0.03)),
                   server)
            kills += 1
        finally:
            if server.proc.poll() is None:
                server.kill()
    assert kills >= 10
    assert decisions and outcomes

    # restart once more: re-send whatever is still unacknowledged, without a kill
    server = ServerProcess(db, log, window)
    try:
        with grpc.insecure_channel(server.address) as channel:
            grant_all(pb_grpc.OnrampStub(channel))
        pending = [b for b in batches if b.sequence not in acked]
        if pending:
            stream(server.address, pending, acked, None, server)
        assert acked == {b.sequence for b in batches}
        crashed_profiles = profiles(server.address)
        assert server.terminate() == 0
    finally:
        if server.proc.poll() is None:
            server.kill()

    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT event_id, COUNT(*) FROM events GROUP BY event_id"))
        stored_decisions = {r[0] for r in conn.execute("SELECT decision_id FROM decisions")}
        stored_outcomes = {r[0] for r in conn.execute("SELECT decision_id FROM outcomes")}
    assert set(counts) == all_ids
    assert set(counts.values()) == {1}, "an event is stored more than once"
    assert set(decisions) <= stored_decisions and set(outcomes) <= stored_outcomes

    # a server fed the same events once, never killed
    fresh_log = tmp_path / "fresh.log"
    fresh_log.touch()
    fresh = ServerProcess(tmp_path / "fresh.db", fresh_log, window)
    try:
        with grpc.insecure_channel(fresh.address) as channel:
            grant_all(pb_grpc.OnrampStub(channel))
        fresh_acked: set[int] = set()
        stream(fresh.address, batches, fresh_acked, None, fresh)
        assert len(fresh_acked) == BATCHES
        fresh_profiles = profiles(fresh.address)
        assert fresh.terminate() == 0
    finally:
        if fresh.proc.poll() is None:
            fresh.kill()
    for user in USERS:
        crashed = crashed_profiles[user]
        expected = fresh_profiles[user]
        assert int(crashed["eventCount"]) > 0
        for side in (crashed, expected):
            for consent in side["consents"]:
                consent.pop("timestampMs")  # when SetConsent was called, not part of the event log
            # What the River models give (the cluster, its one-hot and activation_prob) is left out: they learn
            # from the profile change log as committed, one row per person per ingest commit, and re-sent
            # batches commit in other groups than one uninterrupted stream (docs/operations.md, known limits).
            # That a learner's models after a crash equal one that read the same log once is checked in
            # tests/e2e/test_supervised_faults_e2e.py; here, everything the events make must match.
            side["segments"] = [s for s in side.get("segments", []) if not s.startswith(CLUSTER_PREFIX)]
            side["features"] = {k: v for k, v in side["features"].items()
                                if not k.startswith("cluster_") and k != "activation_prob"}
        assert crashed == expected, user


def test_sigterm_during_ingest_drains_flushes_and_exits_0(tmp_path: pathlib.Path) -> None:
    """SIGTERM (and a second SIGINT while stopping) during a busy stream: exit code 0, no traceback, and
    every acknowledged event is committed."""
    batches = make_batches(random.Random(SEED))
    db = tmp_path / "term.db"
    log = tmp_path / "server.log"
    log.touch()
    server = ServerProcess(db, log)
    acked: set[int] = set()
    try:
        with grpc.insecure_channel(server.address) as channel:
            grant_all(pb_grpc.OnrampStub(channel))
        code: list[int] = []

        def stop_soon() -> None:
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.01)
            server.proc.send_signal(signal.SIGINT)  # impatient operator: must not break the flush
            code.append(server.proc.wait(60))

        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.OnrampStub(channel)
            stopper = None
            try:
                for ack in stub.IngestEventBatches(iter(batches)):
                    acked.add(ack.sequence)
                    if len(acked) == 5:
                        stopper = threading.Thread(target=stop_soon)
                        stopper.start()
            except grpc.RpcError:
                pass
            assert stopper is not None
            stopper.join()
        assert code == [0]
    finally:
        if server.proc.poll() is None:
            server.kill()
    text = log.read_text()
    assert "stopping" in text and "stopped" in text and "Traceback" not in text, text
    with sqlite3.connect(db) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    assert {e.event_id for b in batches if b.sequence in acked for e in b.events} <= stored
