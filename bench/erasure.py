"""What erasing one person from the models costs (docs/decisions.md, "Erasure"): the River models are relearned
from every remaining profile (time per profile, and so for 100,000 users), and the bandit unlearns each rewarded
decision of the person exactly (time per decision, with the server's feature space and demo catalog arms).

``python -m bench erasure [--quick] [--repeats N]``; in process, no server: synthetic profiles of 10 events
each over ten days, the demo catalog.
"""
from __future__ import annotations

import random
import time

import numpy as np

from bandits.policies import build_policy
from bench.common import Summary, summarize
from server.base.catalog import load_catalog
from server.base.clock import DAY_MS
from server.base.records import StoredEvent
from server.ingest.profiles import ProfileBook
from server.learn.segments import Segmenter

T0 = 1_700_000_000_000
NAMES = ("session_start", "feature_used", "screen_skipped", "step_completed")
FEATURES = ("reports", "boards", "exports", "search")


def profiles(n_users: int, seed: int = 1) -> ProfileBook:
    """``n_users`` profiles of 10 random events each within ten days."""
    rng = random.Random(seed)
    book = ProfileBook()
    i = 0
    for u in range(n_users):
        for _ in range(10):
            name = rng.choice(NAMES)
            ts = T0 + rng.randrange(10 * DAY_MS)
            book.apply(StoredEvent(f"e{i}", f"user-{u}", name, ts, ts, f"user-{u}", "", "", "web", "desktop",
                                   rng.choice(FEATURES) if name == "feature_used" else "",
                                   "welcome" if name == "step_completed" else "", "", {}))
            i += 1
    return book


def relearn_seconds(book: ProfileBook) -> float:
    """Time of one relearn as the engine does it after an erasure (every profile once, in subject order)."""
    seg = Segmenter(load_catalog(None))
    t = time.perf_counter()
    for p in book.in_subject_order():
        seg.learn_one(p, p.last_seen_ms)
    return time.perf_counter() - t


def unlearn_seconds(n: int, seed: int = 2) -> float:
    """Time per ``unlearn_one`` of the demo catalog's bandit after ``n`` updates."""
    catalog = load_catalog(None)
    dim = Segmenter(catalog).space.dim
    k = len(catalog.personalized_steps)
    policy = build_policy(catalog.bandit.algorithm, k, dim, alpha=catalog.bandit.alpha, l2=catalog.bandit.l2)
    rng = np.random.default_rng(seed)
    rows = [(rng.normal(size=dim), int(rng.integers(k)), float(rng.random() < 0.3)) for _ in range(n)]
    for x, arm, r in rows:
        policy.learn_one(x, arm, r)
    t = time.perf_counter()
    for x, arm, r in rows:
        policy.unlearn_one(x, arm, r)
    return (time.perf_counter() - t) / n


def run(quick: bool, repeats: int) -> dict[str, object]:
    n_users = 2_000 if quick else 20_000
    book = profiles(n_users)
    relearn = [relearn_seconds(book) / n_users * 1e6 for _ in range(repeats)]
    unlearn = [unlearn_seconds(200 if quick else 2_000) * 1e6 for _ in range(repeats)]
    return {"users": n_users, "relearn_us_per_profile": summarize(relearn),
            "unlearn_us_per_decision": summarize(unlearn)}


def report(res: dict[str, object]) -> list[str]:
    relearn, unlearn = res["relearn_us_per_profile"], res["unlearn_us_per_decision"]
    assert isinstance(relearn, Summary) and isinstance(unlearn, Summary)
    return ["erasure (models):",
            f"  River relearn over {res['users']:,} profiles: {relearn.fmt('.1f', ' us/profile')}, so "
            f"{relearn.median * 100_000 / 1e6:.1f} s at 100,000 users",
            f"  bandit unlearn: {unlearn.fmt('.1f', ' us/decision')}"]
