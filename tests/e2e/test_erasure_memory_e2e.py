"""Erasure over real gRPC, seen from inside the server: right after EraseUser the running server holds no
trace of the person in memory (shown history, pending rewards, profiles, identity links, consent, segment
cache, segmenter marks, pseudonym cache -- every object reachable from the server is searched), the
checkpoint written after the erasure holds none either, a checkpoint written *before* the erasure does not
bring the person back after a crash, and the person is served as a new user (caps count from zero)."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pickle
import shutil
import sqlite3
import threading
import time
import types
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.base.records import ANON_PREFIX
from server.decide.engine import DecisionEngine
from server.ops.app import ServerHandle, running_server
from server.store.checkpoint import read_checkpoint
from server.store.sqlite import TABLES
from tests.conftest import EventFactory

IDS = ("carol", "web-anon", "app-anon", "iphone-9")
_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType, types.FrameType,
           asyncio.AbstractEventLoop, threading.Thread, logging.Logger)


def _is_module_dict(obj: object) -> bool:
    return isinstance(obj, dict) and "__name__" in obj and "__builtins__" in obj


def traces(roots: Iterable[object], needles: list[str], skip: Iterable[object] = ()) -> list[str]:
    """Every string reachable from ``roots`` (through containers and object attributes, not through modules,
    classes, functions, loggers, threads or event loops) that contains one of ``needles``."""
    seen = {id(o) for o in skip}
    todo = deque(roots)
    found: list[str] = []
    while todo:
        obj = todo.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if any(n in obj for n in needles):
                found.append(obj)
            continue
        if isinstance(obj, (bytes, bytearray, int, float, bool)) or obj is None:
            continue
        if isinstance(obj, _OPAQUE) or _is_module_dict(obj):
            continue
        if isinstance(obj, types.MethodType):
            todo.append(obj.__self__)
            continue
        todo.extend(gc.get_referents(obj))  # attributes, slots, container items
        if isinstance(obj, dict):
            todo.extend(obj.keys())  # the GC does not traverse str keys
    return found


def held(h: ServerHandle, needles: list[str]) -> list[str]:
    """Needles in what the server holds (its runtime, servicer, engine, checkpointer), except the tombstones,
    which keep the pseudonyms of erased people on purpose (their late events are dropped); run it on the
    server's loop (``h.call``)."""
    engine = h.server.service.decisions
    return traces([h.server, h.runtime, engine], needles, skip=[h.runtime.consent._tombstones])  # noqa: SLF001


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
    pseudo = h.runtime.pipeline.pseudonym("carol")
    return {"history": bool(engine.history.of(pseudo)), "pending": bool(engine.joiner.pending_of(pseudo)),
            "segment_cache": "carol" in engine._segment_cache,  # noqa: SLF001
            "marks": "carol" in engine.segmenter._m.marks,  # noqa: SLF001
            "profile": "carol" in h.runtime.profiles}


def wait_for(predicate: Any, what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def checkpoint_traces(path: Path, needles: list[str]) -> list[str]:
    """Needles found in the state a checkpoint file holds (profiles and engine state, nested pickles opened)."""
    payload = read_checkpoint(path)
    assert payload is not None
    state = pickle.loads(payload["state"])
    engine = dict(state["engine"])
    engine["segmenter"] = pickle.loads(engine["segmenter"])
    return traces([state["profiles"], engine], needles)


def test_after_erase_the_server_holds_nothing_of_the_person_and_serves_them_as_new(events: EventFactory) -> None:
    with running_server() as h, grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        decision_ids = populate(stub, events)
        capped = stub.GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
        assert (capped.has_step, capped.reason) == (False, "capped")  # welcome was just shown: cooldown
        assert h.call(lambda: holds_carol(h)) == dict.fromkeys(
            ("history", "pending", "segment_cache", "marks", "profile"), True)
        needles = h.call(lambda: needles_of(h, decision_ids))
        assert h.call(lambda: held(h, needles))  # the search finds what is there

        checkpointer = h.server.checkpointer
        assert checkpointer is not None
        written = h.call(lambda: checkpointer.written)
        erased = stub.EraseUser(pb.EraseUserRequest(user_id="carol"))
        assert erased.deleted["events"] == 7 and erased.deleted["decisions"] == 3

        assert h.call(lambda: held(h, needles)) == []
        assert rows_mentioning(h, needles) == {"tombstones": 2}  # on disk: only her and her visitor's pseudonyms
        assert h.call(lambda: holds_carol(h)) == dict.fromkeys(
            ("history", "pending", "segment_cache", "marks", "profile"), False)
        assert h.call(lambda: len(h.server.service.decisions.joiner._deadlines))  # noqa: SLF001 - dave's stays
        # the checkpoint written right after the erasure holds nothing of her either
        wait_for(lambda: h.call(lambda: checkpointer.written) > written, "the checkpoint after the erasure")
        assert checkpoint_traces(checkpointer.path, needles) == []

        # a new user: no consent now, so core steps only -- and welcome is shown again (caps from zero)
        again = stub.GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
        assert (again.step.id, again.reason) == ("welcome", "no_consent")
        visitor = stub.GetNextStep(pb.NextStepRequest(anonymous_id="web-anon", surface="in_app"))
        assert (visitor.step.id, visitor.reason) == ("welcome", "no_consent")
        # dave is untouched
        assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id="dave")).event_count == 3


@contextlib.contextmanager
def resumed_after_erasure(tmp_path: Path, events: EventFactory) -> Iterator[tuple[ServerHandle, list[str]]]:
    """A crash after carol's erasure, before the checkpoint that follows it is written: the older checkpoint
    still holds her profile, marks, segment cache and models that learned from her, so the restarted server
    refuses it and rebuilds from the log."""
    db = tmp_path / "onramp.db"
    with running_server(db_path=db, server={"checkpoint_interval_s": 3600}) as h, \
            grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        decision_ids = populate(stub, events)
        needles = h.call(lambda: needles_of(h, decision_ids))
        checkpointer = h.server.checkpointer
        assert checkpointer is not None
        asyncio.run_coroutine_threadsafe(checkpointer.checkpoint(), h.loop).result(60)
        old = tmp_path / "before-erasure.checkpoint"
        shutil.copyfile(checkpointer.path, old)
        assert checkpoint_traces(old, needles)  # the old checkpoint does hold her
        checkpointer.after_erase = checkpointer.at_stop = False  # crash: no checkpoint after the erasure
        stub.EraseUser(pb.EraseUserRequest(user_id="carol"))
        path = checkpointer.path
    shutil.copyfile(old, path)
    with running_server(db_path=db, server={"checkpoint_interval_s": 3600}) as h:
        assert h.runtime.resume is None  # the pre-erasure checkpoint is refused
        yield h, needles


def test_a_checkpoint_from_before_the_erasure_does_not_bring_the_person_back(tmp_path: Path,
                                                                            events: EventFactory) -> None:
    with resumed_after_erasure(tmp_path, events) as (h, needles), grpc.insecure_channel(h.address) as ch:
        resume = h.runtime.resume  # the loaded checkpoint itself: see the next test
        assert h.call(lambda: traces([h.server, h.runtime, h.server.service.decisions], needles,
                                     skip=[h.runtime.consent._tombstones, resume])) == []  # noqa: SLF001
        again = pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
        assert (again.step.id, again.reason) == ("welcome", "no_consent")


def test_the_loaded_checkpoint_is_not_kept_after_the_resume(tmp_path: Path, events: EventFactory) -> None:
    with resumed_after_erasure(tmp_path, events) as (h, needles):
        assert h.call(lambda: held(h, needles)) == []
