"""Two workers on one database file (two real stores, writer threads, pipelines and engines, and the learner
that publishes the models an erasure waits for): a consent grant or
withdrawal, an identify (the device-based link included) and an erasure done through one are honoured by the
other on its very next call, because identity links, device hints, consent and tombstones are read from the
store per request and per ingest job, not held per process."""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from onramp.v1 import onramp_pb2 as pb
from server.api.validation import event_values
from server.base.clock import now_ms
from server.base.records import EventValues
from server.decide.engine import Choice
from server.ingest.pipeline import DEVICE_HINTS_KEY, IngestResult
from server.learn.learner import Learner
from tests.memory_traces import traces
from tests.server.engine_support import MIN_MS, T0, Harness


class Worker:
    """One worker's view of the shared database, over a :class:`Harness`."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.pipeline = h.pipeline

    async def send(self, eid: str, name: str = "page_view", user: str = "", anon: str = "", device: str = ""
                   ) -> IngestResult:
        ev = pb.Event(event_id=eid, user_id=user, anonymous_id=anon, device_id=device, name=name,
                      timestamp_ms=T0 + MIN_MS)
        return await self.pipeline.ingest([event_values(ev)])

    def choose(self, user: str = "", anon: str = "") -> Choice:
        """What GetNextStep decides (not logged): the servicer's resolution, then the engine."""
        return self.h.engine.choose(self.pipeline.resolve(user, anon), "", {}, T0 + 2 * MIN_MS)

    def links(self, user: str) -> set[tuple[str, str]]:
        return {(link.alias_kind, link.alias) for link in self.pipeline.identity.links_of(user)}


Scenario = Callable[[Worker, Worker], Awaitable[None]]


def on_two_workers(tmp_path: Path, scenario: Scenario) -> None:
    db = tmp_path / "shared.db"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        harnesses = [Harness(db), Harness(db)]
        for h in harnesses:
            h.open(loop)
        first = harnesses[0]
        learner = Learner(first.store, first.writer, first.catalog, first.pipeline.pseudonym, interval_s=0.02)
        learning = asyncio.create_task(learner.run())
        try:
            await scenario(Worker(harnesses[0]), Worker(harnesses[1]))
        finally:
            learner.stop()
            await learning
            for h in harnesses:
                await h.close()
    asyncio.run(main())


def test_consent_given_and_withdrawn_on_one_worker_gates_the_other(tmp_path: Path) -> None:
    async def scenario(a: Worker, b: Worker) -> None:
        assert (await b.send("e1", user="ann")).dropped == {"no_consent": 1}
        assert not b.choose("ann").tracked
        await a.h.consent("ann")  # tracking and personalization, through a
        assert (await b.send("e2", user="ann")).accepted == 1
        choice = b.choose("ann")
        assert choice.tracked and choice.decision.reason == "core"
        assert [(c.purpose, c.granted) for c in b.pipeline.consent.records("ann")] == [
            ("personalization", True), ("tracking", True)]

        await a.h.consent("ann", "personalization", granted=False)
        assert b.choose("ann").decision.reason == "no_consent"
        await a.h.consent("ann", "tracking", granted=False)
        assert (await b.send("e3", user="ann")).dropped == {"opted_out": 1}
        assert not b.choose("ann").tracked
        await b.h.consent("ann", "tracking")  # and back, the other way
        assert (await a.send("e4", user="ann")).accepted == 1
    on_two_workers(tmp_path, scenario)


