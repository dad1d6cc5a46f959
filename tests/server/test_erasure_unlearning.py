"""Erasure reaches the models (GDPR art. 17): after EraseUser the bandit holds exactly what it would hold had it
never seen the person, and the River models are those a server that never saw them relearns from its
profiles (docs/decisions.md, "Erasure")."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.decide.engine import DecisionEngine
from server.ingest.profiles import decode_profile
from server.learn.learner import Learner
from server.learn.segments import Segmenter
from server.store.learning_log import drop_learner_state, last_id
from server.store.user_state import iter_profile_bodies, profile_count
from tests.server.engine_support import DAY_MS, HOUR_MS, T0, Harness, catalog_with, run_on, demo_raw

OTHERS = ("ann", "cat", "dan")
ERASED = "bob"
PROBES = 12
ERASE_MS = T0 + 30 * DAY_MS  # the learner's clock in the rounds that take erasures out


async def _phase(h: Harness, users: tuple[str, ...], first_day: int, seed: int) -> None:
    """Users become consistent, then get bandit decisions on three days; most are rewarded."""
    rng = np.random.default_rng(seed)
    for i, uid in enumerate(users):
        t = await h.consistent_user(uid, day=first_day + i)
        for k in range(3):
            ts = t + (k + 1) * DAY_MS + k * HOUR_MS
            r = await h.ask(uid, ts)
            assert r.reason == "bandit", r.reason
            if k < 2:
                await h.report(r.decision_id, float(rng.random() < 0.6), ts + 1)
            await h.event(uid, "feature_used", ts + 2, feature=f"f{k}{i}")
            await h.learn(ts + 3)


def _probes(engine: DecisionEngine) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.normal(size=engine.space.dim) for _ in range(PROBES)]


def _bandit(engine: DecisionEngine) -> dict[str, Any]:
    """What the bandit decides and scores on fixed contexts (same sampling RNG for every engine)."""
    assert engine.decider is not None
    policy = engine.decider.policy
    arms = list(range(len(engine.arms)))
    out: dict[str, Any] = {"n": policy.n_updates, "scores": [], "probabilities": [], "arms": []}
    for x in _probes(engine):
        choice = engine.decider.decide(x, arms, np.random.default_rng(7))
        out["scores"].append([choice.scores[a] for a in arms])
        out["probabilities"].append([choice.probabilities[a] for a in arms])
        out["arms"].append(choice.arm)
    return out


def _river(seg: Segmenter) -> dict[str, float]:
    """Every number the River models hold (scalers, K-Means centres, logistic regression weights)."""
    m = seg._m
    out: dict[str, float] = {}
    scaler, km = m.clusterer.steps["StandardScaler"], m.clusterer.steps["KMeans"]
    a_scaler, lr = m.activation.steps["StandardScaler"], m.activation.steps["LogisticRegression"]
    for prefix, sc in (("cluster", scaler), ("activation", a_scaler)):
        for part in ("counts", "means", "vars"):
            for k, v in getattr(sc, part).items():
                out[f"{prefix}.{part}.{k}"] = float(v)
    for c, center in km.centers.items():
        for k, v in center.items():
            out[f"centre.{c}.{k}"] = float(v)
    for k, v in lr.weights.items():
        out[f"lr.{k}"] = float(v)
    out["lr.intercept"] = float(lr.intercept)
    out["learned"] = float(m.cluster_learned + m.activation_learned)
    return out


def _close(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


@pytest.mark.parametrize("half_life_days", [None, 4.0], ids=["default", "half-life"])
def test_erased_person_leaves_no_trace_in_the_models(tmp_path: Path, half_life_days: float | None) -> None:
    """With the default bandit (change detection; with a half-life it also forgets with time) the reference is a
    server that never saw the person and whose clock reached the same time (the clock is time, not data: an erasure does not rewind it)."""
    clock: dict[str, float] = {}

    async def never_saw(h: Harness, engine: DecisionEngine) -> dict[str, Any]:
        await _phase(h, OTHERS, 0, seed=1)
        await h.learn(ERASE_MS)  # the other windows closed, as in the erasing run: their default rewards
        assert engine.decider is not None
        engine.decider.policy.advance(clock["erased"])
        return _bandit(engine)

    async def saw_then_erased(h: Harness, engine: DecisionEngine) -> dict[str, Any]:
        await _phase(h, OTHERS, 0, seed=1)
        await _phase(h, (ERASED,), 5, seed=2)
        before = _bandit(engine)
        relearned_with = Segmenter(h.catalog)  # what relearning would give if the person were kept
        for pseudo, body in iter_profile_bodies(h.store):
            p = decode_profile(pseudo, body)
            relearned_with.learn_one(p, p.last_seen_ms)
        counts = await h.erase(ERASED, ERASE_MS)
        assert counts["decisions"] == len(h.catalog.core_order) + 3  # core steps, then three bandit decisions
        clock["erased"] = engine.decider.policy.clock
        return {"before": before, "after": _bandit(engine), "river": _river(h.learner.segmenter),
                "river_with": _river(relearned_with), "learned": engine.learned}

    catalog = None if half_life_days is None else \
        catalog_with(experiments=None, bandit={**demo_raw()["bandit"], "half_life_days": half_life_days})
    erased = run_on(tmp_path / "erased.db", saw_then_erased, catalog)
    reference = run_on(tmp_path / "never.db", never_saw, catalog)
    # the person's rewarded decisions were learned (how many of everyone's windows had closed by then depends on
    # the steps the bandit chose, whose reward windows differ)
    assert erased["before"]["n"] > reference["n"]
    assert not np.allclose(erased["before"]["scores"], reference["scores"], rtol=0, atol=1e-6)

    after = erased["after"]
    assert after["n"] == reference["n"] == erased["learned"]
    np.testing.assert_allclose(after["scores"], reference["scores"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(after["probabilities"], reference["probabilities"], rtol=0, atol=1e-9)
    assert after["arms"] == reference["arms"]

    # River: the models after the erasure are those the never-saw server relearns from its profiles at a
    # restart (its log holds the same remaining events), and differ from a relearn that kept the person.
    async def restarted(h: Harness, engine: DecisionEngine) -> dict[str, float]:
        await h.writer.call(drop_learner_state)  # a learner without saved state relearns every profile
        learner = Learner(h.store, h.writer, h.catalog, h.pipeline.pseudonym)
        await learner.step(ERASE_MS)
        learner.close()
        return _river(learner.segmenter)
    reference_river = run_on(tmp_path / "never.db", restarted)
    assert _close(erased["river"], reference_river)
    assert not _close(erased["river_with"], reference_river)


@pytest.mark.parametrize("half_life_days", [0.0, 4.0])
def test_outcome_erased_before_the_learner_read_it_is_not_unlearned(tmp_path: Path, half_life_days: float) -> None:
    """An erasure that commits right after an outcome, before the learner's next round reads it: the outcome is
    never learned, so nothing is unlearned for it -- also when that round learns a later outcome (a default
    reward) before it takes the erasure out. The bandit ends as a learner that read the outcome log once, with
    and without forgetting (fails when the learner counts every outcome id below its position as learned)."""
    async def body(h: Harness, engine: DecisionEngine) -> tuple[list[Any], list[Any]]:
        await _phase(h, OTHERS[:1], 0, seed=1)  # its last decision waits for the window to close
        learned = h.learner.stats.learned
        t = await h.consistent_user(ERASED, day=4)
        r = await h.ask(ERASED, t + DAY_MS)
        # ReportOutcome and EraseUser sent together: the outcome's writer job commits first, the erasure
        # commits before the learner's next round reads the outcome
        report = asyncio.ensure_future(h.report(r.decision_id, 1.0, t + DAY_MS + 1))
        await asyncio.sleep(0)
        erasing = asyncio.ensure_future(h.pipeline.erase(ERASED))
        await report
        while last_id(h.learner.reader, "unlearn_queue") < 1:
            await asyncio.sleep(0.01)
        await h.learn(ERASE_MS)  # the window closed: the default reward gets an outcome id above the erased one
        await erasing
        assert (h.learner.stats.unlearned, h.learner.stats.learned) == (0, learned + 1)
        await h.writer.call(drop_learner_state)
        once = Learner(h.store, h.writer, h.catalog, h.pipeline.pseudonym)
        await once.step(ERASE_MS)
        once.close()
        assert engine.decider is not None and once.decider is not None
        out = []
        for policy in (engine.decider.policy, once.decider.policy):
            out.append([policy.n_updates, policy.clock, [policy.scores(x).tolist() for x in _probes(engine)]])
        return out[0], out[1]

    bandit = {**demo_raw()["bandit"], "half_life_days": half_life_days}
    now, once = run_on(tmp_path / "race.db", body, catalog_with(experiments=None, bandit=bandit))
    assert now[:2] == once[:2]
    np.testing.assert_allclose(now[2], once[2], rtol=0, atol=1e-9)


def test_erasures_sent_together_share_relearns(tmp_path: Path) -> None:
    """Erasures that commit between two learner rounds are taken out by one relearn that covers them all."""
    async def body(h: Harness, engine: DecisionEngine) -> tuple[int, int]:
        await _phase(h, OTHERS, 0, seed=1)
        relearns = h.learner.stats.relearns
        erasures = asyncio.gather(*(h.pipeline.erase(u) for u in OTHERS))
        while last_id(h.learner.reader, "unlearn_queue") < len(OTHERS):  # every erasure committed and waiting
            await asyncio.sleep(0.01)
        assert not erasures.done()  # they answer only once the engine has models without them
        await h.learn(ERASE_MS)  # one round takes all three out
        await erasures
        return h.learner.stats.relearns - relearns, profile_count(h.store)

    relearns, left = run_on(tmp_path / "together.db", body)
    assert left == 0 and relearns == 1
