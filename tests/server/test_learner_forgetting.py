"""The learner's bandit forgets by the time of each decision (``[bandit] half_life_days``): a committed outcome
is learned at its decision's timestamp, not at the time the learner reads it, so the published models do not
depend on when (or in how many rounds) the learner ran."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np

from server.learn.snapshot import build_decider
from server.store.decision_log import joined_rows
from tests.server.engine_support import DAY_MS, HOUR_MS, Harness, catalog_with

USERS = ("ann", "bob", "cat", "dan")


def test_snapshot_bandit_learned_each_outcome_at_its_decision_time(tmp_path: Path) -> None:
    catalog = catalog_with(experiments=None)
    # a half-life on top of the default change detection (the default forgets only on a detected change)
    catalog = dataclasses.replace(catalog, bandit=dataclasses.replace(catalog.bandit, half_life_days=4.0))
    assert catalog.bandit.change_z > 0
    h = Harness(tmp_path / "f.db", catalog)

    async def main() -> tuple[list[list[float]], list[list[float]], float | None, float]:
        engine = h.open(asyncio.get_running_loop())
        try:
            rng = np.random.default_rng(3)
            asked: list[int] = []
            for i, uid in enumerate(USERS):
                t = await h.consistent_user(uid, day=3 * i)  # decisions days apart: their weights differ
                for k in range(3):
                    ts = t + k * DAY_MS + k * HOUR_MS
                    r = await h.ask(uid, ts)
                    assert r.reason == "bandit", r.reason
                    await h.report(r.decision_id, float(rng.random() < 0.5), ts + 1)
                    asked.append(ts)
            # one round, weeks after the decisions: the time it reads them must not count
            await h.learn(max(asked) + 30 * DAY_MS)
            decider = build_decider(catalog, h.learner.space.dim)
            assert engine.decider is not None and decider is not None
            arm = {s: i for i, s in enumerate(h.learner.arms)}
            for j in joined_rows(h.store, h.learner.arms):
                decider.learn_one(h.learner.space.vector(j.context), arm[j.step_id], j.reward, j.timestamp_ms)
            probes = [np.random.default_rng(11 + i).normal(size=h.learner.space.dim) for i in range(8)]
            now = engine.decider.policy
            assert now.n_updates == decider.policy.n_updates == 3 * len(USERS)
            return ([now.scores(x).tolist() for x in probes], [decider.policy.scores(x).tolist() for x in probes],
                    now.clock, float(max(asked)))
        finally:
            await h.close()

    got, want, clock, last_decision = asyncio.run(main())
    assert clock == last_decision
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
