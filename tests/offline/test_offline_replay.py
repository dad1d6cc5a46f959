"""onramp replay end to end on synthetic logs with known truth: every estimator's interval covers the true
value of the target policies, forced rounds are handled as documented, Parquet input equals SQLite input,
and the CLI runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.base.catalog import load_catalog
from server.offline.common import generic_order
from server.offline.export import export_parquet
from server.offline.logdata import load_decisions
from server.ops.cli import main
from server.offline.replay import (ReplayOptions, load_candidate, run_replay, select_rounds, target_candidate,
                                   target_generic, target_logging, target_rules_only)

CAT = load_catalog(None)
ACTIONS = generic_order(CAT)


def _truths(path: Path, truth, options: ReplayOptions, candidate) -> tuple[object, dict[str, float]]:
    log = load_decisions(path, catalog_actions=ACTIONS)
    report = run_replay(log, CAT, [candidate], options)
    r, _ = select_rounds(log, options)
    rows = truth.rows_of(log.decision_id[r.rows])
    targets = {"logging": target_logging(r), "generic": target_generic(r), "rules_only": target_rules_only(r),
               candidate.name: target_candidate(r, candidate, seed=options.seed)[0]}
    return report, {name: truth.value(t, rows) for name, t in targets.items()}


def test_ips_snips_dm_dr_cover_the_truth_with_epsilon_greedy_logging(noisy_log, candidate_config):
    path, truth = noisy_log
    cand = load_candidate(candidate_config)
    options = ReplayOptions(alpha=0.01, n_bootstrap=200, refit_reward_model=True, seed=1)
    report, values = _truths(path, truth, options, cand)
    assert {p.name for p in report.policies} == set(values)
    for p in report.policies:
        for e in p.estimates:
            if e.estimator == "replay":
                continue  # biased under non-uniform logging; the report says so (below)
            assert e.low <= values[p.name] <= e.high, (p.name, e, values[p.name])
    # a warning about the log is said once, not once per policy
    assert sum(w.startswith("replay: the logging probabilities are not uniform") for w in report.warnings) == 1
    assert not any(w.startswith("replay: the logging") for p in report.policies for w in p.warnings)
    # the candidate really differs from the log (so covering its value is not covering the log's)
    assert report.policy(cand.name).differs_share > 0.3
    assert abs(values[cand.name] - values["logging"]) > 0.005


def test_every_estimator_covers_deterministic_targets_under_uniform_logging(uniform_log, candidate_config):
    path, truth = uniform_log
    cand = load_candidate(candidate_config)
    options = ReplayOptions(scope="randomised", alpha=0.01, n_bootstrap=200, refit_reward_model=True, seed=2)
    report, values = _truths(path, truth, options, cand)
    for name in ("generic", "rules_only"):
        p = report.policy(name)
        assert [e.estimator for e in p.estimates] == ["ips", "snips", "dm", "dr", "replay"]
        for e in p.estimates:
            assert e.low <= values[name] <= e.high, (name, e, values[name])
    assert report.counts.used == report.counts.randomised  # scope=randomised drops the forced rounds
    assert report.counts.out_of_scope > 0


def test_forced_rounds_keep_their_logged_step_and_counts_are_reported(noisy_log, candidate_config):
    path, truth = noisy_log
    log = load_decisions(path, catalog_actions=ACTIONS)
    options = ReplayOptions(n_bootstrap=50)
    r, counts = select_rounds(log, options)
    assert counts.logged == truth.decision_ids.size
    assert counts.no_step == int((~truth.has_step).sum())
    assert counts.no_outcome_skipped == int((truth.has_step & ~truth.has_outcome).sum())
    assert counts.used == int((truth.has_step & truth.has_outcome).sum())
    forced = ~r.bandit
    logged = r.one_hot_logged()
    cand = target_candidate(r, load_candidate(candidate_config))[0]
    for target in (target_rules_only(r), cand):
        np.testing.assert_array_equal(target[forced], logged[forced])
    generic = target_generic(r)
    core = forced & ~r.rule & ~r.generic_arm
    np.testing.assert_array_equal(generic[core], logged[core])
    assert (generic[r.rule] != logged[r.rule]).any()  # the generic flow ignores rules
    # every target is a distribution over the eligible steps
    for target in (generic, cand):
        np.testing.assert_allclose(target.sum(axis=1), 1.0, atol=1e-9)
        assert not (target[~r.eligible] > 0).any()
    report = run_replay(log, CAT, [], options)
    logging = report.policy("logging")
    ips = next(e for e in logging.estimates if e.estimator == "ips")
    assert ips.value == pytest.approx(report.on_policy.value)
    assert any("missing support" in w for w in report.policy("generic").warnings)
    assert any("without an outcome were skipped" in w for w in report.warnings)


def test_default_reward_counts_rounds_without_outcome(noisy_log):
    path, truth = noisy_log
    log = load_decisions(path, catalog_actions=ACTIONS)
    r, counts = select_rounds(log, ReplayOptions(default_reward=0.0))
    missing = int((truth.has_step & ~truth.has_outcome).sum())
    assert counts.no_outcome_defaulted == missing and counts.no_outcome_skipped == 0
    assert counts.used == int(truth.has_step.sum())


def test_parquet_export_replays_like_the_database(noisy_log, tmp_path):
    path, _ = noisy_log
    export_parquet(path, tmp_path)
    options = ReplayOptions(n_bootstrap=50, estimators=("ips", "snips", "dr"))
    from_db = run_replay(load_decisions(path, catalog_actions=ACTIONS), CAT, [], options)
    from_pq = run_replay(load_decisions(parquet=tmp_path / "decisions.parquet", catalog_actions=ACTIONS), CAT, [], options)
    assert from_db.counts == from_pq.counts
    for a, b in zip(from_db.policies, from_pq.policies):
        for x, y in zip(a.estimates, b.estimates):
            assert x.value == pytest.approx(y.value) and x.low == pytest.approx(y.low)


def test_cli_replay_json_and_plot(noisy_log, candidate_config, tmp_path, capsys):
    path, _ = noisy_log
    png = tmp_path / "estimates.png"
    rc = main(["replay", "--db", str(path), "--candidate-config", str(candidate_config), "--bootstrap", "50",
               "--json", "--plot", str(png), "--no-progress"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in out["policies"]] == ["logging", "generic", "rules_only", "bandit:candidate"]
    assert out["counts"]["used"] > 0 and out["on_policy"]["low"] <= out["on_policy"]["value"] <= out["on_policy"]["high"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_replay_table_and_bad_input(noisy_log, tmp_path, capsys):
    path, _ = noisy_log
    assert main(["replay", "--db", str(path), "--bootstrap", "20", "--estimators", "ips,snips", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rules_only" in out and "SNIPS" in out and "on-policy mean reward" in out
    assert main(["replay", "--db", str(tmp_path / "missing.db")]) == 2
    assert "--db: no database file" in capsys.readouterr().err
    assert main(["replay", "--db", str(path), "--estimators", "ips,magic"]) == 2
    assert "--estimators" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[bandit]\nalgorithm = "nope"\n')
    assert main(["replay", "--db", str(path), "--candidate-config", str(bad)]) == 2
    assert "bandit.algorithm" in capsys.readouterr().err


def test_a_logged_distribution_that_does_not_sum_to_one_is_named(tmp_path, capsys):
    import sqlite3

    from server.offline.synth import generate_decision_log

    path = tmp_path / "broken.db"
    generate_decision_log(path, 200, seed=8)
    conn = sqlite3.connect(path)
    did, probs = conn.execute("SELECT decision_id, probabilities FROM decisions WHERE reason = 'bandit' "
                              "ORDER BY timestamp_ms LIMIT 1").fetchone()
    half = {k: v / 2 for k, v in json.loads(probs).items()}
    conn.execute("UPDATE decisions SET probabilities = ? WHERE decision_id = ?", (json.dumps(half), did))
    conn.commit()
    conn.close()
    assert main(["replay", "--db", str(path), "--no-progress", "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err
    assert f"the logged probabilities of decision {did}" in err and "sum to 0.5, not 1" in err


def test_one_warning_names_every_candidate_that_learned_from_few_rounds(noisy_log, candidate_config, tmp_path):
    path, _ = noisy_log
    log = load_decisions(path, catalog_actions=ACTIONS)
    other = tmp_path / "eps.toml"
    other.write_text('[bandit]\nalgorithm = "linucb"\nexploration = "epsilon_greedy"\nepsilon = 0.1\n')
    cands = [load_candidate(candidate_config), load_candidate(other)]
    options = ReplayOptions(n_bootstrap=20, estimators=("ips",), min_training_share=0.9)
    report = run_replay(log, CAT, cands, options)
    training = [w for w in report.warnings if w.startswith("replay training:")]
    assert len(training) == 1 and "bandit:candidate from" in training[0] and "bandit:eps from" in training[0]
    assert not any("replay training" in w for p in report.policies for w in p.warnings)
    learned = int(report.policy("bandit:candidate").description.split("learned from ")[1].split()[0])
    assert f"bandit:candidate from {learned:,} (" in training[0]
    quiet = run_replay(log, CAT, cands, ReplayOptions(n_bootstrap=20, estimators=("ips",), min_training_share=0.0))
    assert not any(w.startswith("replay training:") for w in quiet.warnings)


def test_a_forgetting_candidate_learns_at_each_decision_time(noisy_log, tmp_path):
    """A candidate with ``[bandit] half_life_days`` forgets by the logged decisions' timestamps (the log spans
    5.5 days): it differs from the same candidate that never forgets, which it would equal if it learned without
    the timestamps (every weight 1)."""
    path, _ = noisy_log
    r, _ = select_rounds(load_decisions(path, catalog_actions=ACTIONS), ReplayOptions())
    dists = []
    for half_life_days in (0, 1):
        config = tmp_path / f"hl{half_life_days}.toml"
        config.write_text(f'[bandit]\nalgorithm = "linucb"\nalpha = 0.3\nhalf_life_days = {half_life_days}\n')
        dists.append(target_candidate(r, load_candidate(config), seed=1)[0])
    assert np.abs(dists[0] - dists[1])[r.bandit].max() > 0.01
