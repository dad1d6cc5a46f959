"""Decide+learn cycles per second of the in-process bandit (policy scores -> exact probabilities ->
sample -> update), and the off-policy estimators on a large log. Run:
``.venv/bin/python bench/bandit_speed.py [--cycles N] [--rounds N]``."""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from bandits.estimators import diagnose, estimate_all
from bandits.exploration import Decider, EpsilonGreedy, SquareCB
from bandits.policies import LinearTS, LinUCB, RidgeGreedy
from bandits.reward_models import RidgeRewardModel


def cycles_per_second(decider: Decider, n: int, k: int, d: int,
                      clock: Callable[[], float] = time.perf_counter) -> float:
    """Time ``n`` decide+learn cycles over ``k`` eligible arms with ``d`` features; ``clock`` is wall time by
    default (the figure of the target), ``time.process_time`` gives this process's CPU time, which other
    processes on a shared machine disturb less."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((n, d))
    rewards = rng.random(n) < 0.3
    arms = list(range(k))
    decide, learn = decider.decide, decider.learn_one
    t = clock()
    for i in range(n):
        x = xs[i]
        c = decide(x, arms, rng)
        learn(x, c.arm, 1.0 if rewards[i] else 0.0)
    return n / (clock() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=1_000_000)
    ap.add_argument("--arms", type=int, default=10)
    ap.add_argument("--features", type=int, default=23)
    args = ap.parse_args()
    k, d = args.arms, args.features
    from bench.learning import server_default_decider  # here: bench.learning imports this module

    for name, make in [
        ("server default", lambda: server_default_decider(k, d)),
        ("linucb + epsilon_greedy", lambda: Decider(LinUCB(k, d), EpsilonGreedy(0.1, 0.2))),
        ("linucb + squarecb", lambda: Decider(LinUCB(k, d), SquareCB(50.0, 0.2))),
        ("lints + epsilon_greedy", lambda: Decider(LinearTS(k, d), EpsilonGreedy(0.1, 0.2))),
        ("ridge + squarecb", lambda: Decider(RidgeGreedy(k, d), SquareCB(50.0, 0.2))),
    ]:
        print(f"{name:26s} K={k} d={d}: {cycles_per_second(make(), args.cycles, k, d):9,.0f} decide+learn cycles/s")

    n = args.rounds
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 16))
    a = rng.integers(k, size=n)
    p = np.full(n, 1.0 / k)
    r = (rng.random(n) < 0.3).astype(np.float64)
    pi = rng.dirichlet(np.ones(k), size=n)
    t = time.perf_counter()
    q = RidgeRewardModel(k).fit_predict(x, a, r)
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    res = estimate_all(r, a, p, pi, q, n_bootstrap=1000, random_state=0)
    diag = diagnose(a, p, pi)
    t_est = time.perf_counter() - t
    print(f"off-policy, {n:,} rounds: reward model {t_model:.2f}s; IPS+SNIPS+replay+DM+DR with 1000 bootstrap "
          f"replicates each + diagnostics {t_est:.2f}s (ESS {diag.ess:,.0f})")
    for name, iv in res.items():
        print(f"  {name:6s} {iv.mean:.4f} [{iv.low:.4f}, {iv.high:.4f}]")


if __name__ == "__main__":
    main()
