"""Learning quality on the seeded :class:`~bandits.simulator.OnboardingSimulator`: uniform, best fixed step,
generic fixed order, our bandit (the server's default LinUCB + epsilon-greedy), the context oracle (Bayes
posterior) and the type oracle; average reward over all rounds and the last 20 %, regret vs the oracle.
Also in-process decide+update cycles/s (:func:`bench.bandit_speed.cycles_per_second`)."""
from __future__ import annotations

from bandits.exploration import Decider, EpsilonGreedy
from bandits.policies import LinUCB
from bandits.simulator import OnboardingSimulator, run_policy
from bench.bandit_speed import cycles_per_second
from bench.common import summarize

NAMES = {"uniform": "uniform", "best_fixed": "best fixed", "fixed_order": "generic order", "bandit": "our bandit",
         "bayes": "context oracle", "oracle": "type oracle"}


def run(quick: bool = False, repeats: int = 3, rounds: int | None = None, cycles: int | None = None) -> dict:
    """Simulate ``repeats`` seeds of ``rounds`` users each and time decide+update cycles."""
    rounds = rounds if rounds is not None else (2000 if quick else 20000)
    cycles = cycles if cycles is not None else (2000 if quick else 30000)
    per: dict[str, dict[str, list[float]]] = {}
    for seed in range(repeats):
        sim = OnboardingSimulator(n_steps=10, n_features=16, n_types=5, seed=seed)
        decider = Decider(LinUCB(sim.n_steps, sim.n_features, alpha=1.0), EpsilonGreedy(0.1, 0.2), seed=seed)
        out = run_policy(sim, decider, rounds, seed=seed)
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
    speed = [cycles_per_second(Decider(LinUCB(10, 23), EpsilonGreedy(0.1, 0.2)), cycles, 10, 23)
             for _ in range(repeats)]
    return {"rounds": rounds, "repeats": repeats, "table": table, "bandit_vs_context_oracle_last20": vs_context,
            "bandit_beats_best_fixed_every_seed": beats_fixed, "cycles": cycles,
            "decide_update_per_s": summarize(speed)}


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"learning: simulator K=10 steps, d=16, 5 hidden types, {res['rounds']:,} rounds, "
           f"medians [min..max] over {res['repeats']} seeds"]
    for k, name in NAMES.items():
        row = res["table"][k]
        out.append(f"  {name:15s} avg reward {row['avg'].fmt('.4f')}  last 20% {row['last20'].fmt('.4f')}  "
                   f"regret vs oracle {row['regret'].fmt(',.0f')}")
    out.append(f"  bandit / context oracle (last 20%): {res['bandit_vs_context_oracle_last20'].fmt('.3f')}; "
               f"beats best fixed on every seed: {res['bandit_beats_best_fixed_every_seed']}")
    out.append(f"speed: LinUCB + epsilon-greedy K=10 d=23, {res['cycles']:,} cycles: "
               f"{res['decide_update_per_s'].fmt(',.0f', ' decide+update/s')}")
    return out
