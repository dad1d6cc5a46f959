"""Learning quality on the seeded :class:`~bandits.simulator.OnboardingSimulator`: uniform, best fixed step,
generic fixed order, our bandit (exactly what the server builds from the shipped catalog's ``[bandit]``, see
:func:`server_default_decider`), the context oracle (Bayes posterior) and the type oracle; average reward over
all rounds and the last 20 %, regret vs the oracle. Also in-process decide+update cycles/s of that same bandit
(:func:`bench.bandit_speed.cycles_per_second`)."""
from __future__ import annotations

import time

from bandits.exploration import Decider, build_exploration
from bandits.policies import build_policy
from bandits.simulator import OnboardingSimulator, run_policy
from bench.bandit_speed import cycles_per_second
from bench.common import summarize
from server.base.catalog import Catalog, load_catalog

NAMES = {"uniform": "uniform", "best_fixed": "best fixed", "fixed_order": "generic order", "bandit": "our bandit",
         "bayes": "context oracle", "oracle": "type oracle"}


def server_default_decider(n_arms: int, n_features: int, catalog: Catalog | None = None) -> Decider:
    """The bandit the decision engine builds for ``catalog`` (default: the shipped demo catalog, i.e. the
    server's default): its ``[bandit]`` settings and ``guardrails.max_exploration``, with the same calls."""
    cat = catalog if catalog is not None else load_catalog(None)
    b = cat.bandit
    policy = build_policy(b.algorithm, n_arms, n_features, alpha=b.alpha, l2=b.l2, seed=b.seed)
    exploration = build_exploration(b.exploration, epsilon=b.epsilon, gamma=b.gamma,
                                    max_exploration=cat.guardrails.max_exploration)
    return Decider(policy, exploration, seed=b.seed)


def run(quick: bool = False, repeats: int = 3, rounds: int | None = None, cycles: int | None = None) -> dict:
    """Simulate ``repeats`` seeds of ``rounds`` users each and time decide+update cycles."""
    rounds = rounds if rounds is not None else (2000 if quick else 20000)
    cycles = cycles if cycles is not None else (2000 if quick else 30000)
    per: dict[str, dict[str, list[float]]] = {}
    catalog = load_catalog(None)
    for seed in range(repeats):
        sim = OnboardingSimulator(n_steps=10, n_features=16, n_types=5, seed=seed)
        decider = server_default_decider(sim.n_steps, sim.n_features, catalog)
        out = run_policy(sim, decider, rounds, seed=seed)  # the decisions draw from run_policy's seeded rng
        tail = int(rounds * 0.8)
        oracle_total = out["oracle"].sum()
        for k, r in out.items():
            d = per.setdefault(k, {"avg": [], "last20": [], "regret": []})
            d["avg"].append(float(r.mean()))
            d["last20"].append(float(r[tail:].mean()))
            d["regret"].append(float(oracle_total - r.sum()))
    table = {k: {m: summarize(v) for m, v in d.items()} for k, d in per.items()}
    b, c = per["bandit"]["last20"], per["bayes"]["last20"]
    vs_context = summarize([x / y for x, y in zip(b, c)])
    beats_fixed = all(x > y for x, y in zip(b, per["best_fixed"]["last20"]))
    speed, cpu = [], []
    for _ in range(repeats):
        speed.append(cycles_per_second(server_default_decider(10, 23, catalog), cycles, 10, 23))
        cpu.append(cycles_per_second(server_default_decider(10, 23, catalog), cycles, 10, 23, time.process_time))
    return {"rounds": rounds, "repeats": repeats, "bandit": server_default_decider(10, 16, catalog).version, "table": table, "bandit_vs_context_oracle_last20": vs_context,
            "bandit_beats_best_fixed_every_seed": beats_fixed, "cycles": cycles,
            "decide_update_per_s": summarize(speed), "decide_update_per_cpu_s": summarize(cpu)}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"learning: simulator K=10 steps, d=16, 5 hidden types, {res['rounds']:,} rounds, "
           f"medians [min..max] over {res['repeats']} seeds",
           f"  our bandit = the server default: {res['bandit']}"]
    for k, name in NAMES.items():
        row = res["table"][k]
        out.append(f"  {name:15s} avg reward {row['avg'].fmt('.4f')}  last 20% {row['last20'].fmt('.4f')}  "
                   f"regret vs oracle {row['regret'].fmt(',.0f')}")
    out.append(f"  bandit / context oracle (last 20%): {res['bandit_vs_context_oracle_last20'].fmt('.3f')}; "
               f"beats best fixed on every seed: {res['bandit_beats_best_fixed_every_seed']}")
    out.append(f"speed: the server default bandit, K=10 d=23, {res['cycles']:,} cycles: "
               f"{res['decide_update_per_s'].fmt(',.0f', ' decide+update/s')} wall clock; "
               f"{res['decide_update_per_cpu_s'].fmt(',.0f', ' per CPU second')} (less disturbed by other load)")
    return out
