"""``python -m bench.model_ceilings``: how close each model class can get to the context oracle on the simulator,
with no exploration problem at all. Each model is fitted offline on ``n`` uniformly random (context, step, reward)
draws of :class:`~bandits.simulator.OnboardingSimulator`; its greedy policy (the step of highest prediction) is
scored on fresh contexts by the true expected reward ``P(type | x) @ p[type, step]``, as a ratio to the context
oracle's (the best step of that expected reward). No reward noise enters the score: only the fit's.

Model classes: a ridge regression per step on ``x`` (what LinUCB learns), on ``x`` and every pairwise product
(quadratic), a logistic regression per step on ``x``, and a ridge regression per step on the soft cluster
memberships of :mod:`bandits.latent` (its map fitted on the first 1,000 contexts, as ``ClusterLinUCB`` does),
with or without ``x`` beside them, for several cluster counts (the simulator has 5 types)."""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from bandits.latent import fit_cluster_map
from bandits.simulator import OnboardingSimulator

Fit = Callable[[np.ndarray, np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]]
WARMUP = 1000  # contexts the cluster map is fitted on (ClusterLinUCB's default warmup)
EVAL = 50_000  # fresh contexts the greedy policy is scored on


def _ridge(f: np.ndarray, a: np.ndarray, y: np.ndarray, k: int, lam: float = 1.0) -> np.ndarray:
    """Per-step ridge weights (k, d) of ``y`` on features ``f``."""
    eye = lam * np.eye(f.shape[1])
    return np.stack([np.linalg.solve(f[a == s].T @ f[a == s] + eye, f[a == s].T @ y[a == s]) for s in range(k)])


def _quadratic(x: np.ndarray) -> np.ndarray:
    z = x[:, :-1]
    i, j = np.triu_indices(z.shape[1])
    return np.hstack([x, z[:, i] * z[:, j]])


def _logistic(x: np.ndarray, a: np.ndarray, y: np.ndarray, k: int, lam: float = 1.0) -> np.ndarray:
    """Per-step L2-penalised logistic regression weights (k, d), by Newton's method."""
    out = np.zeros((k, x.shape[1]))
    for s in range(k):
        xs, ys, w = x[a == s], y[a == s], np.zeros(x.shape[1])
        for _ in range(30):
            p = 1.0 / (1.0 + np.exp(-xs @ w))
            step = np.linalg.solve((xs * (p * (1 - p))[:, None]).T @ xs + lam * np.eye(w.size),
                                   xs.T @ (p - ys) + lam * w)
            w -= step
            if np.abs(step).max() < 1e-9:
                break
        out[s] = w
    return out


def linear(x, a, y, k):
    w = _ridge(x, a, y, k)
    return lambda xx: xx @ w.T


def quadratic(x, a, y, k):
    w = _ridge(_quadratic(x), a, y, k)
    return lambda xx: _quadratic(xx) @ w.T


def logistic(x, a, y, k):
    w = _logistic(x, a, y, k)
    return lambda xx: xx @ w.T  # the logit: the same argmax as the probability


def clusters(m: int, with_x: bool = False) -> Fit:
    def fit(x, a, y, k):
        cmap = fit_cluster_map(x[:WARMUP], m, seed=0)

        def feats(xx: np.ndarray) -> np.ndarray:
            f = cmap.memberships(xx)
            return np.hstack([xx, f]) if with_x else f
        w = _ridge(feats(x), a, y, k)
        return lambda xx: feats(xx) @ w.T
    return fit


MODELS: dict[str, Fit] = {
    "linear": linear, "quadratic": quadratic, "logistic": logistic,
    "clusters 3": clusters(3), "clusters 5": clusters(5), "clusters 8": clusters(8),
    "clusters 3 + x": clusters(3, with_x=True), "clusters 5 + x": clusters(5, with_x=True),
}


def ceiling(fit: Fit, n_steps: int, n: int, seed: int) -> float:
    """Expected reward of ``fit``'s greedy policy over the context oracle's, trained on ``n`` uniform draws."""
    sim = OnboardingSimulator(n_steps, 16, 5, seed=seed)
    g = np.random.default_rng([seed, 99])
    x, types = sim.arrivals(n, g)
    a = g.integers(n_steps, size=n)
    y = (g.random(n) < sim.success_probs[types, a]).astype(np.float64)
    predict = fit(x, a, y, n_steps)
    xt, _ = sim.arrivals(EVAL, np.random.default_rng([seed, 7]))
    expected = sim.type_posterior(xt) @ sim.success_probs
    chosen = expected[np.arange(EVAL), np.argmax(predict(xt), axis=1)]
    return float(chosen.mean() / expected.max(axis=1).mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.model_ceilings", description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", default="20000,200000", help="comma-separated numbers of uniform draws")
    ap.add_argument("--steps", default="10", help="comma-separated numbers of steps")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names of " + ", ".join(MODELS))
    args = ap.parse_args(argv)
    print("greedy policy's expected reward / context oracle's, fitted on n uniform draws; mean [per seed]")
    for k in (int(v) for v in args.steps.split(",")):
        for n in (int(v) for v in args.draws.split(",")):
            for name in args.models.split(","):
                t0 = time.process_time()
                r = [ceiling(MODELS[name], k, n, seed) for seed in range(args.seeds)]
                print(f"  K={k:2d} n={n:7,d} {name:15s} {statistics.mean(r):.3f} ["
                      + " ".join(f"{v:.3f}" for v in r) + f"]  ({time.process_time() - t0:.0f} CPU s)", flush=True)


if __name__ == "__main__":
    main()
