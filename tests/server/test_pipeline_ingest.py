"""Ingest batches that wait at the writer together are stored by one combined call (server/ingest/pipeline.py,
``Pipeline._ingest_many``): the outcome must be exactly that of storing them one after the other."""
from __future__ import annotations

import dataclasses
import pathlib
import threading
from typing import Any

from onramp.v1 import onramp_pb2 as pb
from server.api.validation import event_values
from server.base.clock import now_ms
from server.base.records import StoredEvent
from server.ingest.pipeline import IngestResult, Pipeline
from server.ingest.profiles import decode_profile
from server.store.privacy import Pseudonymizer
from server.store.sqlite import ConsentRow, SqliteStore
from server.store.user_state import iter_profile_bodies
from server.store.writer import Writer

T0 = now_ms() - 3_600_000  # inside the dedupe window (server/store/events.py)


def batches() -> list[list[pb.Event]]:
    """Duplicates inside a batch and across batches, a user without consent, an anonymous visitor whose events
    move to a user on identify (in a later batch), events after the identify, properties."""
    e = pb.Event
    return [
        [e(event_id="a1", user_id="u1", name="session_start", timestamp_ms=T0, channel="web", device_type="desktop"),
         e(event_id="a2", anonymous_id="v1", device_id="d1", name="feature_used", feature="reports",
           timestamp_ms=T0 + 1),
         e(event_id="a3", user_id="nobody", name="feature_used", feature="x", timestamp_ms=T0 + 2),
         e(event_id="a1", user_id="u1", name="session_start", timestamp_ms=T0)],
        [e(event_id="b1", user_id="u1", name="survey_response", properties={"score": "4", "q": "é"},
           timestamp_ms=T0 + 3),
         e(event_id="a2", anonymous_id="v1", name="feature_used", feature="reports", timestamp_ms=T0 + 1),
         e(event_id="b2", anonymous_id="v1", name="screen_viewed", timestamp_ms=T0 + 4)],
        [e(event_id="c1", user_id="u2", anonymous_id="v1", device_id="d1", name="identify", timestamp_ms=T0 + 5),
         e(event_id="c2", anonymous_id="v1", name="feature_used", feature="export", timestamp_ms=T0 + 6),
         e(event_id="b2", anonymous_id="v1", name="screen_viewed", timestamp_ms=T0 + 4)],
        [e(event_id="d1", user_id="u2", name="step_completed", step_id="first_project", timestamp_ms=T0 + 7),
         e(event_id="c2", anonymous_id="v1", name="feature_used", feature="export", timestamp_ms=T0 + 6)],
    ]


def run(path: pathlib.Path, together: bool) -> tuple[list[IngestResult], list[list[StoredEvent]], dict[str, Any],
                                                     list[tuple[Any, ...]]]:
    store = SqliteStore(path)
    writer = Writer(store)
    pipeline = Pipeline(store, writer, Pseudonymizer(b"k" * 32))
    heard: list[list[StoredEvent]] = []
    pipeline.add_listener(lambda evs: heard.append(list(evs)))
    writer.start()
    for subject in ("u1", "u2", "anon:v1"):
        writer.run_sync(lambda s, subject=subject: pipeline._write_consent(
            s, ConsentRow(subject, "tracking", True, "test", T0), T0))
    gate = threading.Event()
    if together:
        writer.submit(lambda s: gate.wait(10))
        futures = [pipeline.submit_events([event_values(e) for e in b], received_ms=T0 + 100 + i) for i, b in enumerate(batches())]
        gate.set()
        results = [f.result(10) for f in futures]
    else:
        results = [pipeline.submit_events([event_values(e) for e in b], received_ms=T0 + 100 + i).result(10) for i, b in enumerate(batches())]
    commits = writer.commits
    writer.stop()
    subjects = {pipeline.pseudonym(s): s for s in ("u1", "u2", "anon:v1", "nobody")}
    profiles = {subjects[p]: dataclasses.asdict(decode_profile(subjects[p], body))
                for p, body in iter_profile_bodies(store)}  # the profile rows
    rows = store.conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    store.close()
    return results, heard, {"profiles": profiles, "commits": commits}, rows


def test_batches_stored_together_end_exactly_as_one_after_the_other(tmp_path: pathlib.Path) -> None:
    together = run(tmp_path / "together.db", together=True)
    apart = run(tmp_path / "apart.db", together=False)
    counts = [(r.received, r.accepted, r.duplicates, dict(r.dropped)) for r in together[0]]
    assert counts == [(r.received, r.accepted, r.duplicates, dict(r.dropped)) for r in apart[0]]
    assert counts == [(4, 2, 1, {"no_consent": 1}), (3, 2, 1, {}), (3, 2, 1, {}), (2, 1, 1, {})]
    assert together[1] == apart[1]  # listeners: the same batches of stored events, in order
    assert [[e.event_id for e in r.stored] for r in together[0]] == [["a1", "a2"], ["b1", "b2"], ["c1", "c2"], ["d1"]]
    assert together[2]["profiles"] == apart[2]["profiles"]
    assert set(together[2]["profiles"]) == {"u1", "u2"}  # the visitor's profile merged into u2 on identify
    assert together[2]["profiles"]["u2"]["event_count"] == 5
    assert together[3] == apart[3]  # the same rows, in the same order (v1's events re-keyed to u2)
    assert [row[2] for row in together[3]] == ["u1", "u2", "u1", "u2", "u2", "u2", "u2"]
    assert together[2]["commits"] < apart[2]["commits"]  # they did share a transaction


def test_a_resent_identify_links_nothing_again(tmp_path: pathlib.Path) -> None:
    """The cookie v9 signs in as cat, then as dan; a re-send of cat's identify (a client replaying its
    buffer) is a duplicate and leaves v9 linked to dan, whose later anonymous events stay his."""
    store = SqliteStore(tmp_path / "i.db")
    writer = Writer(store)
    pipeline = Pipeline(store, writer, Pseudonymizer(b"k" * 32))
    writer.start()
    for subject in ("cat", "dan", "anon:v9"):
        writer.run_sync(lambda s, subject=subject: pipeline._write_consent(
            s, ConsentRow(subject, "tracking", True, "test", T0), T0))
    e = pb.Event
    send = lambda *evs: pipeline.submit_events([event_values(x) for x in evs], received_ms=T0 + 100).result(10)  # noqa: E731
    cat = e(event_id="id-cat", user_id="cat", anonymous_id="v9", name="identify", timestamp_ms=T0)
    send(cat)
    send(e(event_id="id-dan", user_id="dan", anonymous_id="v9", name="identify", timestamp_ms=T0 + 1))
    again = send(cat, cat, e(event_id="after", anonymous_id="v9", name="feature_used", timestamp_ms=T0 + 2))
    writer.stop()
    assert (again.accepted, again.duplicates) == (1, 2)
    assert pipeline.resolve("", "v9") == "dan"
    assert [(ev.event_id, ev.subject) for _, ev in store.iter_events()] == [
        ("id-cat", "cat"), ("id-dan", "dan"), ("after", "dan")]
    store.close()
