"""Restart from a checkpoint plus the log after it: a restarted server decides exactly as one that never
stopped (same steps, propensities, probabilities, logged contexts incl. cluster_* and activation_prob, same
bandit and segmenter state), also when users were merged, erased and rewarded after the checkpoint; and a
checkpoint that is truncated, corrupted, or made for another database or catalog is ignored with a WARNING
(full rebuild, the same answers as without any checkpoint)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import shutil
import sqlite3
import time
import tomllib
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle, running_server
from server.ops.state import CheckpointInfo

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000
MIN_MS = 60_000
KEY = "checkpoint-test-pseudonym-key-0123456789"
DEVICES = ("mobile", "desktop", "tablet")
FEATURES = (("boards",), ("reports", "reports", "automations"), ("dashboards", "integrations"), ("search", "boards"))

pytestmark = pytest.mark.timeout(240)


def config(**server: Any) -> dict[str, Any]:
    return {"privacy": {"pseudonym_key": KEY}, "ingest": {"synchronous": "normal"},
            "server": {"checkpoint_interval_s": 3600, **server}}


def reward_of(i: int, step: str, j: int) -> float:
    """A deterministic 'hidden preference': user type i % 4 likes some steps."""
    return 1.0 if (i % 4 + len(step) + j // 3) % 3 == 0 else 0.0


class Script:
    """Drives users through a server with explicit timestamps; every batch is its own ingest job (one
    IngestEventBatches call) with its own received_ms, so two servers see the same batches."""

    def __init__(self, stub: pb_grpc.OnrampStub, now_ms: int) -> None:
        self.stub = stub
        self.now_ms = now_ms
        self.answers: list[dict[str, Any]] = []
        self.unrewarded: list[tuple[int, str, str]] = []  # (user, decision_id, step) left pending
        self._n = 0

    def send(self, events: list[pb.Event]) -> None:
        acks = list(self.stub.IngestEventBatches(iter([pb.EventBatch(sequence=1, events=events)]), timeout=30))
        assert len(acks) == 1 and acks[0].accepted + acks[0].duplicates == len(events), acks
        time.sleep(0.003)  # the next batch gets another received_ms (the batch boundary the log keeps)

    def event(self, uid: str, name: str, ts: int, **fields: Any) -> pb.Event:
        self._n += 1
        return pb.Event(event_id=f"ev-{self._n}", user_id=uid, name=name, timestamp_ms=ts, **fields)

    def ask(self, uid: str, ts: int, device: str) -> pb.NextStepResponse:
        r = self.stub.GetNextStep(pb.NextStepRequest(user_id=uid, timestamp_ms=ts,
                                                     context={"device_type": device}), timeout=30)
        answer = MessageToDict(r, preserving_proto_field_name=True)
        answer.pop("decision_id", None)
        self.answers.append(answer)
        return r

    def outcome(self, decision_id: str, reward: float, ts: int) -> None:
        o = self.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision_id, reward=reward,
                                                      outcome="completed" if reward else "ignored",
                                                      timestamp_ms=ts), timeout=30)
        assert o.recorded, o

    def journey(self, i: int, asks: int = 2) -> None:
        """Consent, two days of sessions, the core flow, then bandit-era decisions with outcomes (the last
        one stays unrewarded)."""
        uid, device, feats = f"sim-{i}", DEVICES[i % 3], FEATURES[i % 4]
        day_b = self.now_ms - 20 * HOUR_MS + i * 1000
        day_a = day_b - 30 * HOUR_MS
        for purpose in ("tracking", "personalization"):
            self.stub.SetConsent(pb.ConsentRequest(user_id=uid, purpose=purpose, granted=True, source="t",
                                                   timestamp_ms=day_a), timeout=30)
        self.send([self.event(uid, "session_start", day_a, device_type=device),
                   self.event(uid, "session_start", day_a + HOUR_MS, device_type=device),
                   *(self.event(uid, "feature_used", day_a + HOUR_MS + j + 1, feature=f) for j, f in enumerate(feats))])
        clock = day_a + 2 * HOUR_MS
        for step in ("welcome", "profile_setup", "first_project"):
            r = self.ask(uid, clock, device)
            assert (r.step.id, r.reason) == (step, "core"), r
            self.send([self.event(uid, "step_completed", clock + MIN_MS, step_id=step)])
            clock += 31 * MIN_MS
        self.send([self.event(uid, "session_start", day_b, device_type=device),
                   *(self.event(uid, "feature_used", day_b + j + 1, feature=f) for j, f in enumerate(feats))])
        for j in range(asks):
            ts = day_b + MIN_MS + j * 35 * MIN_MS
            r = self.ask(uid, ts, device)
            if not r.has_step:
                continue
            if j == asks - 1:
                self.unrewarded.append((i, r.decision_id, r.step.id))
            else:
                self.outcome(r.decision_id, reward_of(i, r.step.id, j), ts + MIN_MS)

    def phase_a(self) -> None:
        for i in range(14):
            self.journey(i)
        # an anonymous visitor on a device, identified only after the checkpoint
        t = self.now_ms - 10 * HOUR_MS
        self.stub.SetConsent(pb.ConsentRequest(anonymous_id="visitor", purpose="tracking", granted=True,
                                               source="t", timestamp_ms=t), timeout=30)
        self.send([self.event("", "session_start", t, anonymous_id="visitor", device_id="dev-1"),
                   self.event("", "feature_used", t + 1, anonymous_id="visitor", device_id="dev-1", feature="api")])
        self.stub.EraseUser(pb.EraseUserRequest(user_id="sim-3"), timeout=30)

    def phase_b(self) -> None:
        """After the checkpoint: new users, more events of known users, rewards of decisions made before the
        checkpoint, an identify that merges a pre-checkpoint visitor, and an erasure."""
        for i in range(14, 17):
            self.journey(i)
        self.stub.EraseUser(pb.EraseUserRequest(user_id="sim-5"), timeout=30)  # checkpoints (after its commit)
        time.sleep(0.3)
        for i in range(17, 20):
            self.journey(i)
        for i, decision_id, step in [u for u in self.unrewarded if u[0] not in (3, 5)][:6]:  # erased users
            self.outcome(decision_id, reward_of(i, step, 9), self.now_ms - HOUR_MS)
        for i in range(0, 12, 2):
            uid = f"sim-{i}"
            ts = self.now_ms - 3 * HOUR_MS + i
            self.send([self.event(uid, "feature_used", ts + k, feature=f"feat-{k % 5}") for k in range(6)])
        self.stub.SetConsent(pb.ConsentRequest(user_id="sim-40", purpose="tracking", granted=True, source="t",
                                               timestamp_ms=self.now_ms - 2 * HOUR_MS), timeout=30)
        self.send([self.event("sim-40", "identify", self.now_ms - 2 * HOUR_MS, anonymous_id="visitor",
                              device_id="dev-1"),
                   self.event("sim-40", "session_start", self.now_ms - 2 * HOUR_MS + 1)])

    def phase_c(self) -> None:
        """After the restart: every user asks twice (an hour apart), with outcomes. Not the erased users: a
        server that keeps running still holds their in-memory shown history (caps) until it restarts, a
        known leftover of the decide path, not of checkpoints (it is rebuilt from the decisions table)."""
        for round_no in range(2):
            for i in [*(i for i in range(20) if i not in (3, 5)), 40]:
                ts = self.now_ms - 3 * HOUR_MS + round_no * 40 * MIN_MS + i * 1000  # within the daily caps
                r = self.ask(f"sim-{i}", ts, DEVICES[i % 3])
                if r.has_step and r.reason == "bandit":
                    self.outcome(r.decision_id, reward_of(i, r.step.id, 5 + round_no), ts + MIN_MS)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_state(handle: ServerHandle, now_ms: int) -> dict[str, Any]:
    """Everything the next decisions depend on: profiles, bandit policy and RNG, segmenter predictions."""
    def read() -> dict[str, Any]:
        engine = handle.server.service.decisions
        book = handle.runtime.pipeline.profiles
        profiles = {s: dataclasses.asdict(book.get(s)) for s in sorted(book.subjects())}
        predictions = {s: engine.segmenter.predict_one(book.get(s), now_ms).features for s in sorted(book.subjects())}
        return {"profiles": profiles, "predictions": predictions, "segmenter": engine.segmenter.stats,
                "models": models_view(engine.segmenter.to_state()),
                "policy": _plain(engine.decider.policy.to_state()), "rng": engine._rng.bit_generator.state,
                "learned": engine.learned, "pending": sorted(len(v) for v in [engine.joiner.pending_of(
                    handle.runtime.pipeline.pseudonym(s)) for s in book.subjects()])}
    return handle.call(read)


def models_view(state: bytes) -> dict[str, Any]:
    """The segmenter's River models and per-user marks as plain values (pickle bytes of equal models may
    differ in their memo layout)."""
    from server.base.catalog import load_catalog
    from server.learn.segments import Segmenter
    m = Segmenter.from_state(state, load_catalog(None))._m
    km, scaler = m.clusterer.steps["KMeans"], m.clusterer.steps["StandardScaler"]
    act = m.activation.steps["LogisticRegression"]
    return {"centers": {k: dict(v) for k, v in km.centers.items()}, "scaler": (dict(scaler.counts), dict(scaler.means),
            dict(scaler.vars)), "act_scaler": dict(m.activation.steps["StandardScaler"].means),
            "weights": dict(act.weights), "intercept": act.intercept,
            "counts": (m.cluster_learned, m.activation_learned, m.positives),
            "marks": {s: dataclasses.astuple(k) for s, k in m.marks.items()}}


def checkpoint_now(handle: ServerHandle) -> CheckpointInfo:
    assert handle.server.checkpointer is not None
    return asyncio.run_coroutine_threadsafe(handle.server.checkpointer.checkpoint(), handle.loop).result(60)


def logged_after(db: pathlib.Path, rowid: int) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT user_pseudo, timestamp_ms, surface, step_id, propensity, reason, policy_version, "
                            "context, eligible, probabilities FROM decisions WHERE rowid > ? ORDER BY rowid",
                            (rowid,)).fetchall()


def _mark_of(db: pathlib.Path) -> Any:
    from server.store.marks import read_mark
    from server.store.sqlite import SqliteStore
    store = SqliteStore(db, readonly=True)
    try:
        return read_mark(store)
    finally:
        store.close()


def max_decision(db: pathlib.Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM decisions").fetchone()[0]


@pytest.fixture(scope="module")
def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, now_ms: int) -> dict[str, Any]:
    """A server that never restarts: phases A, B and C in one run."""
    db = tmp_path_factory.mktemp("ref") / "onramp.db"
    with running_server(config(), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        script.phase_a()
        script.phase_b()
        state = model_state(h, now_ms)
        mark = max_decision(db)
        n = len(script.answers)
        script.phase_c()
    return {"state": state, "answers_c": script.answers[n:], "answers_ab": script.answers[:n],
            "logged_c": logged_after(db, mark)}


@pytest.mark.parametrize("fork", [True, False], ids=["forked_child", "in_process"])
def test_a_restart_from_checkpoint_plus_log_decides_exactly_as_without_restart(
        tmp_path: pathlib.Path, now_ms: int, reference: dict[str, Any], caplog: pytest.LogCaptureFixture,
        fork: bool) -> None:
    """Both ways of writing a checkpoint ([server] checkpoint_fork): a forked child's copy-on-write snapshot
    and the in-process pickle."""
    db = tmp_path / "onramp.db"
    with running_server(config(checkpoint_fork=fork), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        script.phase_a()
        info = checkpoint_now(h)
        assert info.forked == fork
        assert info.mark.events_seq > 0 and info.mark.outcomes_rowid > 0 and info.mark.decisions_rowid > 0
        script.phase_b()
        before = model_state(h, now_ms)
        info_end = h.call(lambda: None) or _mark_of(db)
        h.server.checkpointer.at_stop = False  # stop like a crash would: the checkpoint stays the old one
    assert script.answers == reference["answers_ab"]
    assert before == reference["state"]

    with caplog.at_level(logging.INFO, logger="server.ops.state"), \
            running_server(config(checkpoint_fork=fork), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        # the last checkpoint is the one the erasure of sim-5 wrote; journeys, rewards and the identify
        # after it come from the log
        resumed = h.runtime.resume
        assert resumed is not None and resumed.mark.events_seq > info.mark.events_seq
        assert resumed.mark.events_seq < info_end.events_seq and resumed.mark.outcomes_rowid < info_end.outcomes_rowid
        after = model_state(h, now_ms)
        mark = max_decision(db)
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        script._n = 10_000
        script.phase_c()
    assert "resumed from checkpoint" in caplog.text
    assert "sim-5" not in after["profiles"] and "sim-3" not in after["profiles"]  # erased: not back
    assert "anon:visitor" not in after["profiles"] and after["profiles"]["sim-40"]["features_used"] == {"api": 1}
    for key in ("profiles", "predictions", "segmenter", "models", "policy", "rng", "learned", "pending"):
        assert after[key] == reference["state"][key], key
    assert script.answers == reference["answers_c"]
    assert logged_after(db, mark) == reference["logged_c"]
    assert sum(a.get("reason") == "bandit" for a in script.answers) >= 5


def test_an_erasure_after_the_last_checkpoint_is_honoured(tmp_path: pathlib.Path, now_ms: int,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Even when no checkpoint followed the erasure (a crash right after it), nothing of the erased user comes
    back: the checkpoint holds their profile and models that learned from them, so it is not resumed from and
    the server rebuilds from the log."""
    db = tmp_path / "onramp.db"
    with running_server(config(), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        for i in range(4):
            script.journey(i)
        checkpoint_now(h)
        h.server.checkpointer.after_erase = False
        h.server.checkpointer.at_stop = False
        stub = pb_grpc.OnrampStub(ch)
        stub.EraseUser(pb.EraseUserRequest(user_id="sim-2"), timeout=30)
        script.send([script.event("sim-1", "feature_used", now_ms - HOUR_MS, feature="late")])
        expected = model_state(h, now_ms)["profiles"]
    with caplog.at_level(logging.INFO, logger="server.ops.state"), running_server(config(), db_path=db) as h, \
            grpc.insecure_channel(h.address) as ch:
        assert h.runtime.resume is None
        assert "a person was erased since the checkpoint" in caplog.text
        assert model_state(h, now_ms)["profiles"] == expected
        assert "sim-2" not in expected
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.OnrampStub(ch).GetUserProfile(pb.GetUserProfileRequest(user_id="sim-2"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_graceful_restart_writes_a_checkpoint_and_replays_nothing(tmp_path: pathlib.Path, now_ms: int,
                                                                  reference: dict[str, Any]) -> None:
    db = tmp_path / "onramp.db"
    with running_server(config(), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        script.phase_a()
        script.phase_b()
    assert (tmp_path / "onramp.db.checkpoint").exists()
    with running_server(config(), db_path=db) as h:
        assert h.runtime.resume is not None
        assert model_state(h, now_ms) == reference["state"]


# -- unusable checkpoints ---------------------------------------------------------------------------------------
def _other_catalog() -> dict[str, Any]:
    raw = tomllib.loads((ROOT / "server" / "catalog" / "demo.toml").read_text())
    raw["steps"][0]["title"] = raw["steps"][0]["title"] + " (edited)"
    return raw


def _truncate(path: pathlib.Path, _other: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _corrupt(path: pathlib.Path, _other: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _other_db(path: pathlib.Path, other: pathlib.Path) -> None:
    shutil.copyfile(other, path)


@pytest.fixture(scope="module")
def stopped_db(tmp_path_factory: pytest.TempPathFactory, now_ms: int) -> tuple[pathlib.Path, pathlib.Path]:
    """A database after phases A and B with its shutdown checkpoint, and a checkpoint of another database."""
    base = tmp_path_factory.mktemp("stopped")
    with running_server(config(), db_path=base / "onramp.db") as h, grpc.insecure_channel(h.address) as ch:
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        script.phase_a()
        script.phase_b()
    with running_server(config(), db_path=base / "other.db") as h, grpc.insecure_channel(h.address) as ch:
        Script(pb_grpc.OnrampStub(ch), now_ms).journey(1)
    return base / "onramp.db", base / "other.db.checkpoint"


def _copy_db(src: pathlib.Path, dst_dir: pathlib.Path) -> pathlib.Path:
    dst_dir.mkdir()
    for f in src.parent.glob(src.name + "*"):
        shutil.copyfile(f, dst_dir / f.name)
    return dst_dir / src.name


def _run_c(db: pathlib.Path, now_ms: int, cfg: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    with running_server(cfg, db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        resumed = h.runtime.resume
        state = model_state(h, now_ms)
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        script._n = 10_000
        script.phase_c()
    return resumed, script.answers, state


@pytest.mark.parametrize("spoil,catalog,expected", [
    (_truncate, None, "truncated"),
    (_corrupt, None, "checksum mismatch"),
    (_other_db, None, "made for another database"),
    (None, "other", "made for another catalog"),
])
def test_an_unusable_checkpoint_is_ignored_with_a_warning_and_the_log_rebuilt(
        tmp_path: pathlib.Path, now_ms: int, stopped_db: tuple[pathlib.Path, pathlib.Path],
        spoil: Callable[[pathlib.Path, pathlib.Path], None] | None, catalog: str | None, expected: str,
        caplog: pytest.LogCaptureFixture) -> None:
    src, other_checkpoint = stopped_db
    cfg = config() if catalog is None else {**config(), **_other_catalog()}
    spoiled = _copy_db(src, tmp_path / "spoiled")
    if spoil is not None:
        spoil(pathlib.Path(f"{spoiled}.checkpoint"), other_checkpoint)
    clean = _copy_db(src, tmp_path / "clean")
    pathlib.Path(f"{clean}.checkpoint").unlink()
    with caplog.at_level(logging.WARNING):
        resumed, answers, state = _run_c(spoiled, now_ms, cfg)
    assert resumed is None
    assert f"ignoring checkpoint {spoiled}.checkpoint" in caplog.text and expected in caplog.text, caplog.text
    caplog.clear()
    resumed_clean, answers_clean, state_clean = _run_c(clean, now_ms, cfg)
    assert resumed_clean is None and "ignoring checkpoint" not in caplog.text
    assert answers == answers_clean and state == state_clean


def test_checkpoint_interval_zero_writes_none(tmp_path: pathlib.Path, now_ms: int) -> None:
    db = tmp_path / "onramp.db"
    with running_server(config(checkpoint_interval_s=0), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        assert h.server.checkpointer is None
        Script(pb_grpc.OnrampStub(ch), now_ms).journey(0, asks=1)
    assert not (tmp_path / "onramp.db.checkpoint").exists()


# -- SIGKILL between checkpoints (a real server process) ---------------------------------------------------------
def _process_config(path: pathlib.Path) -> pathlib.Path:
    path.write_text(f'[server]\ncheckpoint_interval_s = 1\n\n[privacy]\npseudonym_key = "{KEY}"\n\n'
                    '[ingest]\nsynchronous = "normal"\n')
    return path


def _wait_for(log_path: pathlib.Path, text: str, start: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text()[start:]:
        assert time.monotonic() < deadline, f"no {text!r} in the server log"
        time.sleep(0.05)


def test_sigkill_between_checkpoints_then_resume_equals_no_crash(tmp_path: pathlib.Path, now_ms: int) -> None:
    """``python -m server serve`` checkpointing every second is killed with SIGKILL after phase B (some of
    it after the last checkpoint); restarted, it answers phase C exactly like a server that was not killed."""
    from test_crash_recovery import ServerProcess

    cfg = _process_config(tmp_path / "onramp.toml")
    runs: dict[str, tuple[list[dict[str, Any]], list[tuple]]] = {}
    for name in ("killed", "reference"):
        db = tmp_path / name / "onramp.db"
        db.parent.mkdir()
        log_path = tmp_path / name / "server.log"
        log_path.touch()
        server = ServerProcess(db, log_path, ("--config", str(cfg)))
        try:
            with grpc.insecure_channel(server.address) as ch:
                script = Script(pb_grpc.OnrampStub(ch), now_ms)
                script.phase_a()
                start = log_path.stat().st_size
                _wait_for(log_path, "checkpoint ", start)  # a periodic checkpoint after phase A
                script.phase_b()
            if name == "killed":
                server.kill()
                text = log_path.read_text()
                assert "checkpoint" in text[start:] and "Traceback" not in text
                server = ServerProcess(db, log_path, ("--config", str(cfg)))
                assert "resumed from checkpoint" in log_path.read_text()
            mark = max_decision(db)
            with grpc.insecure_channel(server.address) as ch:
                script = Script(pb_grpc.OnrampStub(ch), now_ms)
                script._n = 10_000
                script.phase_c()
            assert server.terminate() == 0
        finally:
            if server.proc.poll() is None:
                server.kill()
        runs[name] = (script.answers, logged_after(db, mark))
    answers, logged = runs["killed"]
    assert answers == runs["reference"][0]
    assert logged == runs["reference"][1]  # incl. every logged context feature (cluster_*, activation_prob)
    assert sum(a.get("reason") == "bandit" for a in answers) >= 5


def test_with_checkpoints_off_an_earlier_checkpoint_file_is_removed(tmp_path: pathlib.Path) -> None:
    """A file that is never read nor rewritten after an erasure could keep profiles of people erased since."""
    db = tmp_path / "onramp.db"
    with running_server(config(), db_path=db):
        pass
    assert (tmp_path / "onramp.db.checkpoint").exists()  # the shutdown checkpoint
    with running_server(config(checkpoint_interval_s=0), db_path=db) as h:
        assert h.runtime.resume is None
        assert not (tmp_path / "onramp.db.checkpoint").exists()
