"""``[bandit] algorithm = "cluster_linucb"`` in the server: the learner learns its outcomes (fitting the clusters
after ``cluster_warmup`` of them), publishes the policy in its snapshot, and the decision engine scores with the
same numbers as the policy rebuilt from the decision log; an erasure unlearns the person's outcomes from it."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np

from bandits.latent import ClusterLinUCB
from bandits.policies import policy_from_state
from server.learn.snapshot import build_decider
from server.store.decision_log import joined_rows, rewarded_rows_of
from tests.server.engine_support import DAY_MS, HOUR_MS, Harness, catalog_with

USERS = ("ann", "bob", "cat", "dan")


def test_cluster_bandit_learns_publishes_and_scores_from_the_snapshot(tmp_path: Path) -> None:
    catalog = catalog_with(experiments=None)
    catalog = dataclasses.replace(catalog, bandit=dataclasses.replace(
        catalog.bandit, algorithm="cluster_linucb", clusters=2, cluster_warmup=6))
    h = Harness(tmp_path / "c.db", catalog)

    async def main() -> tuple[list[list[float]], list[list[float]], bool, int, list[list[float]], list[list[float]]]:
        engine = h.open(asyncio.get_running_loop())
        try:
            rng = np.random.default_rng(3)
            for i, uid in enumerate(USERS):
                t = await h.consistent_user(uid, day=3 * i)
                for k in range(3):
                    ts = t + k * DAY_MS + k * HOUR_MS
                    r = await h.ask(uid, ts)
                    assert r.reason == "bandit", r.reason
                    await h.report(r.decision_id, float(rng.random() < 0.5), ts + 1)
            await h.learn(t + 10 * DAY_MS)
            assert engine.decider is not None
            now = engine.decider.policy
            assert isinstance(now, ClusterLinUCB)
            replayed = build_decider(catalog, h.learner.space.dim)
            assert replayed is not None
            arm = {s: i for i, s in enumerate(h.learner.arms)}
            for j in joined_rows(h.store, h.learner.arms):
                replayed.learn_one(h.learner.space.vector(j.context), arm[j.step_id], j.reward, j.timestamp_ms)
            probes = [np.random.default_rng(11 + i).normal(size=h.learner.space.dim) for i in range(8)]
            got = [now.scores(x).tolist() for x in probes]
            want = [replayed.policy.scores(x).tolist() for x in probes]
            # erasing ann takes her three outcomes out of the published policy, as unlearning them would
            expected = policy_from_state(now.to_state())
            for j in rewarded_rows_of(h.store, [h.pipeline.pseudonym("ann")]):
                if j.step_id not in arm:  # a core step's decision: not the bandit's
                    continue
                expected.unlearn_one(h.learner.space.vector(j.context), arm[j.step_id], j.reward, j.timestamp_ms)
            await h.erase("ann", t + 11 * DAY_MS)
            await h.learn(t + 12 * DAY_MS)
            after = engine.decider.policy
            assert after.n_updates == expected.n_updates == 3 * (len(USERS) - 1)
            return (got, want, now.map is not None, now.n_updates, [after.scores(x).tolist() for x in probes],
                    [expected.scores(x).tolist() for x in probes])
        finally:
            await h.close()

    got, want, fitted, learned, erased, unlearned = asyncio.run(main())
    assert fitted and learned == 3 * len(USERS)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(erased, unlearned, rtol=0, atol=1e-9)
