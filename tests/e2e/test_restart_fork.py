"""Checkpoints by a forked child while a real server is busy: an ingest stream and decision/outcome calls
run through every checkpoint without an error, the server keeps serving, and a restart from the last of those
checkpoints (plus the log after it) has exactly the state of the server that never stopped -- profiles,
segmenter models and predictions, bandit policy, sampling RNG, pending rewards -- and then gives the same
answers and logs the same decisions as that server."""
from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import running_server
from test_restart_checkpoint import (DEVICES, HOUR_MS, Script, checkpoint_now, config, logged_after, max_decision,
                                     model_state, reward_of)

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="checkpoints by a forked child need os.fork")]

LOAD_USERS = 12


class Load:
    """Background traffic: one long IngestEventBatches stream (each batch sent after the previous ack, a few
    ms apart, so the log keeps every batch boundary) and a thread of GetNextStep + ReportOutcome calls."""

    def __init__(self, address: str, now_ms: int, users: range) -> None:
        self.address = address
        self.now_ms = now_ms
        self.users = users
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.batches_acked = 0
        self.decisions = 0
        self._threads = [threading.Thread(target=self._ingest, daemon=True),
                         threading.Thread(target=self._decide, daemon=True)]

    def start(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            stub = pb_grpc.OnrampStub(ch)
            for i in range(LOAD_USERS):
                stub.SetConsent(pb.ConsentRequest(user_id=f"load-{i}", purpose="tracking", granted=True, source="t",
                                                  timestamp_ms=self.now_ms - 30 * HOUR_MS), timeout=30)
        for t in self._threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)
            assert not t.is_alive()

    def _ingest(self) -> None:
        acked: queue.Queue[int] = queue.Queue()

        def batches() -> Iterator[pb.EventBatch]:
            n = 0
            while not self.stop.is_set():
                n += 1
                ts = self.now_ms - 25 * HOUR_MS + n * 10
                yield pb.EventBatch(sequence=n, events=[
                    pb.Event(event_id=f"load-ev-{n}-{k}", user_id=f"load-{(n + k) % LOAD_USERS}", name="feature_used",
                             feature=f"feat-{(n * 7 + k) % 5}", timestamp_ms=ts + k, device_type=DEVICES[k % 3])
                    for k in range(5)])
                try:
                    acked.get(timeout=30)
                except queue.Empty:
                    self.errors.append(f"no ack for batch {n}")
                    return
                time.sleep(0.004)  # the next batch gets another received_ms (the batch boundary the log keeps)
        try:
            with grpc.insecure_channel(self.address) as ch:
                for ack in pb_grpc.OnrampStub(ch).IngestEventBatches(batches(), timeout=120):
                    if ack.accepted != 5:
                        self.errors.append(f"batch {ack.sequence}: {ack}")
                    self.batches_acked += 1
                    acked.put(ack.sequence)
        except grpc.RpcError as exc:
            self.errors.append(f"ingest stream: {exc.code()} {exc.details()}")

    def _decide(self) -> None:
        try:
            with grpc.insecure_channel(self.address) as ch:
                stub = pb_grpc.OnrampStub(ch)
                n = 0
                while not self.stop.is_set():
                    n += 1
                    i = self.users[n % len(self.users)]
                    ts = self.now_ms - 2 * HOUR_MS + n * 1000
                    r = stub.GetNextStep(pb.NextStepRequest(user_id=f"sim-{i}", timestamp_ms=ts,
                                                            context={"device_type": DEVICES[i % 3]}), timeout=30)
                    if r.has_step and r.reason == "bandit":
                        stub.ReportOutcome(pb.OutcomeRequest(decision_id=r.decision_id, reward=reward_of(i, r.step.id, n),
                                                             outcome="completed", timestamp_ms=ts + 1), timeout=30)
                    self.decisions += 1
                    time.sleep(0.002)
        except grpc.RpcError as exc:
            self.errors.append(f"decide: {exc.code()} {exc.details()}")


def test_forked_checkpoints_under_load_then_restart_has_the_same_state(tmp_path: pathlib.Path) -> None:
    now_ms = int(time.time() * 1000)
    db = tmp_path / "onramp.db"
    with running_server(config(checkpoint_fork=True), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        script = Script(pb_grpc.OnrampStub(ch), now_ms)
        for i in range(8):
            script.journey(i)
        load = Load(h.address, now_ms, range(8))
        load.start()
        infos = []
        try:
            for _ in range(3):
                seen = (load.batches_acked, load.decisions)
                deadline = time.monotonic() + 60
                while load.batches_acked < seen[0] + 3 or load.decisions < seen[1] + 3:  # traffic is flowing
                    assert time.monotonic() < deadline and not load.errors, load.errors
                    time.sleep(0.01)
                infos.append(checkpoint_now(h))
            seen = (load.batches_acked, load.decisions)
            deadline = time.monotonic() + 60
            while load.batches_acked < seen[0] + 3 or load.decisions < seen[1] + 3:  # and goes on after it
                assert time.monotonic() < deadline and not load.errors, load.errors
                time.sleep(0.01)
        finally:
            load.finish()
        assert load.errors == []
        assert all(i.forked for i in infos)
        assert infos[0].mark.events_seq < infos[1].mark.events_seq < infos[2].mark.events_seq
        for i in range(8, 10):  # more after the last checkpoint, replayed at the restart
            script.journey(i)
        before = model_state(h, now_ms)
        assert sum(p.startswith("load-") for p in before["profiles"]) == LOAD_USERS
        # the restart runs on a copy made here (a consistent SQLite backup + the last checkpoint file), so
        # this server can go on and give the answers a server that never stopped gives
        copy = tmp_path / "copy" / "onramp.db"
        copy.parent.mkdir()
        with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        shutil.copyfile(f"{db}.checkpoint", f"{copy}.checkpoint")
        mark = max_decision(db)
        live = Script(pb_grpc.OnrampStub(ch), now_ms)
        live._n = 10_000
        live.phase_c()
        h.server.checkpointer.at_stop = False
    with running_server(config(checkpoint_fork=True), db_path=copy) as h, grpc.insecure_channel(h.address) as ch:
        assert h.runtime.resume is not None and h.runtime.resume.mark == infos[-1].mark
        after = model_state(h, now_ms)
        restarted = Script(pb_grpc.OnrampStub(ch), now_ms)
        restarted._n = 10_000
        restarted.phase_c()
    for key in ("profiles", "predictions", "segmenter", "models", "policy", "rng", "learned", "pending"):
        assert after[key] == before[key], key
    assert restarted.answers == live.answers
    assert logged_after(copy, mark) == logged_after(db, mark)  # same decisions logged, probabilities included
    assert sum(a.get("reason") == "bandit" for a in live.answers) >= 3  # RNG draws compared too
