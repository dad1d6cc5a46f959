"""Erasure over real gRPC, seen from inside the server: right after EraseUser the running server holds no
trace of the person in memory (pending rewards, identity links, consent, segment cache, the learner's
segmenter marks, pseudonym cache -- every object reachable from the server and its learner is searched), the
database holds none (shown history and profile rows included), neither do the learner's saved state and the
published model snapshots, a restart does not bring the person back, and the person is served as a new user
(caps count from zero)."""
from __future__ import annotations

import asyncio
import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.base.records import ANON_PREFIX
from server.decide.engine import DecisionEngine
from server.ops.app import ServerHandle, running_server
from server.store.user_state import read_shows
from server.store.sqlite import TABLES
from tests.conftest import EventFactory
from tests.memory_traces import traces

IDS = ("carol", "web-anon", "app-anon", "iphone-9")


def held(h: ServerHandle, needles: list[str]) -> list[str]:
    """Needles in what the server holds (its runtime, servicer, engine, learner); the tombstones, which keep
    the pseudonyms of erased people on purpose, are rows of the store, not held in memory; run it on the
    server's loop (``h.call``)."""
    engine = h.server.service.decisions
    return traces([h.server, h.runtime, engine, h.server.learner], needles)


def needles_of(h: ServerHandle, decision_ids: list[str]) -> list[str]:
    pseudo = h.runtime.pseudonymizer.pseudonymize  # computed for the test; dropped from the cache below
    subjects = ["carol", ANON_PREFIX + "web-anon", ANON_PREFIX + "app-anon"]
    out = [*IDS, *(pseudo(s) for s in subjects), *decision_ids]
    for s in subjects:
        h.runtime.pseudonymizer.forget(s)
    return out


def populate(stub: pb_grpc.OnrampStub, events: EventFactory) -> list[str]:
    """carol (with a visitor on the web and one on her phone), and dave, who must survive; returns carol's
    decision ids."""
    events.grant(stub, anonymous_id="web-anon")
    events.grant(stub, anonymous_id="web-anon", purpose="personalization")
    events.grant(stub, "dave")
    anon = stub.GetNextStep(pb.NextStepRequest(anonymous_id="web-anon", surface="in_app"))
    stub.IngestEvents(iter([
        *events.many(3, "", anonymous_id="web-anon", channel="web"),
        events.make("carol", name="identify", anonymous_id="web-anon", device_id="iphone-9", channel="ios"),
        *events.many(2, "", anonymous_id="app-anon", device_id="iphone-9", channel="ios"),
        events.make("carol", name="session_start", channel="email"),
    ]))
    first = stub.GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
    stub.IngestEvents(iter([*events.many(2, "dave"), events.make("dave", name="session_start")]))
    dave = stub.GetNextStep(pb.NextStepRequest(user_id="dave", surface="in_app"))
    assert dave.has_step  # dave's rows are the last ones (a checkpoint's mark stays valid after carol's erasure)
    stub.ReportOutcome(pb.OutcomeRequest(decision_id=dave.decision_id, reward=1.0))
    return [d for d in (anon.decision_id, first.decision_id) if d]


def rows_mentioning(h: ServerHandle, needles: list[str]) -> dict[str, int]:
    """Rows of every table with a text value containing one of ``needles``."""
    found: dict[str, int] = {}
    with sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True) as conn:
        for table in TABLES:
            n = sum(1 for row in conn.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
                    if any(isinstance(v, str) and any(x in v for x in needles) for v in row))
            if n:
                found[table] = n
    return found


def holds_carol(h: ServerHandle) -> dict[str, bool]:
    engine: DecisionEngine = h.server.service.decisions
    learner = h.server.learner
    pseudo = h.runtime.pipeline.pseudonym("carol")
    return {"history": bool(read_shows(engine._reader, pseudo).shows),  # noqa: SLF001
            "pending": bool(learner.joiner.pending_of(pseudo)),
            "segment_cache": "carol" in engine._segment_cache,  # noqa: SLF001
            "marks": pseudo in learner.segmenter._m.marks,  # noqa: SLF001
            "profile": h.runtime.pipeline.profile("carol") is not None}


