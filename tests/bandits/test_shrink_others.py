"""A settled change-detection reset of one arm discounts what the other arms learned (``SHRINK_OTHERS``): by
hand, not after a young arm's reset, exact unlearning across discounts (late rewards included), checkpoints,
and exact, deterministic probabilities through it all."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.exploration import Decider, EpsilonGreedy
from bandits.policies import SETTLED_WINDOWS, SHRINK_OTHERS, LinUCB, build_policy, policy_from_state

WINDOW = 50.0


def _other_arm(p: LinUCB, n: int, rng: np.random.Generator) -> None:
    """``n`` observations of arm 1 at times 0..n-1, before arm 0's stream."""
    for i in range(n):
        p.learn_one(np.array([1.0, rng.normal()]), 1, float(rng.random() < 0.5), t=float(i))


def _until_reset(p: LinUCB, rng: np.random.Generator, t0: int, stable: int) -> int:
    """Arm 0 at 10 % for ``stable`` observations, then at 90 % until it resets; the next free time."""
    t = t0
    for _ in range(stable):
        p.learn_one(np.array([1.0, rng.normal()]), 0, float(rng.random() < 0.1), t=float(t))
        t += 1
    assert p.resets[0] == 0
    while p.resets[0] == 0:
        p.learn_one(np.array([1.0, rng.normal()]), 0, float(rng.random() < 0.9), t=float(t))
        t += 1
    return t


def test_a_settled_reset_discounts_the_other_arms_by_hand() -> None:
    rng = np.random.default_rng(0)
    p = LinUCB(3, 2, alpha=1.0, noise_sd=1.0, change_z=4.0, change_window=WINDOW)
    _other_arm(p, 40, rng)
    A1, b1 = p.A(1), p.to_state()["b"][1]
    assert p.to_state()["detector"][1][2] == 40  # arm 1's test has counted its observations
    t = _until_reset(p, rng, 40, int(SETTLED_WINDOWS * WINDOW) + 10)
    eye = np.eye(2)
    assert np.allclose(p.A(1), eye + SHRINK_OTHERS * (A1 - eye), atol=1e-12)
    assert np.allclose(p.theta(1), np.linalg.solve(p.A(1), SHRINK_OTHERS * b1), atol=1e-12)
    assert p.to_state()["detector"][1].tolist() == [0.0, 0.0, 0.0, 0.0]  # its test starts again
    assert np.array_equal(p.A(2), eye)  # an arm that learned nothing stays the prior
    # a new observation of arm 1 weighs 1; a late one from before the discount weighs SHRINK_OTHERS
    x_new, x_late = np.array([1.0, 2.0]), np.array([1.0, -1.0])
    before = p.A(1)
    p.learn_one(x_new, 1, 1.0, t=float(t))
    p.learn_one(x_late, 1, 1.0, t=3.0)
    assert np.allclose(p.A(1), before + np.outer(x_new, x_new) + SHRINK_OTHERS * np.outer(x_late, x_late),
                       atol=1e-12)
    # unlearning every observation of arm 1 (each with its time) leaves exactly the prior
    p.unlearn_one(x_late, 1, 1.0, t=3.0)
    p.unlearn_one(x_new, 1, 1.0, t=float(t))
    assert np.allclose(p.A(1), before, atol=1e-12)


def test_a_young_arms_reset_leaves_the_others_alone() -> None:
    rng = np.random.default_rng(1)
    p = LinUCB(2, 2, alpha=1.0, noise_sd=1.0, change_z=4.0, change_window=WINDOW)
    _other_arm(p, 40, rng)
    A1 = p.A(1)
    _until_reset(p, rng, 40, 60)  # reset after fewer than SETTLED_WINDOWS windows of testing
    assert p.resets.tolist() == [1, 0]
    assert np.array_equal(p.A(1), A1)


def test_checkpoint_keeps_the_discounts() -> None:
    rng = np.random.default_rng(2)
    a = LinUCB(2, 2, alpha=1.0, noise_sd=1.0, change_z=4.0, change_window=WINDOW)
    _other_arm(a, 30, rng)
    _until_reset(a, rng, 30, int(SETTLED_WINDOWS * WINDOW) + 5)
    b = policy_from_state(a.to_state())
    x = np.array([1.0, 0.7])
    for p in (a, b):  # a late reward from before the discount weighs the same in both
        p.learn_one(x, 1, 1.0, t=2.0)
    assert np.array_equal(a.A(1), b.A(1)) and np.array_equal(a.theta(1), b.theta(1))
    old = {k: v for k, v in a.to_state().items() if k != "shrinks"}
    assert policy_from_state(old).to_state()["shrinks"].shape == (2, 0)  # a state saved before them loads


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5), algorithm=st.sampled_from(["linucb", "lints", "ridge"]),
       switch=st.integers(150, 500), delay=st.integers(0, 30))
def test_exact_deterministic_probabilities_and_exact_unlearning_through_discounts(seed, k, algorithm, switch,
                                                                               delay) -> None:
    """On a stream where arm 0 changes at ``switch`` (its settled reset discounts the others) (rewards learned up to ``delay`` decisions late): every
    decision's probabilities sum to 1, keep the floor and log the chosen arm's; the same seed gives the same
    decisions; and unlearning all but each arm's first observation (each with its time) leaves exactly that one
    observation at some weight."""
    d = 3

    def run() -> tuple[list[tuple[int, float]], Decider, list[tuple[np.ndarray, int, float, float]]]:
        policy = build_policy(algorithm, k, d, alpha=1.0, noise_sd=1.0, change_z=3.0, change_window=40.0, seed=seed)
        decider = Decider(policy, EpsilonGreedy(0.1, 0.2), seed=seed)
        rng = np.random.default_rng(seed)
        seen, learned, pending = [], [], []
        for i in range(700):
            x = np.append(rng.normal(size=d - 1), 1.0)
            c = decider.decide(x, list(range(k)), rng)
            probs = list(c.probabilities.values())
            assert math.isclose(sum(probs), 1.0, abs_tol=1e-12) and min(probs) >= 0.1 / k - 1e-15
            assert c.probability == c.probabilities[c.arm]
            seen.append((c.arm, c.probability))
            rate = (0.1 if i >= switch else 0.8) if c.arm == 0 else 0.3 + 0.1 * (c.arm % 2)  # only arm 0 moves
            pending.append((i + int(rng.integers(delay + 1)), x, c.arm, float(rng.random() < rate), float(i)))
            pending.sort(key=lambda e: e[0])
            while pending and pending[0][0] <= i:
                _, xx, arm, r, t = pending.pop(0)
                decider.learn_one(xx, arm, r, t)
                learned.append((xx, arm, r, t))
        return seen, decider, learned

    seen, decider, learned = run()
    again, _, _ = run()
    assert seen == again
    policy = decider.policy
    first = {}
    for j, (_, arm, _, _) in enumerate(learned):
        first.setdefault(arm, j)
    for j in reversed(range(len(learned))):  # all but each arm's first observation
        if first[learned[j][1]] != j:
            policy.unlearn_one(*learned[j])
    for arm, j in first.items():  # what is left is that one observation, at whatever weight it has now
        x, r = learned[j][0], learned[j][2]
        w = float(x @ (policy.A(arm) - np.eye(d)) @ x) / float(x @ x) ** 2
        assert w >= -1e-9 and np.allclose(policy.A(arm), np.eye(d) + w * np.outer(x, x), atol=1e-6), arm
        assert np.allclose(policy.to_state()["b"][arm], w * r * x, atol=1e-6), arm
