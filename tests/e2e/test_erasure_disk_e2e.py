"""Erasure over real gRPC, seen on disk: once EraseUser returns, the bytes of the database file, its -wal and
-shm files hold none of the person's raw ids (deleted rows are zeroed by secure_delete, the WAL with its older
copies is checkpointed and truncated); the other people's ids are all still there."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import running_server
from tests.conftest import EventFactory

ERASED = "zelda-erased-4471"
KEPT = ("yusuf-kept-9917", "xena-kept-5523")


def ids_of(user: str) -> dict[str, str]:
    """The distinctive raw ids of one person: user id, web visitor, phone, and an id kept in a property."""
    stem = user.rsplit("-", 2)[0]
    return {"user_id": user, "anonymous_id": f"{stem}-web-visitor", "device_id": f"{stem}-phone",
            "ref": f"{stem}-crm-ref"}


def feed(stub: pb_grpc.OnrampStub, events: EventFactory, user: str) -> None:
    """Consent, anonymous then identified events (ids in their properties too), decisions and outcomes."""
    ids = ids_of(user)
    props = {"account": ids["user_id"], "crm": ids["ref"]}
    for purpose in ("tracking", "personalization"):
        events.grant(stub, user, purpose=purpose)
        events.grant(stub, anonymous_id=ids["anonymous_id"], purpose=purpose)
    visitor = stub.GetNextStep(pb.NextStepRequest(anonymous_id=ids["anonymous_id"], surface="in_app"))
    stub.IngestEvents(iter([
        *events.many(3, "", anonymous_id=ids["anonymous_id"], device_id=ids["device_id"], channel="web",
                     feature="reports", properties=props),
        events.make(user, name="identify", anonymous_id=ids["anonymous_id"], device_id=ids["device_id"]),
        events.make(user, name="session_start", channel="ios", properties=props),
        *events.many(4, user, feature="reports", properties=props),
    ]))
    decided = stub.GetNextStep(pb.NextStepRequest(user_id=user, surface="in_app"))
    for d in (visitor, decided):
        if d.decision_id:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=d.decision_id, reward=1.0))


def needles(users: Iterable[str]) -> list[bytes]:
    return [v.encode("utf-8") for u in users for v in ids_of(u).values()]


def found_in(data: bytes, wanted: list[bytes]) -> list[bytes]:
    return [n for n in wanted if n in data]


def db_files(db: Path) -> bytes:
    """The bytes of the database file, its -wal and its -shm (when present)."""
    return b"".join(Path(f"{db}{s}").read_bytes() for s in ("", "-wal", "-shm") if Path(f"{db}{s}").exists())


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_after_erase_no_file_of_the_server_holds_the_persons_raw_ids(tmp_path: Path, events: EventFactory) -> None:
    db = tmp_path / "onramp.db"
    erased, kept = needles([ERASED]), needles(KEPT)
    with running_server(db_path=db) as h, \
            grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        feed(stub, events, KEPT[0])
        feed(stub, events, ERASED)
        # what SQLite's automatic checkpoint does under load: the rows so far reach the database file itself
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        feed(stub, events, KEPT[1])  # these stay in the WAL only
        stub.IngestEvents(iter(events.many(2, ERASED, properties={"crm": ids_of(ERASED)["ref"]})))
        assert found_in(Path(db).read_bytes(), erased) == erased  # in the main file, before the erasure

        reply = stub.EraseUser(pb.EraseUserRequest(user_id=ERASED))
        assert reply.deleted["events"] == 11 and reply.deleted["decisions"] >= 1

        on_disk = db_files(db)
        assert found_in(on_disk, erased) == []
        assert found_in(on_disk, kept) == kept
        everything = {p.name: found_in(p.read_bytes(), erased) for p in tmp_path.iterdir() if p.is_file()}
        assert {name for name, hits in everything.items() if hits} == set(), everything
        assert {p.name for p in tmp_path.iterdir()} >= {"onramp.db"}
