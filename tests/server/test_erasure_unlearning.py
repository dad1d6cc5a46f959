"""Erasure reaches the models (GDPR art. 17): after EraseUser the bandit holds exactly what it would hold had it
never seen the person, and the River models are those a server that never saw them relearns from its
profiles (docs/decisions.md, "Erasure")."""
from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import numpy as np

from server.decide.engine import DecisionEngine
from server.learn.segments import Segmenter
from tests.server.engine_support import DAY_MS, HOUR_MS, Harness, catalog_with

OTHERS = ("ann", "cat", "dan")
ERASED = "bob"
PROBES = 12


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


def _run(db: Path, body: Any) -> Any:
    h = Harness(db, catalog_with(experiments=None))
    box: dict[str, Any] = {}

    async def main() -> None:
        engine = h.open(asyncio.get_running_loop())
        try:
            box["out"] = await body(h, engine)
        finally:
            await h.close()
    asyncio.run(main())
    return box["out"]


def test_erased_person_leaves_no_trace_in_the_models(tmp_path: Path) -> None:
    """The bandit forgets with time (``[bandit] half_life_days``): the reference is a server that never saw the
    person and whose clock reached the same time (the clock is time, not data: an erasure does not rewind it)."""
    clock: dict[str, float] = {}

    async def never_saw(h: Harness, engine: DecisionEngine) -> dict[str, Any]:
        await _phase(h, OTHERS, 0, seed=1)
        assert engine.decider is not None
        engine.decider.policy.advance(clock["erased"])
        return _bandit(engine)

    async def saw_then_erased(h: Harness, engine: DecisionEngine) -> dict[str, Any]:
        await _phase(h, OTHERS, 0, seed=1)
        await _phase(h, (ERASED,), 5, seed=2)
        before = _bandit(engine)
        relearned_with = Segmenter(h.catalog)  # what relearning would give if the person were kept
        for p in h.pipeline.profiles.in_subject_order():
            relearned_with.learn_one(p, p.last_seen_ms)
        counts = await h.pipeline.erase(ERASED)
        assert counts["decisions"] == len(h.catalog.core_order) + 3  # core steps, then three bandit decisions
        clock["erased"] = engine.decider.policy.clock
        return {"before": before, "after": _bandit(engine), "river": _river(engine.segmenter),
                "river_with": _river(relearned_with), "learned": engine.learned}

    erased = _run(tmp_path / "erased.db", saw_then_erased)
    reference = _run(tmp_path / "never.db", never_saw)
    assert erased["before"]["n"] == reference["n"] + 2
    assert not np.allclose(erased["before"]["scores"], reference["scores"], rtol=0, atol=1e-6)

    after = erased["after"]
    assert after["n"] == reference["n"] == erased["learned"]
    np.testing.assert_allclose(after["scores"], reference["scores"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(after["probabilities"], reference["probabilities"], rtol=0, atol=1e-9)
    assert after["arms"] == reference["arms"]

    # River: the models after the erasure are those the never-saw server relearns from its profiles at a
    # restart (its log holds the same remaining events), and differ from a relearn that kept the person.
    async def restarted(h: Harness, engine: DecisionEngine) -> dict[str, float]:
        return _river(engine.segmenter)
    reference_river = _run(tmp_path / "never.db", restarted)
    assert _close(erased["river"], reference_river)
    assert not _close(erased["river_with"], reference_river)


def test_outcome_committed_but_not_yet_learned_is_not_unlearned(tmp_path: Path) -> None:
    """An erasure that commits right after an outcome whose learning has not run yet: the outcome is never
    learned (or learned and then unlearned, depending on which runs first), so the bandit ends where it started
    (at the same time: its clock is time, not data, and an erasure does not rewind it)."""
    async def body(h: Harness, engine: DecisionEngine) -> tuple[int, int, dict[str, Any]]:
        await _phase(h, OTHERS[:1], 0, seed=1)
        assert engine.decider is not None
        start = copy.deepcopy(engine.decider.policy)
        t = await h.consistent_user(ERASED, day=4)
        r = await h.ask(ERASED, t + DAY_MS)
        # ReportOutcome and EraseUser sent together: the outcome's writer job commits first
        report = asyncio.ensure_future(h.report(r.decision_id, 1.0, t + DAY_MS + 1))
        await asyncio.sleep(0)
        await h.pipeline.erase(ERASED)
        await report
        now = engine.decider.policy
        if now.clock is not None:
            start.advance(now.clock)
        scores = {"now": [now.scores(x) for x in _probes(engine)], "start": [start.scores(x) for x in _probes(engine)]}
        return now.n_updates, start.n_updates, scores

    n_now, n_start, out = _run(tmp_path / "race.db", body)
    assert n_now == n_start
    np.testing.assert_allclose(out["now"], out["start"], rtol=0, atol=1e-9)


def test_erasures_sent_together_share_relearns(tmp_path: Path) -> None:
    """Erasures that commit while a relearn runs wait for one relearn that covers them all (here the running
    relearn is stood in for by holding its lock until all three erasures committed)."""
    async def body(h: Harness, engine: DecisionEngine) -> tuple[int, set[str]]:
        await _phase(h, OTHERS, 0, seed=1)
        async with engine._relearn_lock:  # noqa: SLF001 - a relearn in progress
            erasures = asyncio.gather(*(h.pipeline.erase(u) for u in OTHERS))
            while engine._erasures_seen < len(OTHERS):  # noqa: SLF001 - every erasure committed and waiting
                await asyncio.sleep(0.01)
            # a checkpoint now must not keep the models that still hold them
            assert engine.relearn_due and engine.to_state()["segmenter"] is None
        await erasures
        assert not engine.relearn_due and engine.to_state()["segmenter"] is not None
        return engine.relearns, set(h.pipeline.profiles.subjects())

    relearns, left = _run(tmp_path / "together.db", body)
    assert left == set() and relearns == 1
