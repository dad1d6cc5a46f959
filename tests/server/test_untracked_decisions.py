"""What GetNextStep keeps about people without tracking consent (never given, withdrawn, or erased since):
no reward is waited for, a row without a step holds no id, and a shown step keeps the pseudonym only while a
cap, cooldown or gap can count it (docs/decisions.md, "People without tracking consent")."""
from __future__ import annotations

from pathlib import Path

from server.decide.engine import DecisionEngine
from server.store.user_state import read_shows
from tests.server.engine_support import DAY_MS, MIN_MS, T0, Harness, decision_rows, run


def test_untracked_shows_keep_an_id_only_for_the_caps(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("tracked")
        shown = await h.ask("nobody", T0)  # never consented
        assert (shown.step.id, shown.reason) == ("welcome", "no_consent")
        again = await h.ask("nobody", T0 + MIN_MS)  # the welcome's cooldown / min gap still holds
        assert not again.has_step and again.reason == "capped"
        tracked = await h.ask("tracked", T0)
        assert tracked.has_step
        await h.learn(T0 + MIN_MS)
        assert shown.decision_id not in h.learner.joiner and tracked.decision_id in h.learner.joiner

        rows = {r["decision_id"]: r for r in decision_rows(h.db_path)}
        nobody = h.pipeline.pseudonym("nobody")
        assert rows[shown.decision_id]["user_pseudo"] == nobody  # counted by the caps, even after a restart
        assert rows[shown.decision_id]["reward_deadline_ms"] == 0  # no reward waited for
        assert rows[again.decision_id]["user_pseudo"] == ""  # nothing shown: no id at all
        assert rows[tracked.decision_id]["reward_deadline_ms"] > 0

        # the shown history the caps read is kept as long as the pseudonym in the row
        assert {k: list(v) for k, v in read_shows(h.store, nobody).shows.items()} == {"welcome": [T0]}
        forget = h.learner.forget_untracked_shows
        assert await forget(T0 + engine.guard_horizon_ms) == 0  # still within the horizon
        assert {k: list(v) for k, v in read_shows(h.store, nobody).shows.items()} == {"welcome": [T0]}
        assert await forget(T0 + engine.guard_horizon_ms + 1) == 1
        rows = {r["decision_id"]: r for r in decision_rows(h.db_path)}
        assert rows[shown.decision_id]["user_pseudo"] == "" and rows[shown.decision_id]["step_id"] == "welcome"
        assert rows[tracked.decision_id]["user_pseudo"] == h.pipeline.pseudonym("tracked")
        assert read_shows(h.store, nobody).version == 0  # gone too
        assert {k: list(v) for k, v in read_shows(h.store, h.pipeline.pseudonym("tracked")).shows.items()} == {tracked.step.id: [T0]}
        assert engine.guard_horizon_ms == h.learner.horizon_ms >= DAY_MS
    run(tmp_path, scenario)


def test_an_erased_user_asking_again_is_untracked(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("eve")
        await h.event("eve", "session_start", T0)
        await h.erase("eve", T0 + MIN_MS)
        r = await h.ask("eve", T0 + DAY_MS)
        assert (r.step.id, r.reason) == ("welcome", "no_consent")
        await h.learn(T0 + DAY_MS)
        assert r.decision_id not in h.learner.joiner
        row = next(x for x in decision_rows(h.db_path) if x["decision_id"] == r.decision_id)
        assert row["reward_deadline_ms"] == 0 and row["context"] == {}
        # the sweep gives untracked shows no default reward
        await h.learn(T0 + 30 * DAY_MS)
        assert r.decision_id not in {x["decision_id"] for x in (await h.pipeline.export("eve")).outcomes}
    run(tmp_path, scenario)