def test_an_identify_on_one_worker_links_on_the_other(tmp_path: Path) -> None:
    async def scenario(a: Worker, b: Worker) -> None:
        await a.h.consent("ann")
        await b.h.consent("anon:v2", "tracking")
        # a visitor on the tablet, seen only by b; then ann identifies on the tablet through a, with another id
        assert (await b.send("e1", anon="v2", device="tablet")).stored[0].subject == "anon:v2"
        assert b.choose(anon="v1").pseudo == b.pipeline.pseudonym("anon:v1")
        assert (await a.send("e2", "identify", user="ann", anon="v1", device="tablet")).accepted == 1

        assert b.pipeline.resolve("", "v1") == "ann"
        assert b.pipeline.resolve("", "v2") == "ann"  # the visitor seen on the tablet came along with it
        assert b.pipeline.resolve("", "v9", "tablet") == "ann"
        assert b.links("ann") == {("anonymous_id", "v1"), ("anonymous_id", "v2"), ("device_id", "tablet")}
        assert b.choose(anon="v2").pseudo == b.pipeline.pseudonym("ann")
        assert (await b.send("e3", anon="v2")).stored[0].subject == "ann"
        profile = b.pipeline.profile("ann")
        assert profile is not None and b.pipeline.profile("anon:v2") is None  # the visitor's profile merged

        # consent given by a visitor on b is carried to the user who identifies on a
        await b.h.consent("anon:v3", "tracking")
        assert (await a.send("e4", "identify", user="bo", anon="v3")).accepted == 1
        assert [(c.purpose, c.granted) for c in b.pipeline.consent.records("bo")] == [("tracking", True)]
        assert (await b.send("e5", anon="v3")).stored[0].subject == "bo"
    on_two_workers(tmp_path, scenario)


def test_an_erasure_on_one_worker_is_honoured_by_the_other(tmp_path: Path) -> None:
    async def scenario(a: Worker, b: Worker) -> None:
        await a.h.consent("ann")
        await a.send("e1", "identify", user="ann", anon="v1", device="phone")
        assert a.pipeline.resolve("", "v1") == "ann"
        assert a.choose("ann").tracked

        await b.pipeline.erase("ann")
        assert a.pipeline.resolve("", "v1") == "anon:v1" and a.pipeline.resolve("", "v9", "phone") == "anon:v9"
        assert a.links("ann") == set() and a.pipeline.consent.records("ann") == []
        assert not a.choose("ann").tracked
        assert (await a.send("e2", user="ann")).dropped == {"erased": 1}
        export = await a.pipeline.export("ann")
        assert (export.links, export.consents, export.events) == ([], [], [])

        await b.h.consent("ann", "tracking")  # a new grant clears the tombstone, for every worker
        assert (await a.send("e3", user="ann")).accepted == 1
    on_two_workers(tmp_path, scenario)



def test_an_erasure_on_one_worker_leaves_no_trace_in_the_others_memory(tmp_path: Path) -> None:
    """The other worker held the person (cached pseudonyms, its writer's kept profile, segment cache, experiment
    assignment, its readers' page caches); once it loads the snapshot that includes the erasure (what its poll
    does within a learner round), nothing reachable from its engine and pipeline names them."""
    async def scenario(a: Worker, b: Worker) -> None:
        await a.h.consent("carol")
        for k in range(3):
            assert (await a.send(f"e{k}", user="carol")).accepted == 1
        assert a.choose("carol").tracked
        assert a.pipeline.profile("carol") is not None
        assert traces([a.h.engine, a.pipeline], ["carol"])  # held before

        await b.pipeline.erase("carol")  # answers once the learner published models without her
        a.h.engine.load_snapshot()  # a's poll (it may have run already)
        assert traces([a.h.engine, a.pipeline], ["carol"]) == []
        assert not a.choose("carol").tracked  # and she is served as unknown
    on_two_workers(tmp_path, scenario)

