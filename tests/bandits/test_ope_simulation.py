"""Every estimator is unbiased where it claims to be: over independent simulated logs with a known truth,
its mean error is within three standard errors of zero.

Contexts are a one-hot of the user's hidden type (plus a bias), so the per-step linear reward model is
well specified and DM/DR have no model error to hide behind; IPS, SNIPS, DM and DR are checked under
epsilon-greedy logging (non-uniform, exact propensities), Replay under uniform logging (the only case in
which it is unbiased). Targets: a deterministic one, a stochastic one and one with tied maxima. The
truth of each log is the target's expected reward on that log's users."""
from __future__ import annotations

import numpy as np

from bandits.estimators import IPS, SNIPS, DirectMethod, DoublyRobust, Replay
from bandits.reward_models import RidgeRewardModel
from bandits.simulator import OnboardingSimulator

K, TYPES, N, LOGS = 6, 4, 2000, 30
SIM = OnboardingSimulator(n_steps=K, n_features=4, n_types=TYPES, seed=21)


def _targets(types: np.ndarray) -> dict[str, np.ndarray]:
    n = types.size
    best = np.argmax(SIM.success_probs, axis=1)[types]
    det = np.zeros((n, K))
    det[np.arange(n), best] = 1.0
    stochastic = 0.6 * det + 0.4 / K
    tied = np.full((n, K), 0.2 / (K - 2))
    tied[np.arange(n), best] = 0.4
    tied[np.arange(n), (best + 1) % K] = 0.4
    return {"deterministic": det, "stochastic": stochastic, "tied": tied}


def _log(seed: int, epsilon: float):
    g = np.random.default_rng(seed)
    types = g.choice(TYPES, size=N, p=SIM.type_weights)
    x = np.zeros((N, TYPES + 1))
    x[np.arange(N), types] = 1.0
    x[:, -1] = 1.0
    greedy = (types + 2) % K  # a mediocre logger, so the targets differ from it
    dist = np.full((N, K), epsilon / K)
    dist[np.arange(N), greedy] += 1.0 - epsilon
    a = np.minimum((np.cumsum(dist, axis=1) < g.random(N)[:, None]).sum(axis=1), K - 1)
    r = (g.random(N) < SIM.reward_probs(types)[np.arange(N), a]).astype(np.float64)
    return x, types, a, dist[np.arange(N), a], r


def _errors(epsilon: float, estimators: dict) -> dict[tuple[str, str], np.ndarray]:
    errors: dict[tuple[str, str], list[float]] = {}
    for seed in range(LOGS):
        x, types, a, p, r = _log(seed, epsilon)
        q = RidgeRewardModel(K, clip=(0.0, 1.0)).fit_predict(x, a, r, n_folds=2, random_state=seed)
        for target, pi in _targets(types).items():
            truth = SIM.expected_value(types, pi)
            for name, est in estimators.items():
                errors.setdefault((name, target), []).append(est.estimate_policy_value(r, a, p, pi, q) - truth)
    return {key: np.array(v) for key, v in errors.items()}


def _assert_unbiased(errors: dict[tuple[str, str], np.ndarray]) -> None:
    for (name, target), e in errors.items():
        se = e.std(ddof=1) / np.sqrt(e.size)
        assert abs(e.mean()) <= 3 * se, f"{name} on the {target} target: mean error {e.mean():+.4f}, se {se:.4f}"


def test_ips_snips_dm_dr_are_unbiased_under_epsilon_greedy_logging():
    _assert_unbiased(_errors(0.3, {"ips": IPS(), "snips": SNIPS(), "dm": DirectMethod(), "dr": DoublyRobust()}))


def test_replay_is_unbiased_under_uniform_logging_for_stochastic_targets_too():
    errors = _errors(1.0, {"replay": Replay()})
    _assert_unbiased(errors)
    assert errors[("replay", "tied")].std() > 0  # real spread, not a degenerate match


def test_the_simulated_targets_really_differ_from_the_logger():
    x, types, a, p, r = _log(0, 0.3)
    logged = float(r.mean())
    for pi in _targets(types).values():
        assert SIM.expected_value(types, pi) - logged > 0.05
