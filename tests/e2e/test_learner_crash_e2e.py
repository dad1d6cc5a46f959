"""Learning is exactly-once across kill -9: a real server (``python -m server serve``, the learner running in
it) is killed with SIGKILL at random moments while decisions are made and their outcomes reported, and
restarted each time on the same database. Afterwards every answered decision and every acknowledged outcome is
stored once, and the bandit of the last published snapshot equals the one a learner builds that reads the same
outcome log once, never stopped."""
from __future__ import annotations

import asyncio
import json
import pickle
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.common import ServerProc, start_onramp, warm_users, write_scenario_config
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from tests.e2e.learner_support import assert_same, copy_store, learner_on

pytestmark = pytest.mark.timeout(600)
SEED = 20261205
ROUNDS = 5
USERS = 24


def drive(srv: ServerProc, rng: random.Random, decided: set[str], rewarded: dict[str, float], seconds: float) -> None:
    """Ask and report for ``seconds`` (or until the server dies): answered decisions go to ``decided``,
    acknowledged outcomes to ``rewarded``."""
    end = time.monotonic() + seconds
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        while time.monotonic() < end:
            try:
                r = stub.GetNextStep(pb.NextStepRequest(user_id=f"u{rng.randrange(USERS)}"), timeout=5)
                decided.add(r.decision_id)
                if r.has_step:
                    reward = float(rng.random() < 0.3)
                    stub.ReportOutcome(pb.OutcomeRequest(decision_id=r.decision_id, reward=reward), timeout=5)
                    rewarded[r.decision_id] = reward
            except grpc.RpcError:
                return  # killed


def caught_up(db: Path) -> bool:
    """Whether the newest snapshot includes every outcome of the log."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        last = conn.execute("SELECT max(id) FROM outcome_log").fetchone()[0] or 0
        row = conn.execute("SELECT positions FROM model_snapshots ORDER BY version DESC LIMIT 1").fetchone()
    return row is not None and json.loads(row[0])["outcomes"] >= last


def snapshot_policy(db: Path) -> dict[str, Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        body = conn.execute("SELECT body FROM model_snapshots ORDER BY version DESC LIMIT 1").fetchone()[0]
    return pickle.loads(body)["policy"]


def learned_once(db: Path, config_path: Path, tmp: Path) -> tuple[dict[str, Any], int]:
    """The bandit of a learner with no saved state reading a copy of ``db``'s outcome log once."""
    copy = tmp / "once.db"
    copy_store(db, copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("DELETE FROM learner_state")
    with learner_on(copy, config_path) as learner:
        asyncio.run(learner.step())
        assert learner.decider is not None
        return learner.decider.policy.to_state(), learner.stats.learned


def test_learning_after_sigkills_equals_learning_the_log_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "crash.db"
    config_path = write_scenario_config("personalized", tmp_path)
    assert config_path is not None
    srv = start_onramp(db, config=config_path)
    decided: set[str] = set()
    rewarded: dict[str, float] = {}
    kills = 0
    try:
        warm_users(srv.address, USERS, scenario="personalized")
        for _ in range(ROUNDS):
            killer = threading.Timer(rng.uniform(0.3, 2.0), srv.proc.kill)
            killer.start()
            drive(srv, rng, decided, rewarded, 3.0)
            killer.cancel()
            if srv.proc.poll() is None:
                srv.proc.kill()
            srv.proc.wait(10)
            kills += 1
            srv = start_onramp(db, config=config_path)
        drive(srv, rng, decided, rewarded, 1.0)
        deadline = time.monotonic() + 60
        while not caught_up(db):
            assert time.monotonic() < deadline, "the learner did not catch up"
            time.sleep(0.1)
    finally:
        srv.stop()
    assert kills == ROUNDS and len(rewarded) > 50
    with sqlite3.connect(db) as conn:
        stored = {d for (d,) in conn.execute("SELECT decision_id FROM decisions")}
        outcomes = dict(conn.execute("SELECT decision_id, reward FROM outcomes WHERE source = 'reported'"))
        logged = conn.execute("SELECT COUNT(*), COUNT(DISTINCT decision_id) FROM outcome_log").fetchone()
    assert decided <= stored  # every answered decision was committed before its answer
    assert {d: outcomes.get(d) for d in rewarded} == rewarded  # every acknowledged outcome, as reported
    assert logged[0] == logged[1]  # each outcome once in the learner's feed
    once, learned = learned_once(db, config_path, tmp_path)
    assert learned > 50
    assert_same(snapshot_policy(db), once)