def wait_for(predicate: Any, what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def model_traces(db: str, needles: list[str]) -> list[str]:
    """Needles in the learner's saved state and the published model snapshots (pickles opened)."""
    found: list[str] = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        bodies = [b for (b,) in conn.execute("SELECT body FROM model_snapshots")]
        bodies += [b for (b,) in conn.execute("SELECT body FROM learner_state")]
    for body in bodies:
        state = pickle.loads(body)
        if "segmenter" in state:  # the learner's saved state (a snapshot holds the models as plain numbers)
            state["segmenter"] = pickle.loads(state["segmenter"])
        found += traces([state], needles)
    return found


def learned_everything(h: ServerHandle) -> bool:
    """Whether the learner has read dave's outcome and the engine uses a snapshot published after it."""
    learner, engine = h.server.learner, h.server.service.decisions
    return h.call(lambda: learner.pos.outcomes >= 1 and not learner._dirty  # noqa: SLF001
                  and engine.snapshot_version >= learner.version)


def test_after_erase_the_server_holds_nothing_of_the_person_and_serves_them_as_new(events: EventFactory) -> None:
    with running_server() as h, grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        decision_ids = populate(stub, events)
        capped = stub.GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
        assert (capped.has_step, capped.reason) == (False, "capped")  # welcome was just shown: cooldown
        wait_for(lambda: learned_everything(h), "the learner to learn dave's outcome")
        held_before = h.call(lambda: holds_carol(h))
        held_before.pop("segment_cache")  # a cache, emptied whenever a new snapshot is loaded
        assert held_before == dict.fromkeys(("history", "pending", "marks", "profile"), True)
        needles = h.call(lambda: needles_of(h, decision_ids))
        assert h.call(lambda: held(h, needles))  # the search finds what is there
        asyncio.run_coroutine_threadsafe(h.server.learner.save(int(time.time() * 1000)), h.loop).result(30)
        assert model_traces(h.db_path, needles)  # her pseudonym is in the learner's saved segmenter marks

        before_erasure = h.call(lambda: h.server.service.decisions.snapshot_version)
        erased = stub.EraseUser(pb.EraseUserRequest(user_id="carol"))
        assert erased.deleted["events"] == 7 and erased.deleted["decisions"] == 3

        assert h.call(lambda: held(h, needles)) == []
        assert rows_mentioning(h, needles) == {"tombstones": 2}  # on disk: only her and her visitor's pseudonyms
        assert model_traces(h.db_path, needles) == []
        with sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True) as conn:  # older snapshots learned from her
            kept = [v for (v,) in conn.execute("SELECT version FROM model_snapshots")]
        assert len(kept) == 1 and kept[0] > before_erasure
        assert h.call(lambda: holds_carol(h)) == dict.fromkeys(
            ("history", "pending", "segment_cache", "marks", "profile"), False)
        # a new user: no consent now, so core steps only -- and welcome is shown again (caps from zero)
        again = stub.GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
        assert (again.step.id, again.reason) == ("welcome", "no_consent")
        visitor = stub.GetNextStep(pb.NextStepRequest(anonymous_id="web-anon", surface="in_app"))
        assert (visitor.step.id, visitor.reason) == ("welcome", "no_consent")
        # dave is untouched
        assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id="dave")).event_count == 3


def test_a_restart_after_the_erasure_does_not_bring_the_person_back(tmp_path: Path, events: EventFactory) -> None:
    db = tmp_path / "onramp.db"
    with running_server(db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        decision_ids = populate(stub, events)
        wait_for(lambda: learned_everything(h), "the learner to learn dave's outcome")
        needles = h.call(lambda: needles_of(h, decision_ids))
        stub.EraseUser(pb.EraseUserRequest(user_id="carol"))
    with running_server(db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        assert h.call(lambda: held(h, needles)) == []
        assert model_traces(h.db_path, needles) == []
        again = pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
        assert (again.step.id, again.reason) == ("welcome", "no_consent")
