"""Time ``onramp replay`` on a synthetic log of 1,000,000 decisions: loading (one SQL query, pyarrow JSON
decode), the three built-in policies with all five estimators (1000 bootstrap replicates each), and
optionally a replay-trained candidate bandit. Run:
``.venv/bin/python bench/replay_speed.py [--decisions N] [--db PATH] [--candidate]``
(the database is generated once and reused when --db points to an existing file)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from server.base.catalog import load_catalog
from server.offline.common import generic_order
from server.offline.logdata import load_decisions
from server.offline.replay import Candidate, ReplayOptions, run_replay
from server.offline.synth import generate_decision_log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--db", default=None, help="reuse/generate this database file")
    ap.add_argument("--candidate", action="store_true", help="also train and evaluate a candidate bandit (lints)")
    args = ap.parse_args()
    cat = load_catalog(None)
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "replay_bench.db"
    if not db.exists():
        t = time.perf_counter()
        generate_decision_log(db, args.decisions, seed=0)
        print(f"generated {args.decisions:,} decisions in {time.perf_counter() - t:.1f} s -> {db}")
    t0 = time.perf_counter()
    log = load_decisions(db, catalog_actions=generic_order(cat))
    t1 = time.perf_counter()
    print(f"load: {log.n:,} decisions, {log.n_actions} actions, {len(log.feature_names)} features in {t1 - t0:.1f} s")
    candidates = []
    if args.candidate:
        import dataclasses

        cand_cat = dataclasses.replace(cat, bandit=dataclasses.replace(cat.bandit, algorithm="lints", alpha=0.3))
        candidates.append(Candidate("bandit:lints", cand_cat))
    report = run_replay(log, cat, candidates, ReplayOptions())
    t2 = time.perf_counter()
    n_est = sum(len(p.estimates) for p in report.policies)
    print(f"replay: {report.counts.used:,} rounds evaluated ({report.counts.randomised:,} randomised), "
          f"{len(report.policies)} policies x 5 estimators = {n_est} estimates with 1000-replicate bootstrap "
          f"intervals in {t2 - t1:.1f} s")
    print(f"total (load + replay): {t2 - t0:.1f} s")
    for p in report.policies:
        print(f"  {p.name:14s} " + "  ".join(f"{e.estimator}={e.value:.4f}" for e in p.estimates) + f"  ESS={p.ess:,.0f}")


if __name__ == "__main__":
    main()