def test_a_profile_written_by_both_workers_counts_every_event(tmp_path: Path) -> None:
    """Each writer keeps the profiles it wrote (not decoded again when read back unchanged): a profile the other
    worker changed meanwhile, or that an erasure dropped, is read as stored, so no event is lost or counted twice."""
    async def scenario(a: Worker, b: Worker) -> None:
        await a.h.consent("ann")
        sent = 0
        for k, worker in enumerate((a, a, b, a, b, b, a)):
            assert (await worker.send(f"e{k}", "feature_used", user="ann")).accepted == 1
            sent += 1
            for w in (a, b):
                profile = w.pipeline.profile("ann")
                assert profile is not None and profile.event_count == sent
        await b.pipeline.erase("ann")
        await b.h.consent("ann", "tracking")
        assert (await a.send("after", "feature_used", user="ann")).accepted == 1
        profile = b.pipeline.profile("ann")
        assert profile is not None and profile.event_count == 1
    on_two_workers(tmp_path, scenario)


def test_device_hints_are_rows_noted_once_from_an_older_event_log(tmp_path: Path) -> None:
    """Device hints live in their own table; a database from before that gets them from its event log once,
    and a restart then reads no event."""
    async def noted(a: Worker, b: Worker) -> None:
        await a.h.consent("anon:v2", "tracking")
        await a.send("e1", anon="v2", device="tablet")
    on_two_workers(tmp_path, noted)
    db = tmp_path / "shared.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT device_id, anonymous_id FROM device_hints").fetchall() == [("tablet", "v2")]
        conn.execute("DELETE FROM device_hints")  # as an older database: hints only in the event log
        conn.execute("DELETE FROM meta WHERE key = ?", (DEVICE_HINTS_KEY,))

    async def restarted(a: Worker, b: Worker) -> None:
        await a.h.consent("ann")
        await a.send("e2", "identify", user="ann", device="tablet")
        assert b.pipeline.resolve("", "v2") == "ann"
    on_two_workers(tmp_path, restarted)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM device_hints").fetchone()[0] == 0  # linked: hints dropped
        assert conn.execute("SELECT value FROM meta WHERE key = ?", (DEVICE_HINTS_KEY,)).fetchone() == ("1",)


def test_two_workers_ingesting_the_same_people_at_once_store_each_event_once(tmp_path: Path) -> None:
    """Both workers get every batch at once (a client re-sending through the other worker while the first still
    works on it): their writers take turns on the one file, each batch's digests and rows worked out before its
    transaction, so each event is stored and counted once, the other copy counted as a duplicate, and every
    profile counts each of its person's events once, whichever worker wrote it last."""
    people, batches, size = 40, 30, 60
    now = now_ms()

    def batch(b: int) -> list[EventValues]:
        out = []
        for j in range(size):
            k = b * size + j
            if k % 10 == 3:  # a returning visitor, by anonymous id only (its subject resolved in the job)
                ev = pb.Event(event_id=f"e{k}", anonymous_id=f"v{k % 3}", name="page_view", timestamp_ms=now)
            else:
                ev = pb.Event(event_id=f"e{k}", user_id=f"p{k % people}", name="feature_used", feature="reports",
                              timestamp_ms=now - k)
            out.append(event_values(ev))
        return out

    async def scenario(a: Worker, b: Worker) -> None:
        for p in range(people):
            await a.h.consent(f"p{p}", "tracking")
        for v in range(3):
            await b.h.consent(f"anon:v{v}", "tracking")
        sent = [batch(i) for i in range(batches)]
        futures = []
        for events in sent:  # each batch to both workers, their jobs queued together
            futures += [a.pipeline.submit_events(events), b.pipeline.submit_events(list(reversed(events)))]
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        total = batches * size
        assert sum(r.accepted for r in results) == total
        assert sum(r.duplicates for r in results) == total
        assert not any(r.dropped for r in results)
        assert a.h.store.count("events") == total
        expected: dict[str, int] = {}
        for events in sent:
            for ev in events:
                subject = ev[1] or f"anon:{ev[2]}"
                expected[subject] = expected.get(subject, 0) + 1
        for w in (a, b):
            for subject, n in expected.items():
                profile = w.pipeline.profile(subject)
                assert profile is not None and profile.event_count == n, subject
    on_two_workers(tmp_path, scenario)
