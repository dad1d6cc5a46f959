"""The engine's per-person caches (server/decide/engine.py): a decoded profile is handed out again only against
the body it was decoded from, so a write through another worker (its own store, writer and engine on the same
database file) is in the next decision; an erasure drops it; and the bandit's distribution kept per eligible set
gives the exact probabilities a fresh computation gives, for the eligible set and snapshot of each decision."""
from __future__ import annotations

import asyncio
from pathlib import Path

from server.decide.engine import DecisionEngine
from tests.memory_traces import traces
from server.base.catalog import parse_catalog
from tests.server.engine_support import MIN_MS, T0, Harness, decision_rows, demo_raw


def on_two_workers(db: Path, scenario) -> None:  # noqa: ANN001 - an async callable of two harnesses
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = Harness(db), Harness(db)
        for h in (a, b):
            h.open(loop)
        try:
            await scenario(a, b)
        finally:
            for h in (a, b):
                await h.close()
    asyncio.run(main())


def test_a_profile_changed_through_another_worker_is_in_the_next_decision(tmp_path: Path) -> None:
    async def scenario(a: Harness, b: Harness) -> None:
        await a.consent("ann")
        await a.event("ann", "session_start", T0, channel="web", device_type="desktop")
        first = a.catalog.core_order[0]
        assert (await a.ask("ann", T0 + MIN_MS)).step.id == first
        held = a.engine._profiles["ann"]  # noqa: SLF001 - the cache under test
        assert first not in held.profile.steps_completed

        await b.event("ann", "step_completed", T0 + 2 * MIN_MS, step_id=first)  # through the other worker
        answer = await a.ask("ann", T0 + 40 * MIN_MS)
        assert answer.step.id == a.catalog.core_order[1], answer
        assert a.engine._profiles["ann"] is not held  # noqa: SLF001 - decoded again from the new body
        assert first in a.engine._profiles["ann"].profile.steps_completed  # noqa: SLF001
        again = a.engine._profiles["ann"]  # noqa: SLF001
        a.engine.choose("ann", "", {}, T0 + 41 * MIN_MS)
        assert a.engine._profiles["ann"] is again  # noqa: SLF001 - unchanged body: the same profile
    on_two_workers(tmp_path / "shared.db", scenario)


def test_an_erasure_through_this_worker_drops_the_kept_profile(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path / "onramp.db")
        engine = h.open(asyncio.get_running_loop())
        try:
            await h.consent("zed")
            await h.event("zed", "session_start", T0, channel="web", device_type="desktop")
            await h.ask("zed", T0 + MIN_MS)
            assert "zed" in engine._profiles  # noqa: SLF001
            await h.erase("zed", T0 + 2 * MIN_MS)
            assert "zed" not in engine._profiles  # noqa: SLF001
            assert traces([engine._profiles], ["zed"]) == []  # noqa: SLF001
        finally:
            await h.close()
    asyncio.run(main())


def test_the_kept_bandit_distribution_is_the_fresh_one_for_each_eligible_set(tmp_path: Path) -> None:
    """Asked again and again within one minute (one cached context; no experiment: tailored), a consistent
    user's bandit decisions log exactly the probabilities Decider.distribution gives for each decision's own
    eligible steps, which the asked surface narrows; a completed step leaves the eligible set."""
    raw = demo_raw()  # caps, gaps and cooldowns lifted (as the serving benchmark does), no experiment
    raw.pop("experiments", None)
    raw["guardrails"].update(min_gap_minutes=0, max_per_day_total=1000,
                             max_per_day_per_channel={ch: 1000 for ch in ("in_app", "email", "push")})
    for step in raw["steps"]:
        step.update(cooldown_hours=0, max_per_day=1000)
    catalog = parse_catalog(raw)

    async def main() -> None:
        h = Harness(tmp_path / "onramp.db", catalog)
        engine: DecisionEngine = h.open(asyncio.get_running_loop())
        try:
            t = await h.consistent_user("bob")
            t -= t % MIN_MS
            surfaces = ["", "in_app", "", "email", "in_app", ""]
            for k, surface in enumerate(surfaces):
                assert (await h.ask("bob", t + k * 1000, surface)).reason == "bandit"
            scores = [engine.decider.all_scores(engine._segment_cache["bob"].result.vector)]  # noqa: SLF001
            done = (await h.ask("bob", t + 10 * 1000)).step.id
            await h.event("bob", "step_completed", t + 2 * MIN_MS, step_id=done)
            assert (await h.ask("bob", t + 3 * MIN_MS)).reason == "bandit"
            scores.append(engine.decider.all_scores(engine._segment_cache["bob"].result.vector))  # noqa: SLF001
            rows = [r for r in decision_rows(h.db_path) if r["reason"] == "bandit"]
            assert len(rows) == len(surfaces) + 2
            channel = {s.id: s.channel for s in catalog.steps}
            for row, surface in zip(rows, surfaces):
                assert row["eligible"] and all(not surface or channel[s] == surface for s in row["eligible"])
            assert len({tuple(r["eligible"]) for r in rows}) == 4  # "", in_app, email, and after the completion
            assert done in rows[0]["eligible"] and done not in rows[-1]["eligible"]
            for k, row in enumerate(rows):
                arms, probs = engine.decider.distribution([engine.arm_index[s] for s in row["eligible"]], None,
                                                          scores[k == len(rows) - 1])
                assert row["probabilities"] == {engine.arms[a]: p for a, p in zip(arms, probs)}
                assert row["propensity"] == row["probabilities"][row["step_id"]]
        finally:
            await h.close()
    asyncio.run(main())
