"""Off-policy estimators: hand-computed values on a tiny log, interval coverage on a simulated log
with known truth, effective sample size, diagnostics and input checks."""
from __future__ import annotations

import numpy as np
import pytest

from bandits.estimators import (
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    Replay,
    bootstrap_ratio,
    diagnose,
    effective_sample_size,
    estimate_all,
    target_probability,
)
from bandits.reward_models import RidgeRewardModel
from bandits.simulator import OnboardingSimulator

# A 4-round log over 3 actions, computed by hand in the comments.
R = np.array([1.0, 1.0, 0.0, 0.0])
A = np.array([0, 1, 2, 0])
P = np.array([0.5, 0.25, 0.25, 0.5])
PI = np.array([[0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [1.0, 0.0, 0.0], [0.6, 0.4, 0.0]])
Q = np.array([[0.5, 0.2, 0.1], [0.3, 0.6, 0.0], [0.4, 0.4, 0.9], [0.1, 0.2, 0.3]])
# w = pi(a|x)/p = [0.4, 3.6, 0, 1.2]; DM rows = [0.26, 0.57, 0.40, 0.14]


def test_hand_computed_values():
    assert IPS().estimate_policy_value(R, A, P, PI) == pytest.approx((0.4 + 3.6) / 4)
    assert IPS(clip=2.0).estimate_policy_value(R, A, P, PI) == pytest.approx((0.4 + 2.0) / 4)
    assert SNIPS().estimate_policy_value(R, A, P, PI) == pytest.approx(4.0 / 5.2)
    assert DirectMethod().estimate_policy_value(R, A, P, PI, Q) == pytest.approx(1.37 / 4)
    # DR rows: 0.26+0.4*(1-0.5), 0.57+3.6*(1-0.6), 0.40+0*(0-0.9), 0.14+1.2*(0-0.1)
    assert DoublyRobust().estimate_policy_value(R, A, P, PI, Q) == pytest.approx((0.46 + 2.01 + 0.40 + 0.02) / 4)
    # replay weights each round by the target's probability of the logged action, pi = [0.2, 0.9, 0, 0.6]
    assert Replay().estimate_policy_value(R, A, P, PI) == pytest.approx((0.2 + 0.9) / (0.2 + 0.9 + 0.6))


def test_replay_of_a_stochastic_target_with_tied_maxima():
    """Uniform logging over 3 actions; only action 2 succeeds. A target 0.4/0.4/0.2 is worth 0.2: counting
    each tied maximum as a match (and action 2 as none) gave 0."""
    r, a, p = np.array([0.0, 0.0, 1.0] * 2), np.array([0, 1, 2] * 2), np.full(6, 1 / 3)
    pi = np.tile([0.4, 0.4, 0.2], (6, 1))
    assert Replay().estimate_policy_value(r, a, p, pi) == pytest.approx(0.2)
    assert Replay().estimate_policy_value(r, a, p, target_probability(pi, a)) == pytest.approx(0.2)
    assert Replay().estimate_policy_value(r, a, p, pi) == pytest.approx(SNIPS().estimate_policy_value(r, a, p, pi))


def test_target_probability_of_the_logged_action_is_enough_for_ips():
    pi_logged = target_probability(PI, A)
    assert pi_logged.tolist() == [0.2, 0.9, 0.0, 0.6]
    assert IPS().estimate_policy_value(R, A, P, pi_logged) == IPS().estimate_policy_value(R, A, P, PI)
    assert SNIPS().estimate_policy_value(R, A, P, PI[:, :, None]) == pytest.approx(4.0 / 5.2)  # OBP (n, K, 1)
    assert Replay().estimate_policy_value(R, A, P, np.array([0.0, 1.0, 0.0, 1.0])) == pytest.approx(0.5)
    assert Replay().estimate_policy_value(R, A, P, pi_logged) == Replay().estimate_policy_value(R, A, P, PI)
    with pytest.raises(ValueError, match="full action_dist"):
        DoublyRobust().estimate_policy_value(R, A, P, pi_logged, Q)
    with pytest.raises(ValueError, match="estimated_rewards"):
        DirectMethod().estimate_policy_value(R, A, P, PI)


def test_input_checks_name_the_argument():
    with pytest.raises(ValueError, match="pscore"):
        IPS().estimate_policy_value(R, A, np.array([0.5, 0.0, 0.2, 0.1]), PI)
    with pytest.raises(ValueError, match="same shape"):
        IPS().estimate_policy_value(R, A[:3], P, PI)
    with pytest.raises(ValueError, match="action must be indices"):
        IPS().estimate_policy_value(R, np.array([0, 1, 3, 0]), P, PI)
    with pytest.raises(ValueError, match="action_dist must hold probabilities"):
        IPS().estimate_policy_value(R, A, P, PI * 2)
    with pytest.raises(ValueError, match="reward must be finite"):
        IPS().estimate_policy_value(np.array([1.0, np.nan, 0, 0]), A, P, PI)


BAD_ROWS = PI.copy()
BAD_ROWS[2] = [0.5, 0.0, 0.0]  # sums to 0.5
BAD_ROWS[3] = [0.6, 0.4, 0.1]  # sums to 1.1


@pytest.mark.parametrize("call", [
    lambda: IPS().estimate_policy_value(R, A, P, BAD_ROWS),
    lambda: SNIPS().estimate_interval(R, A, P, BAD_ROWS, n_bootstrap=10),
    lambda: DirectMethod().estimate_policy_value(R, A, P, BAD_ROWS, Q),
    lambda: DoublyRobust().estimate_policy_value(R, A, P, BAD_ROWS, Q),
    lambda: Replay().estimate_policy_value(R, A, P, BAD_ROWS),
    lambda: diagnose(A, P, BAD_ROWS),
    lambda: target_probability(BAD_ROWS[:, :, None], A),
])
def test_every_distribution_row_must_sum_to_one(call):
    with pytest.raises(ValueError, match=r"action_dist row 2 sums to 0\.5, not 1 \(2 of 4 rows"):
        call()


def test_the_logging_distribution_rows_must_sum_to_one_too():
    with pytest.raises(ValueError, match=r"logging_dist row 3 sums to 1\.1, not 1"):
        diagnose(A, P, PI, logging_dist=np.vstack([PI[:3], [[0.6, 0.4, 0.1]]]))
    rounded = PI.copy()
    rounded[0, 0] += 5e-7  # rounding is fine
    assert diagnose(A, P, PI, logging_dist=rounded).n_rounds == 4


def test_effective_sample_size():
    assert effective_sample_size(np.ones(10)) == pytest.approx(10.0)
    assert effective_sample_size(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_sample_size(np.array([0.4, 3.6, 0.0, 1.2])) == pytest.approx(5.2**2 / (0.16 + 12.96 + 1.44))
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_diagnostics_warn_about_missing_and_thin_support():
    healthy = diagnose(A, P, PI)
    assert healthy.max_weight == pytest.approx(3.6) and healthy.zero_support_share == pytest.approx(0.25)
    assert healthy.missing_support_share is None
    logging = np.array([[0.5, 0.0, 0.5], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.0, 0.5]])
    d = diagnose(A, P, PI, logging_dist=logging)
    assert d.missing_support_share == pytest.approx(0.5)  # rounds 1 and 4: target mass where logging has none
    assert any(w.startswith("missing support") for w in d.warnings)
    none = diagnose(A, P, np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert none.zero_support_share == 1.0 and any(w.startswith("no support") for w in none.warnings)
    n = 10_000
    p = np.full(n, 0.5)
    p[0] = 0.0002  # one rarely logged action the target always takes: weight 5000
    pi = np.full(n, 0.001)
    pi[0] = 1.0
    thin = diagnose(np.zeros(n, dtype=int), p, pi)
    assert any("low effective sample size" in x for x in thin.warnings)
    assert any("one round carries" in x for x in thin.warnings)


def test_bootstrap_is_a_plain_resample_for_small_logs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    reps = bootstrap_ratio(x, None, 4000, 1)
    assert reps.std() == pytest.approx(x.std() / np.sqrt(200), rel=0.06)
    assert reps.mean() == pytest.approx(x.mean(), abs=0.01)
    grouped = bootstrap_ratio(np.tile(x, 500), None, 2000, 1, max_groups=5000)  # 100k rows in 5000 groups
    assert grouped.std() == pytest.approx(x.std() / np.sqrt(100_000), rel=0.08)


@pytest.fixture(scope="module")
def simulated_log():
    """Uniform logging on a simulator; the target is 90% a fixed linear rule, 10% uniform."""
    sim = OnboardingSimulator(n_steps=8, n_features=10, n_types=4, seed=3, separation=4.0)
    g = np.random.default_rng(103)
    n, k = 30_000, 8
    x, types = sim.arrivals(n, g)
    a = g.integers(k, size=n)
    p = np.full(n, 1 / k)
    r = (g.random(n) < sim.reward_probs(types)[np.arange(n), a]).astype(float)
    best = (x @ g.normal(size=(10, k))).argmax(axis=1)
    pi = np.full((n, k), 0.1 / k)
    pi[np.arange(n), best] += 0.9
    det = np.zeros((n, k))
    det[np.arange(n), best] = 1.0
    return sim, x, types, a, p, r, pi, det


def test_intervals_cover_the_true_value(simulated_log):
    sim, x, types, a, p, r, pi, det = simulated_log
    truth = sim.expected_value(types, pi)
    uniform_value = sim.reward_probs(types).mean()
    assert abs(truth - uniform_value) > 0.02  # the target really differs from the logging policy
    feats = sim.type_posterior(x)  # a well-specified reward model: E[r | x, a] is linear in these
    q = RidgeRewardModel(8).fit_predict(feats, a, r, n_folds=2, random_state=0)
    for est in (IPS(), SNIPS(), DoublyRobust()):
        iv = est.estimate_interval(r, a, p, pi, q, n_bootstrap=1000, random_state=7)
        assert iv.covers(truth), (est, iv, truth)
        assert iv.high - iv.low < 0.05
    dm = DirectMethod().estimate_interval(r, a, p, pi, n_bootstrap=200, random_state=7, context=feats,
                                          reward_model=RidgeRewardModel(8))
    assert dm.covers(truth) and dm.high - dm.low < 0.05
    replay = Replay().estimate_interval(r, a, p, det, n_bootstrap=1000, random_state=7)
    assert replay.covers(sim.expected_value(types, det))


def test_estimate_all_and_grouped_bootstrap_agree_with_row_bootstrap(simulated_log):
    sim, x, types, a, p, r, pi, det = simulated_log
    q = RidgeRewardModel(8).fit_predict(x, a, r)
    res = estimate_all(r, a, p, pi, q, n_bootstrap=500, random_state=1)
    assert set(res) == {"ips", "snips", "replay", "dm", "dr"}
    for iv in res.values():
        assert iv.low <= iv.mean <= iv.high
    rows = IPS().estimate_interval(r, a, p, pi, n_bootstrap=1000, random_state=2, max_groups=None)
    groups = IPS().estimate_interval(r, a, p, pi, n_bootstrap=1000, random_state=2, max_groups=3000)
    assert rows.mean == groups.mean
    assert (groups.high - groups.low) == pytest.approx(rows.high - rows.low, rel=0.15)


def test_refit_bootstrap_cross_fits_each_replicate_like_the_point_estimate():
    """Each replicate = the point estimate's computation on multinomial counts: the model refitted on the
    other folds' rows with the counts as weights (a row drawn twice keeps its fold, so never predicts
    itself). Checked against a plain loop over replicates."""
    g = np.random.default_rng(5)
    n, k, b = 60, 3, 40
    x = np.eye(6)[g.integers(6, size=n)]
    a, p = g.integers(k, size=n), np.full(n, 1 / k)
    r = (g.random(n) < 0.4).astype(float)
    pi = np.tile([0.6, 0.3, 0.1], (n, 1))
    fold = g.integers(2, size=n)
    model = RidgeRewardModel(k, clip=(0.0, 1.0))
    for est in (DirectMethod(), DoublyRobust()):
        iv = est.estimate_interval(r, a, p, pi, alpha=0.2, n_bootstrap=b, random_state=9, context=x,
                                   reward_model=model, fold=fold)
        counts = np.stack([np.bincount(row, minlength=n) for row in np.random.default_rng(9).integers(n, size=(b, n))])
        reps = []
        for c in counts.astype(float):
            q = np.empty((n, k))
            for f in (0, 1):
                train, test = fold != f, fold == f
                m = RidgeRewardModel(k, clip=(0.0, 1.0)).fit(x[train], a[train], r[train], sample_weight=c[train])
                q[test] = m.predict(x[test])
            dm = (pi * q).sum(axis=1)
            rows = dm if isinstance(est, DirectMethod) else dm + pi[np.arange(n), a] / p * (r - q[np.arange(n), a])
            reps.append(float((c * rows).sum() / n))
        low, high = np.quantile(reps, [0.1, 0.9])
        assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-9)
        q_point = RidgeRewardModel(k, clip=(0.0, 1.0)).cross_fit(x, a, r, fold)
        assert iv.mean == pytest.approx(est.estimate_policy_value(r, a, p, pi, q_point), abs=1e-12)
