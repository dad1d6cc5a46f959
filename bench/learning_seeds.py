"""``python -m bench.learning_seeds``: Onramp's bandit on the simulator's scenarios over many seeds, in one process,
seed by seed: the last 20 % and the whole run as ratios to the context oracle, the change-detection resets, and
the effective sample size its logs give an IPS estimate of three targets, as a fraction of the decisions: the
uniform random policy, the context oracle's policy (a deterministic candidate better than the logger) and the
logger's own greedy choice (the same bandit without its floor: its best-scored steps, ties shared). ``--set key=value`` changes the ``[bandit]``
settings (e.g. ``--set epsilon=0.01 --set exploration=squarecb --set gamma=1000``).

The ESS fraction is ``1 / mean(E[w^2 | x])`` with ``E[w^2 | x] = sum_a pi(a | x)^2 / p(a | x)``: for a deterministic
target ``1 / p(pi(x) | x)``, for the uniform policy ``sum_a 1 / p(a | x) / K^2``; 0 when some step the target
can choose had probability 0."""
from __future__ import annotations

import argparse
import ast
import statistics
from typing import Any

import numpy as np

from bandits.simulator import SCENARIOS, DeciderLearner, run_scenario, world
from bench import learning_scenarios

LAST = learning_scenarios.LAST


class _Recording(DeciderLearner):
    """The server's bandit as a learner that keeps every decision's probabilities and greedy step."""

    def __init__(self, learner: DeciderLearner) -> None:
        super().__init__(learner.decider)
        self.probs: list[list[float]] = []
        self.greedy: list[float] = []  # E[w^2 | x] of the floorless twin: sum over its tied best steps of pi^2 / p

    def choose(self, x: np.ndarray, rng: np.random.Generator) -> int:
        if self._arms is None:
            self._arms = list(range(self.decider.policy.n_arms))
        c = self.decider.decide(x, self._arms, rng)
        self.probs.append([c.probabilities[a] for a in self._arms])
        top = max(c.scores.values())
        best = [a for a in self._arms if c.scores[a] == top]
        self.greedy.append(sum(1.0 / c.probabilities[a] for a in best) / len(best) ** 2)
        return c.arm


def _ess(p: np.ndarray) -> float:
    """ESS fraction of a deterministic target whose step had probability ``p`` under the logger, per decision."""
    return float(1.0 / np.mean(1.0 / p)) if p.min() > 0 else 0.0


def measure(name: str, seed: int, rounds: int, changes: dict[str, Any]) -> dict[str, float]:
    """One seed of one scenario."""
    sc = learning_scenarios.scenario(name)
    rec = _Recording(learning_scenarios.onramp(**changes)(sc.n_steps, sc.n_features, seed))
    out = run_scenario(sc, rec, rounds, seed)
    tail = int(rounds * (1 - LAST))
    p = np.array(rec.probs)
    n, k = p.shape
    rows = np.arange(n)
    return {
        "last20": float(out["bandit"][tail:].mean() / out["bayes"][tail:].mean()),
        "all": float(out["bandit"].mean() / out["bayes"].mean()),
        "resets": float(rec.decider.policy.resets.sum()) if hasattr(rec.decider.policy, "resets") else 0.0,
        "ess_uniform": float(1.0 / np.mean((1.0 / p).sum(axis=1) / (k * k))) if p.min() > 0 else 0.0,
        "ess_oracle": _ess(p[rows, world(sc, rounds, seed).oracle_arm]),
        "ess_greedy": float(1.0 / np.mean(rec.greedy)),
    }


def run(scenarios: list[str], seeds: int, rounds: int, changes: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """``{scenario: [one dict of :func:`measure` per seed]}``, seeds ``0..seeds-1``."""
    return {name: [measure(name, seed, rounds, changes) for seed in range(seeds)] for name in scenarios}


def report(res: dict[str, list[dict[str, float]]], changes: dict[str, Any]) -> list[str]:
    """One line per scenario (means over seeds, the last 20 % also min..max and per seed), then the means over
    the scenarios."""
    out = [f"bandit = server default{' with ' + str(changes) if changes else ''}; ratios to the context oracle; "
           "ESS as a fraction of the decisions"]
    means: dict[str, list[float]] = {}
    for name, runs in res.items():
        m = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        for k, v in m.items():
            means.setdefault(k, []).append(v)
        last = [r["last20"] for r in runs]
        out.append(f"  {name:9s} last 20% {m['last20']:.3f} [{min(last):.3f}..{max(last):.3f}]  all {m['all']:.3f}  "
                   f"resets {sum(r['resets'] for r in runs):.0f}  ESS uniform {m['ess_uniform']:.4f} "
                   f"oracle {m['ess_oracle']:.4f} own greedy {m['ess_greedy']:.3f}  | "
                   + " ".join(f"{v:.3f}" for v in last))
    m = {k: statistics.mean(v) for k, v in means.items()}
    out.append(f"  mean over scenarios: last 20% {m['last20']:.3f}  all {m['all']:.3f}  ESS uniform "
               f"{m['ess_uniform']:.4f} oracle {m['ess_oracle']:.4f} own greedy {m['ess_greedy']:.3f}")
    return out


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.learning_seeds", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                    help="comma-separated names of bandits.simulator.SCENARIOS")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a [bandit] setting (or max_exploration) changed from the server default")
    args = ap.parse_args(argv)
    changes = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    for line in report(run(args.scenarios.split(","), args.seeds, args.rounds, changes), changes):
        print(line, flush=True)


if __name__ == "__main__":
    main()
