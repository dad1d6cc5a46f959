"""The store Protocols (server/store/interfaces.py) as the SQLite store implements them: every method with the
Protocol's parameters, and the calls that must be atomic are one unit (a failure inside leaves nothing)."""
from __future__ import annotations

import inspect
import pathlib

import pytest

from server.base.records import StoredEvent
from server.store import interfaces
from server.store.rows import (DECISION_COLUMNS, ConsentRow, DecisionInputs, JoinedRow, LoggedDecision, ProfileWrites,
                               Snapshot, SubjectKeys, encode_properties)
from server.store.sqlite import SqliteStore, open_store
from server.store.writer import Writer

PROTOCOLS = (interfaces.EventLog, interfaces.SubjectStore, interfaces.DecisionLog, interfaces.ProfileStore,
             interfaces.ShowHistory, interfaces.LearningLog, interfaces.PersonStore, interfaces.Transactions,
             interfaces.Upgrades)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    s = open_store(tmp_path / "s.db")
    yield s
    s.close()


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(protocol).items()
            if inspect.isfunction(fn) and not name.startswith("_")}


def _parameters(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


def test_the_composite_store_is_every_protocol() -> None:
    composite = set(dir(interfaces.Store))
    for protocol in PROTOCOLS:
        assert set(_methods(protocol)) <= composite, protocol


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_sqlite_store_implements_each_method_with_the_protocols_parameters(store: SqliteStore, protocol: type) -> None:
    methods = _methods(protocol)
    assert methods, protocol
    for name, sig in methods.items():
        impl = getattr(store, name, None)
        assert callable(impl), f"SqliteStore lacks {protocol.__name__}.{name}"
        assert _parameters(inspect.signature(impl)) == _parameters(sig), f"{protocol.__name__}.{name}"
    for name in getattr(protocol, "__annotations__", {}):
        assert hasattr(store, name), f"SqliteStore lacks {protocol.__name__}.{name}"


def _flat(event_id: str, subject: str, ts: int) -> list[object]:
    return [event_id, subject, subject, "", "", "page_view", ts, ts, "web", "desktop", "", "", "",
            encode_properties({})]


def test_append_with_profiles_is_one_unit(store: SqliteStore) -> None:
    """Events and their profiles are written together: a failure while computing the profiles stores neither,
    and a duplicate id is reported to the profile computation."""
    writer = Writer(store)
    writer.start()
    try:
        def failing(store: interfaces.Store) -> None:
            def boom(_done: object) -> ProfileWrites:
                raise RuntimeError("profile fold failed")
            store.append_with_profiles(_flat("e1", "u1", 1000), 1000, boom)
        with pytest.raises(RuntimeError, match="profile fold failed"):
            writer.run_sync(failing)
        assert store.count("events") == 0 and store.profile_body("p1") is None

        seen = []

        def ok(store: interfaces.Store) -> None:
            def profiles(done: object) -> ProfileWrites:
                seen.append(done)
                return ProfileWrites(4, [("p1", 1000, '{"v":1}')])
            store.append_with_profiles(_flat("e1", "u1", 1000) + _flat("e1", "u1", 1000), 1000, profiles)
        writer.run_sync(ok)
    finally:
        writer.stop()
    assert seen[0].duplicates == frozenset({1})
    assert store.count("events") == 1 and store.profile_body("p1") == '{"v":1}'
    assert [(c.pseudo, c.body) for c in store.profile_changes_after(0)] == [("p1", '{"v":1}')]


def test_log_decisions_checks_the_version_and_forget_untracked_drops_the_history(store: SqliteStore) -> None:
    def row(decision_id: str, ts: int) -> tuple[object, ...]:
        values = dict.fromkeys(DECISION_COLUMNS, "")
        values.update(decision_id=decision_id, user_pseudo="p1", timestamp_ms=ts, step_id="s", propensity=1.0,
                      context="{}", eligible='["s"]', probabilities='{"s":1.0}', reward_deadline_ms=0)
        return tuple(values[c] for c in DECISION_COLUMNS)
    store.begin()
    assert store.log_decisions([LoggedDecision(row("d1", 10), "p1", 0, {"s": [10]}, tracked=False),
                                LoggedDecision(row("d2", 11), "p1", 0, {"s": [11]}, tracked=False)]) == [True, False]
    store.commit()
    assert store.read_shows("p1").version == 1 and store.get_decision("d2") is None
    store.begin()
    assert store.forget_untracked(before_ms=100) == 1
    store.commit()
    assert store.read_shows("p1").version == 0 and store.get_decision("d1")["user_pseudo"] == ""


def test_decision_inputs_are_the_three_reads_of_one_person(store: SqliteStore) -> None:
    """One read gives what read_shows, profile_body and consents_of give, and nothing of another person."""
    assert store.decision_inputs("p1", "u1") == DecisionInputs(store.read_shows("p1"), None, ())
    values = dict.fromkeys(DECISION_COLUMNS, "")
    values.update(decision_id="d1", user_pseudo="p1", timestamp_ms=10, step_id="s", propensity=1.0, reward_deadline_ms=0)
    store.begin()
    store.log_decisions([LoggedDecision(tuple(values[c] for c in DECISION_COLUMNS), "p1", 0, {"s": [10], "t": [3, 7]})])
    store.log_decisions([LoggedDecision(tuple({**values, "decision_id": "d2", "user_pseudo": "p2"}[c]
                                              for c in DECISION_COLUMNS), "p2", 0, {"s": [99]})])
    store.write_profiles(ProfileWrites(16, puts=[("p1", 10, '{"v":1}'), ("p2", 10, '{"v":2}')]))
    for subject, purpose, granted in (("u1", "tracking", True), ("u1", "personalization", False),
                                      ("u2", "tracking", True)):
        store.set_consent(ConsentRow(subject, purpose, granted, "test", 5), recorded_ms=6)
    store.commit()
    inputs = store.decision_inputs("p1", "u1")
    assert (inputs.shows.version, {k: list(v) for k, v in inputs.shows.shows.items()}) == (1, {"s": [10], "t": [3, 7]})
    assert inputs.profile_body == store.profile_body("p1") == '{"v":1}'
    assert list(inputs.consents) == store.consents_of(["u1"]) == [ConsentRow("u1", "personalization", False, "test", 5),
                                                                    ConsentRow("u1", "tracking", True, "test", 5)]


def test_erase_person_queues_the_unlearning_and_tombstones(store: SqliteStore) -> None:
    store.begin()
    store.append_events([StoredEvent("e1", "u1", "page_view", 5, 5, "u1")])
    store.insert_decisions([{"decision_id": "d1", "user_pseudo": "p1", "timestamp_ms": 5, "step_id": "s",
                             "context": {"x": 1.0}, "eligible": ["s"], "probabilities": {"s": 1.0},
                             "reward_deadline_ms": 10, "propensity": 1.0, "reason": "core"}])
    assert store.insert_outcome({"decision_id": "d1", "user_pseudo": "p1", "reward": 1.0, "source": "event",
                                 "outcome": "", "timestamp_ms": 6})
    erased = store.erase_person(SubjectKeys(("u1",), ("u1",), (), (), ("p1",)), erased_ms=7)
    store.commit()
    assert erased.counts["events"] == 1 and erased.counts["decisions"] == 1
    assert erased.rewarded == (JoinedRow("d1", "s", {"x": 1.0}, 1.0, "core", {}, 5),)
    [(queued, outcome_ids)] = store.unlearning_after(0)
    assert queued.id == erased.unlearning_id and queued.pseudonyms == ("p1",) and outcome_ids == {"d1": 1}
    assert store.is_tombstoned("p1") and store.events_about(SubjectKeys(("u1",), (), (), (), ())) == []


def test_save_learner_state_prunes_what_it_includes(store: SqliteStore) -> None:
    store.begin()
    store.write_profiles(ProfileWrites(4, [("p1", 1, "a"), ("p2", 2, "b")]))
    version = store.publish_snapshot(3, {"changes": 0}, b"m")
    store.commit()
    assert store.feed_end("changes") == 2 and store.latest_snapshot_version() == version
    store.begin()
    store.save_learner_state(Snapshot(0, 4, {"changes": 1, "unlearn": 0}, b"s"), drop_snapshots=True)
    store.commit()
    assert [c.pseudo for c in store.profile_changes_after(0)] == ["p2"]
    assert store.latest_snapshot() is None
    saved = store.load_learner_state()
    assert saved is not None and (saved.positions, saved.body) == ({"changes": 1, "unlearn": 0}, b"s")
