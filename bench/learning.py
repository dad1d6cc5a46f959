"""Learning quality on the seeded :class:`~bandits.simulator.OnboardingSimulator`: uniform, best fixed step,
generic fixed order, our bandit (exactly what the server builds from the shipped catalog's ``[bandit]``, see
:func:`server_default_decider`), the context oracle (Bayes posterior) and the type oracle; average reward over
all rounds and the last 20 %, regret vs the oracle. Also in-process decide+update cycles/s of that same bandit
(:func:`bench.bandit_speed.cycles_per_second`), and the same bandit on every scenario of
:mod:`bench.learning_scenarios`, with the peer libraries of :mod:`bench.peers` when asked (``--peers``)."""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from bandits.exploration import Decider
from bandits.simulator import SCENARIOS, Learner, OnboardingSimulator, run_policy
from bench import learning_scenarios, peers
from bench.bandit_speed import cycles_per_second
from bench.common import summarize
from server.base.catalog import Catalog, load_catalog

NO_FLOOR = "onramp, no floor"
WORKERS = 2  # processes running the scenario table (as the sweep: bench.learning_sweep.WORKERS)
NAMES = {"uniform": "uniform", "best_fixed": "best fixed", "fixed_order": "generic order", "bandit": "our bandit",
         "bayes": "context oracle", "oracle": "type oracle"}


def server_default_decider(n_arms: int, n_features: int, catalog: Catalog | None = None) -> Decider:
    """The bandit the decision engine builds for ``catalog`` (default: the shipped demo catalog, i.e. the
    server's default): its ``[bandit]`` settings and ``guardrails.max_exploration``, with the same calls."""
    cat = catalog if catalog is not None else load_catalog(None)
    return learning_scenarios.decider(cat.bandit, cat.guardrails.max_exploration, n_arms, n_features)


def run(quick: bool = False, repeats: int = 3, rounds: int | None = None, cycles: int | None = None,
        with_peers: bool = False) -> dict:
    """Simulate ``repeats`` seeds of ``rounds`` users each, time decide+update cycles, and run every scenario
    (with the installed peers when ``with_peers``)."""
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
    return {"rounds": rounds, "repeats": repeats, "bandit": server_default_decider(10, 16, catalog).version,
            "table": table, "bandit_vs_context_oracle_last20": vs_context,
            "bandit_beats_best_fixed_every_seed": beats_fixed, "cycles": cycles,
            "decide_update_per_s": summarize(speed), "decide_update_per_cpu_s": summarize(cpu),
            "scenarios": run_scenarios(rounds, repeats, with_peers)}


def run_scenarios(rounds: int, repeats: int, with_peers: bool) -> dict:
    """Every scenario, ``repeats`` seeds each: Onramp's default bandit and (``with_peers``) each installed peer,
    on :data:`WORKERS` processes (each run is seeded: the figures do not depend on the number of workers)."""
    names = ["onramp"]
    skipped: list[str] = []
    if with_peers:
        # the same policy without its exploration floor (deterministic like River's and MABWiser's LinUCB, and
        # like them leaving offline evaluation nothing to work with): what the floor costs
        names.append(NO_FLOOR)
        found, skipped = peers.available()
        names += [p.name for p in found]
    jobs = [(name, sc.name, rounds, seed) for sc in SCENARIOS for name in names for seed in range(repeats)]
    with ProcessPoolExecutor(WORKERS) as pool:
        runs = list(pool.map(_measure, jobs))
    out: dict[str, dict] = {}
    for (name, scenario, _, _), res in zip(jobs, runs):
        out.setdefault(scenario, {}).setdefault(name, []).append(res)
    table = {sc: {name: learning_scenarios.table(r) for name, r in by.items()} for sc, by in out.items()}
    return {"rounds": rounds, "repeats": repeats, "skipped": skipped, "table": table}


def _learner(name: str) -> Callable[[int, int, int], Learner]:
    """The factory of the learner called ``name`` in the scenario tables."""
    if name == "onramp":
        return learning_scenarios.onramp()
    if name == NO_FLOOR:
        return learning_scenarios.onramp(epsilon=0.0)
    return next(p.make for p in peers.PEERS if p.name == name)


def _measure(job: tuple[str, str, int, int]) -> dict[str, float]:
    name, scenario, rounds, seed = job
    return learning_scenarios.measure(learning_scenarios.scenario(scenario), _learner(name), rounds, seed)


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
    return out + report_scenarios(res["scenarios"])


def report_scenarios(res: dict) -> list[str]:
    """One line per scenario and learner: reward over the last 20 % and the whole run, as a ratio to the context
    oracle, with the references; then whether Onramp is at or above the best peer in each scenario."""
    out = [f"scenarios: {res['rounds']:,} arrivals (1,000 a day), medians [min..max] over {res['repeats']} seeds; "
           "ratios to the context oracle"]
    out += [f"  {line}" for line in res["skipped"]]
    verdicts = []
    for name, by in res["table"].items():
        ref = by["onramp"]
        out.append(f"  {name}: context oracle last 20% {ref['bayes_last20'].fmt('.4f')}, best fixed step "
                   f"{ref['best_fixed_last20'].fmt('.4f')}, uniform {ref['uniform_last20'].fmt('.4f')}")
        for learner, row in by.items():
            ess = f"  ESS {row['ess'].fmt('.3f')} of n" if "ess" in row else ""
            out.append(f"    {learner:16s} last 20% {row['bandit_last20'].fmt('.4f')} = "
                       f"{row['vs_context_last20'].fmt('.3f')}  all {row['vs_context_avg'].fmt('.3f')}{ess}")
        others = {k: v for k, v in by.items() if k not in ("onramp", NO_FLOOR)}
        if others:
            best = max(others, key=lambda k: others[k]["vs_context_last20"].median)
            top = others[best]["vs_context_last20"].median
            marks = [f"{'yes' if by[k]['vs_context_last20'].median >= top else 'NO'}" for k in ("onramp", NO_FLOOR)
                     if k in by]
            verdicts.append(f"{name}: {' / '.join(marks)} (best peer {best})")
    if verdicts:
        out.append(f"  at or above the best peer over the last 20% (onramp / {NO_FLOOR}): " + "; ".join(verdicts))
    return out
