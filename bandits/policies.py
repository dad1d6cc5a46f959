"""Linear contextual policies (LinUCB, linear Thompson sampling, ridge-greedy) over a fixed-size
numpy context vector and ``K`` arms (onboarding steps, indices ``0..K-1``).

Every policy keeps, per arm, the design matrix ``A_a = ridge*I + sum x x^T``, its inverse and
``b_a = sum r x``; ``learn_one`` updates ``A_a^{-1}`` by a Sherman-Morrison rank-one update, so learning
never inverts a matrix. ``unlearn_one`` removes one observation exactly (``A_a -= x x^T``, ``b_a -= r x``)
and re-derives that arm's inverse from ``A_a``: what erasing a person from the model needs.

With a ``half_life`` (in the unit of the timestamps ``t`` given to ``learn_one``, e.g. milliseconds) the
policy forgets: an observation made at ``t`` weighs ``2 ** -((clock - t) / half_life)``, where ``clock`` is
the latest ``t`` learned, so after a change of preferences the new observations take over (the ridge
prior is not discounted, so the confidence widths grow back and the arms are explored again). The weights
are kept as ``exp(lambda * (t - t_ref))`` against a reference time ``t_ref`` that steps along a fixed grid
(an eighth of the half-life) behind the clock; when it steps, every ``A_a`` and ``b_a`` is rescaled once.
The state is therefore a function of the set of observations and of the clock only (not of the order they
came in, nor of when a process started), and ``unlearn_one(x, arm, r, t)`` subtracts exactly the weight
the observation has now.

``scores`` returns one number per requested arm (an optimistic
estimate for LinUCB, a posterior draw for Thompson sampling, the ridge estimate for greedy) and
``to_state``/``from_state`` turn a policy into plain numpy/python values for checkpoints.

With ``change_z > 0`` the policy also watches each arm for a change of its reward (a test on its one-step-ahead
residuals): before learning an observation it adds the residual ``e = r - x.theta_a`` to an exponentially
weighted sum ``S_a`` (``change_window`` observations of that arm long) and ``e**2`` to ``Q_a``; when
``|S_a| > change_z * sqrt(V_a)`` (a z-test of "the residuals have mean zero", after at least
:data:`MIN_DETECT` observations; ``V_a`` is ``Q_a`` floored at the variance a residual has over a
:data:`VARIANCE_WINDOWS` times longer memory, so a run of failures at a rare reward, which makes ``Q_a`` tiny,
is not a change) the arm's statistics are reset to the prior and everything it learned up to
then stops counting. So a stationary model keeps all its data (no fixed horizon to waste it), and a step
whose reward moved is relearned at once. A reset of an arm whose test had run for :data:`SETTLED_WINDOWS`
windows (a young estimate's early residuals are biased by its own selection; a settled arm's are not) also
discounts every other arm: what they learned up to then weighs :data:`SHRINK_OTHERS` as much (``A - ridge*I``
and ``b`` scaled; recorded as a time per arm, and an observation of an earlier time weighs that much less, so
``unlearn_one`` stays exact) and their tests start again, because users' preferences seldom move for one step
alone and a step shown only through the exploration floor is seen too rarely for its own test to notice that it
became the best for some users. A reset is recorded as a time per arm (``reset_at``: the latest
time it had learned), and an observation of time ``t <= reset_at`` weighs 0, so ``unlearn_one`` stays exact;
the detector's running sums are a trigger, not part of the model, and are not unlearned (they decay
within a few ``change_window`` of the arm's observations). Change detection needs the observations' times: one
learned without a time (``t = None``) is not tested and is never dropped, so a stream without times never
resets (and one arm should not mix observations with and without times when change detection is on).

>>> p = LinUCB(n_arms=3, n_features=2, alpha=0.0)
>>> for _ in range(50):
...     p.learn_one(np.array([1.0, 0.0]), 2, 1.0)
>>> int(np.argmax(p.scores(np.array([1.0, 0.0]), [0, 1, 2])))
2
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

ArmsLike = Sequence[int] | np.ndarray | None

ALGORITHMS = ("linucb", "lints", "ridge", "cluster_linucb")
GRID_PER_HALF_LIFE = 8  # t_ref steps this often per half-life: every weight stays below 2 ** (1/8)
MIN_DETECT = 50  # observations of an arm since its last reset before its change test may fire
VARIANCE_WINDOWS = 2  # the change test's variance floor remembers this many change_windows
SETTLED_WINDOWS = 2  # a reset after this many change_windows of testing an arm also discounts the other arms
SHRINK_OTHERS = 0.5  # ... by this factor: what they learned so far weighs that much less


def _weight_sum(decay: float, n: float | np.ndarray) -> Any:
    """``sum(decay ** i for i in range(n))``: the total weight of ``n`` exponentially weighted terms."""
    return (1.0 - decay ** n) / (1.0 - decay) if decay < 1.0 else n


@runtime_checkable
class Policy(Protocol):
    """What the decision engine needs from a scoring model: scores per arm, online learning, a
    point estimate, a version string and a checkpointable state."""

    n_arms: int
    n_features: int
    n_updates: int

    @property
    def version(self) -> str:
        """Identity of the algorithm and its configuration (not of the learned weights)."""
        ...

    def scores(self, x: np.ndarray, arms: ArmsLike = None, rng: np.random.Generator | None = None) -> np.ndarray:
        """Estimated reward of each arm in ``arms`` (all arms when None) for context ``x``."""
        ...

    def score_list(self, x: np.ndarray, arms: list[int], rng: np.random.Generator | None = None) -> list[float]:
        """The same numbers as :meth:`scores` for a list of arm indices, as a list of floats."""
        ...

    def learn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Update the model with one observed (context, arm, reward) made at time ``t`` (the decision's
        timestamp; None: the policy's clock)."""
        ...

    def unlearn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Remove one observation that :meth:`learn_one` added with the same ``t`` (the model then equals
        one that never saw it and whose clock reached the same time)."""
        ...

    def predict_one(self, x: np.ndarray, arm: int) -> float:
        """Point estimate of the expected reward of ``arm`` for context ``x``."""
        ...

    @property
    def clock(self) -> float | None:
        """The latest time learned by a policy that forgets (None otherwise or before any learning)."""
        ...

    def advance(self, t: float) -> None:
        """Move the clock forward to ``t``, so what was learned before weighs less (no-op if it never forgets)."""
        ...

    def to_state(self) -> dict[str, Any]:
        """Plain numpy/python values that :func:`policy_from_state` turns back into the policy."""
        ...


class _LinearBase:
    """Per-arm ridge regression with Sherman-Morrison updates: shared state of all linear policies."""

    algorithm = "linear"

    def __init__(self, n_arms: int, n_features: int, ridge: float = 1.0, half_life: float = 0.0,
                 change_z: float = 0.0, change_window: float = 500.0) -> None:
        if int(n_arms) < 1:
            raise ValueError(f"n_arms must be >= 1 (got {n_arms})")
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1 (got {n_features})")
        if not (ridge > 0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be a finite number > 0 (got {ridge})")
        if not (half_life >= 0 and math.isfinite(half_life)):
            raise ValueError(f"half_life must be a finite number >= 0 (got {half_life})")
        if not (change_z >= 0 and math.isfinite(change_z)):
            raise ValueError(f"change_z must be a finite number >= 0 (got {change_z})")
        if not (change_window >= 1 and math.isfinite(change_window)):
            raise ValueError(f"change_window must be a finite number >= 1 (got {change_window})")
        self.n_arms = int(n_arms)
        self.n_features = int(n_features)
        self.ridge = float(ridge)
        self.half_life = float(half_life)  # 0: never forget
        self.change_z = float(change_z)  # 0: no change detection
        self.change_window = float(change_window)
        self._decay = 1.0 - 1.0 / self.change_window
        self._var_decay = 1.0 - 1.0 / (VARIANCE_WINDOWS * self.change_window)
        self._lam = math.log(2.0) / self.half_life if self.half_life > 0 else 0.0
        self._grid = self.half_life / GRID_PER_HALF_LIFE
        self.clock: float | None = None  # the latest t learned (forgetting policies only)
        self._t_ref = 0.0  # weights are exp(lam * (t - t_ref)); t_ref on the grid, at most one step behind clock
        self.n_updates = 0
        d, k = self.n_features, self.n_arms
        # One (k*d + k, d) block holds every A_a^{-1} stacked, then every theta_a: a single BLAS
        # product with x gives both A_a^{-1} x (for the variances) and the means x . theta_a.
        self._M = np.zeros((k * d + k, d))
        self._A_inv = self._M[: k * d].reshape(k, d, d)
        self._A_inv[...] = np.eye(d) / self.ridge
        self._theta = self._M[k * d:]
        self._A = np.zeros((k, d, d))
        self._A[...] = np.eye(d) * self.ridge
        self._b = np.zeros((k, d))
        self._counts = np.zeros(k, dtype=np.int64)
        # change detection: per arm the latest time learned, the reset time (what is not later weighs 0), the
        # residual sums S and Q, the observations since the last reset and the number of resets
        self._latest = np.full(k, -math.inf)
        self._reset_at = np.full(k, -math.inf)
        self._det = np.zeros((k, 4))  # S, Q, n, L (e**2 weighted over VARIANCE_WINDOWS windows)
        self._resets = np.zeros(k, dtype=np.int64)
        # per arm the times at which a settled reset of another arm discounted it (ascending; emptied by its own
        # reset): an observation of time t weighs SHRINK_OTHERS ** (how many of them are >= t)
        self._shrinks: list[list[float]] = [[] for _ in range(k)]
        # scratch buffers of the hot path (no allocation per call for these)
        self._u = np.empty(d)
        self._v = np.empty(d)
        self._u_col = self._u.reshape(d, 1)
        self._outer = np.empty((d, d))
        self._Mx = np.empty(k * d + k)
        self._kd = self._Mx[: k * d].reshape(k, d)
        self._mean = self._Mx[k * d:]
        self._var = np.empty(k)
        self._score = np.empty(k)
        self._all = np.arange(k, dtype=np.intp)

    # ------------------------------------------------------------------ inspection
    @property
    def version(self) -> str:
        """Algorithm and hyper-parameters, e.g. ``linucb(alpha=1,ridge=1,k=10,d=23)``."""
        v = self.__dict__.get("_version")
        if v is None:
            params = ",".join(f"{k}={v:g}" for k, v in self._params().items())
            v = self._version = f"{self.algorithm}({params},k={self.n_arms},d={self.n_features})"
        return v

    def _params(self) -> dict[str, float]:
        return {"ridge": self.ridge, **self._forgetting()}

    def _forgetting(self) -> dict[str, float]:
        out = {"half_life": self.half_life} if self.half_life > 0 else {}
        if self.change_z > 0:
            out.update(change_z=self.change_z, change_window=self.change_window)
        return out

    @property
    def counts(self) -> np.ndarray:
        """Number of updates of each arm (a copy)."""
        return self._counts.copy()

    @property
    def resets(self) -> np.ndarray:
        """Number of times change detection reset each arm (a copy)."""
        return self._resets.copy()

    def A(self, arm: int) -> np.ndarray:
        """A copy of the current design matrix of ``arm``."""
        return self._A[self._arm(arm)].copy()

    def A_inv(self, arm: int) -> np.ndarray:
        """A copy of the current inverse design matrix of ``arm``."""
        return self._A_inv[self._arm(arm)].copy()

    def theta(self, arm: int) -> np.ndarray:
        """A copy of the ridge estimate ``A^{-1} b`` of ``arm``."""
        return self._theta[self._arm(arm)].copy()

    # ------------------------------------------------------------------ checks
    def _arm(self, arm: int) -> int:
        a = int(arm)
        if a < 0 or a >= self.n_arms or a != arm:
            raise ValueError(f"arm must be an integer in [0, {self.n_arms - 1}] (got {arm!r})")
        return a

    def _x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"x must have shape ({self.n_features},) (got {x.shape})")
        return x

    def _arms(self, arms: ArmsLike) -> np.ndarray:
        if arms is None:
            return self._all
        if isinstance(arms, np.ndarray) and arms.dtype == np.intp:
            idx = arms
        else:
            idx = np.asarray(arms, dtype=np.intp)
        if idx.ndim != 1:
            raise ValueError("arms must be a 1-D sequence of arm indices")
        lst = idx.tolist()  # range check in Python: cheaper than two numpy reductions for K ~ 10
        if lst and (min(lst) < 0 or max(lst) >= self.n_arms):
            raise ValueError(f"arms must be indices in [0, {self.n_arms - 1}] (got {lst})")
        return idx

    # ------------------------------------------------------------------ learning
    def learn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Add one observation to ``arm``'s ridge regression (Sherman-Morrison, O(d^2)); a forgetting policy
        first moves its clock forward to ``t`` (None: the clock) and weighs the observation by its age."""
        x = self._x(x)
        a = self._arm(arm)
        r = float(reward)
        if not math.isfinite(r):
            raise ValueError(f"reward must be finite (got {reward!r})")
        A_inv = self._A_inv[a]
        u = np.matmul(A_inv, x, out=self._u)
        denom = 1.0 + float(x.dot(u))  # NaN or inf here iff x has a NaN/inf (or overflows): refuse before any change
        if not math.isfinite(denom):
            raise ValueError("x must contain only finite numbers")
        if self.change_z and t is not None:
            tt = float(t)
            if not math.isfinite(tt):
                raise ValueError(f"t must be a finite time (got {t!r})")
            if tt <= self._reset_at[a]:  # learned before the arm's last reset would have dropped it: weighs 0
                self.advance(tt)
                self._counts[a] += 1
                self.n_updates += 1
                return
            if tt > self._latest[a]:
                self._latest[a] = tt
            if self._detect(a, float(x.dot(self._theta[a])), r):
                settled = self._det[a, 2] >= SETTLED_WINDOWS * self.change_window
                self._reset(a)
                if settled:
                    self._shrink_others(a)
                self.advance(tt)
                self._counts[a] += 1
                self.n_updates += 1
                return
        w = 1.0
        if self._lam:
            tt = self._time(t)
            ref = self._t_ref
            self.advance(tt)
            if self._t_ref != ref:  # the frame moved: A^-1 was rescaled
                u = np.matmul(A_inv, x, out=self._u)
            w = math.exp(self._lam * (tt - self._t_ref))
        if self._shrinks[a] and t is not None:
            w *= self._shrink_weight(a, float(t))
        if self._lam or w != 1.0:
            denom = 1.0 / w + float(x.dot(u)) if w > 0.0 else math.inf  # (A + w x x^T)^-1, Sherman-Morrison
        v = np.divide(u, denom, out=self._v)
        A_inv -= np.multiply(self._u_col, v, out=self._outer)  # u v^T through a kept column view of u
        outer = np.multiply(x[:, None], x, out=self._outer)
        if w != 1.0:
            outer *= w
            r *= w
        self._A[a] += outer
        b = self._b[a]
        if r == 1.0:
            b += x
        elif r != 0.0:
            b += r * x
        np.matmul(A_inv, b, out=self._theta[a])
        self._counts[a] += 1
        self.n_updates += 1

    def _detect(self, a: int, predicted: float, r: float) -> bool:
        """Add the residual of arm ``a``'s prediction to its change test; True when the test fires.

        The test's variance is the larger of the window's realised ``Q`` and what the arm's residual variance
        over a :data:`VARIANCE_WINDOWS` times longer memory (``L / sum of its weights``) gives the window's
        weights. With rare rewards a run of failures makes ``Q`` tiny (every residual is about ``-p``), and a
        test normalised by ``Q`` alone fires on such a run although the reward did not move; the longer
        memory does not shrink with it, yet forgets the large residuals of relearning after a reset."""
        det = self._det[a]
        e = r - predicted
        d, dl = self._decay, self._var_decay
        det[0] = d * det[0] + e
        det[1] = d * d * det[1] + e * e
        det[2] += 1
        det[3] = dl * det[3] + e * e
        n = det[2]
        if n < MIN_DETECT:
            return False
        var = max(det[1], det[3] / _weight_sum(dl, n) * _weight_sum(d * d, n))
        return bool(det[0] * det[0] > self.change_z * self.change_z * var)

    def _reset(self, a: int) -> None:
        """Arm ``a`` back to the prior: what it learned up to its latest time weighs 0 from now on."""
        self._reset_at[a] = self._latest[a]
        self._A[a] = np.eye(self.n_features) * self.ridge
        self._A_inv[a] = np.eye(self.n_features) / self.ridge
        self._b[a] = 0.0
        self._theta[a] = 0.0
        self._det[a] = 0.0
        self._resets[a] += 1
        self._shrinks[a].clear()  # everything they discounted now weighs 0

    def _shrink_others(self, a: int) -> None:
        """After a settled reset of arm ``a`` (its test had run for :data:`SETTLED_WINDOWS` windows, so this is
        unlikely to be the early noise of a young estimate): what every other arm learned up to its latest time
        weighs :data:`SHRINK_OTHERS` times less, and its change test starts again.

        A change of users' preferences seldom moves one step alone, and a step the policy rarely shows (only
        through the exploration floor) gets too few observations for its own test to see that it became the
        best for some users; with its old data discounted its confidence widens and the policy tries it
        again. A false alarm costs the others only part of their data, not all of it."""
        f, eye = SHRINK_OTHERS, np.eye(self.n_features) * self.ridge
        for o in range(self.n_arms):
            if o == a or self._latest[o] <= self._reset_at[o]:  # nothing learned with a time since its reset
                continue
            self._shrinks[o].append(float(self._latest[o]))
            A = self._A[o]
            A -= eye
            A *= f
            A += eye
            self._b[o] *= f
            self._A_inv[o] = np.linalg.inv(A)
            np.matmul(self._A_inv[o], self._b[o], out=self._theta[o])
            self._det[o] = 0.0

    def _shrink_weight(self, a: int, t: float) -> float:
        """The factor by which the discounts of arm ``a`` weigh an observation of time ``t``."""
        times = self._shrinks[a]
        return SHRINK_OTHERS ** (len(times) - bisect.bisect_left(times, t))

    def unlearn_one(self, x: np.ndarray, arm: int, reward: float, t: float | None = None) -> None:
        """Remove one observation that :meth:`learn_one` added: ``A -= w x x^T`` and ``b -= w r x`` exactly
        (``w``: the weight an observation of time ``t`` has now; 1 for a policy that never forgets, 0 for one
        learned before a change-detection reset of the arm), then
        ``A^{-1}`` and ``theta`` re-derived from them (O(d^3) for that arm). ValueError when the arm has no
        observation to remove or ``t`` is later than the clock (nothing of that time was learned).

        >>> p = LinUCB(n_arms=2, n_features=2)
        >>> p.learn_one(np.array([1.0, 2.0]), 1, 1.0)
        >>> p.unlearn_one(np.array([1.0, 2.0]), 1, 1.0)
        >>> bool(np.allclose(p.A_inv(1), np.eye(2))), p.n_updates
        (True, 0)
        """
        x = self._x(x)
        a = self._arm(arm)
        r = float(reward)
        if not math.isfinite(r):
            raise ValueError(f"reward must be finite (got {reward!r})")
        if not np.all(np.isfinite(x)):
            raise ValueError("x must contain only finite numbers")
        if self._counts[a] <= 0:
            raise ValueError(f"arm {a} has no observation to remove")
        w = 1.0
        if self._lam:
            tt = self._time(t)
            if self.clock is None or tt > self.clock:
                raise ValueError(f"t = {tt:g} is later than every observation learned (clock {self.clock})")
            w = math.exp(self._lam * (tt - self._t_ref))
        if self.change_z and t is not None and float(t) <= self._reset_at[a]:
            w = 0.0
        elif self._shrinks[a] and t is not None:
            w *= self._shrink_weight(a, float(t))
        if self._counts[a] == 1:  # the arm's last observation: exactly the prior, not the prior plus rounding
            self._A[a] = np.eye(self.n_features) * self.ridge
            self._A_inv[a] = np.eye(self.n_features) / self.ridge
            self._b[a] = 0.0
            self._theta[a] = 0.0
        elif w:
            self._A[a] -= w * np.outer(x, x)
            self._b[a] -= (w * r) * x
            self._A_inv[a] = np.linalg.inv(self._A[a])
            np.matmul(self._A_inv[a], self._b[a], out=self._theta[a])
        self._counts[a] -= 1
        self.n_updates -= 1

    # ------------------------------------------------------------------ forgetting
    def _time(self, t: float | None) -> float:
        """``t`` checked, or the clock when None (the grid origin before anything was learned)."""
        if t is None:
            return self.clock if self.clock is not None else self._t_ref
        tt = float(t)
        if not math.isfinite(tt):
            raise ValueError(f"t must be a finite time (got {t!r})")
        return tt

    def advance(self, t: float) -> None:
        """Move the clock forward to ``t`` (never back), so everything learned before weighs less. Learning
        does this itself; a policy that never forgets ignores it.

        >>> p = LinUCB(n_arms=1, n_features=1, half_life=10.0)
        >>> p.learn_one(np.array([1.0]), 0, 1.0, t=0.0)
        >>> p.advance(10.0)
        >>> round(float(p.A(0)[0, 0]) - p.ridge, 12)  # one observation, one half-life old
        0.5
        """
        if not self._lam:
            return
        tt = self._time(t)
        if self.clock is not None and tt <= self.clock:
            return
        self.clock = tt
        ref = math.floor(tt / self._grid) * self._grid
        if ref == self._t_ref:
            return
        f = math.exp(-self._lam * (ref - self._t_ref))
        self._t_ref = ref
        A, diag = self._A, np.arange(self.n_features)
        if self.n_updates == 0:  # nothing learned (or everything unlearned): exactly the prior
            A[...] = np.eye(self.n_features) * self.ridge
            self._b[...] = 0.0
        else:
            A[:, diag, diag] -= self.ridge
            A *= f
            self._b *= f
            A[:, diag, diag] += self.ridge
        self._A_inv[...] = np.linalg.inv(A)
        np.matmul(self._A_inv, self._b[:, :, None], out=self._theta[:, :, None])

    def predict_one(self, x: np.ndarray, arm: int) -> float:
        """Ridge point estimate ``x . theta_arm`` of the expected reward."""
        return float(self._x(x) @ self._theta[self._arm(arm)])

    # ------------------------------------------------------------------ scoring
    def scores(self, x: np.ndarray, arms: ArmsLike = None, rng: np.random.Generator | None = None) -> np.ndarray:
        """Scores of the requested arms (all arms when None), in the order asked (a new array)."""
        return self._all_scores(self._x(x), rng)[self._arms(arms)]

    def score_list(self, x: np.ndarray, arms: list[int], rng: np.random.Generator | None = None) -> list[float]:
        """The same numbers as :meth:`scores` as a list of floats (the fast path of the decider: for K of
        about ten, indexing a Python list beats numpy's fancy indexing)."""
        if arms and (min(arms) < 0 or max(arms) >= self.n_arms):
            raise ValueError(f"arms must be indices in [0, {self.n_arms - 1}] (got {arms})")
        every = self._all_scores(self._x(x), rng).tolist()
        return [every[a] for a in arms]

    def _all_scores(self, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Score of every arm into a scratch buffer that the next call overwrites (here: the ridge
        estimate; subclasses add their exploration bonus or posterior draw)."""
        return np.matmul(self._theta, x, out=self._score)

    def _mean_and_var(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x.theta_a`` and ``x^T A_a^{-1} x`` for every arm (two BLAS products into scratch buffers)."""
        var = self._var
        np.matmul(self._M, x, out=self._Mx)  # A_a^{-1} x for every arm, then x . theta_a
        np.matmul(self._kd, x, out=var)
        np.maximum(var, 0.0, out=var)  # guards tiny negative rounding
        return self._mean, var

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Plain values (numpy arrays, ints, floats, strings) that rebuild this policy exactly."""
        return {
            "algorithm": self.algorithm,
            "n_arms": self.n_arms,
            "n_features": self.n_features,
            "params": self._params(),
            "n_updates": self.n_updates,
            "A": self._A.copy(),
            "A_inv": self._A_inv.copy(),
            "b": self._b.copy(),
            "counts": self._counts.copy(),
            "clock": self.clock,
            "t_ref": self._t_ref,
            "latest": self._latest.copy(),
            "reset_at": self._reset_at.copy(),
            "detector": self._det.copy(),
            "resets": self._resets.copy(),
            "shrinks": self._shrink_array(),
        }

    def _shrink_array(self) -> np.ndarray:
        """The discount times per arm as a (k, longest) array padded with NaN."""
        out = np.full((self.n_arms, max((len(s) for s in self._shrinks), default=0)), np.nan)
        for a, times in enumerate(self._shrinks):
            out[a, : len(times)] = times
        return out

    def _load(self, state: Mapping[str, Any]) -> None:
        k, d = self.n_arms, self.n_features
        A_inv = np.asarray(state["A_inv"], dtype=np.float64)
        b = np.asarray(state["b"], dtype=np.float64)
        if A_inv.shape != (k, d, d) or b.shape != (k, d):
            raise ValueError(f"state arrays must have shapes A_inv ({k}, {d}, {d}) and b ({k}, {d}) "
                             f"(got {A_inv.shape} and {b.shape})")
        self._A_inv[...] = A_inv
        A = state.get("A")
        if A is None:  # a state written before the design matrix was kept: derive it from the inverse
            self._A[...] = np.linalg.inv(A_inv)
        else:
            A = np.asarray(A, dtype=np.float64)
            if A.shape != (k, d, d):
                raise ValueError(f"state array A must have shape ({k}, {d}, {d}) (got {A.shape})")
            self._A[...] = A
        self._b[...] = b
        np.matmul(self._A_inv, self._b[:, :, None], out=self._theta[:, :, None])
        self._counts[...] = np.asarray(state.get("counts", np.zeros(k)), dtype=np.int64)
        self.n_updates = int(state.get("n_updates", 0))
        clock = state.get("clock")
        self.clock = None if clock is None else float(clock)
        self._t_ref = float(state.get("t_ref", 0.0))
        for key, arr in (("latest", self._latest), ("reset_at", self._reset_at), ("detector", self._det),
                         ("resets", self._resets)):
            if key in state:  # a state written before change detection has none: no reset yet
                value = np.asarray(state[key], dtype=arr.dtype)
                if key == "detector" and value.shape == (self.n_arms, 3):  # saved before L was kept
                    value = np.column_stack([value, self._long_run_from_window(value)])
                if value.shape != arr.shape:
                    raise ValueError(f"state array {key} must have shape {arr.shape} (got {value.shape})")
                arr[...] = value
        shrinks = np.asarray(state.get("shrinks", np.zeros((k, 0))), dtype=np.float64)
        if shrinks.ndim != 2 or shrinks.shape[0] != k:
            raise ValueError(f"state array shrinks must have {k} rows (got shape {shrinks.shape})")
        self._shrinks = [[float(v) for v in row if not math.isnan(v)] for row in shrinks]

    def _long_run_from_window(self, det: np.ndarray) -> np.ndarray:
        """``L`` for a detector saved without it: the window's variance ``Q / sum of squared weights``."""
        d, dl, n = self._decay, self._var_decay, det[:, 2]
        w2 = np.maximum(_weight_sum(d * d, n), 1e-300)
        return np.where(n > 0, det[:, 1] / w2 * _weight_sum(dl, n), 0.0)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickle and ``copy.deepcopy`` through :meth:`to_state`: the arrays are views of one block, which
        copying them one by one would silently unlink."""
        return policy_from_state, (self.to_state(),)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Any:
        """Rebuild a policy of this class from :meth:`to_state` output."""
        if state.get("algorithm") != cls.algorithm:
            raise ValueError(f"state is for algorithm {state.get('algorithm')!r}, not {cls.algorithm!r}")
        policy = cls(int(state["n_arms"]), int(state["n_features"]), **dict(state.get("params", {})))
        policy._load(state)
        return policy


class RidgeGreedy(_LinearBase):
    """Per-arm ridge regression; score = ``x . theta_a`` (all exploration comes from the
    exploration scheme on top)."""

    algorithm = "ridge"
    deterministic_scores = True  # a context's scores are a function of the model: they may be reused


class LinUCB(_LinearBase):
    """Disjoint LinUCB (Li et al. 2010): score = ``x.theta_a + alpha * sqrt(x^T A_a^{-1} x)``.

    With ``noise_sd = s > 0`` the bound is taken on the posterior predictive of a Bayesian linear regression
    with noise sd ``s`` (prior precision = ``ridge``): score = ``x.theta_a + alpha * (sqrt(s^2 + x^T A_a^{-1} x)
    - s)`` (River's ``LinUCBDisjoint`` with ``alpha = s = 1``; the ``- s`` is the same for every arm and keeps
    scores on the reward scale). The bonus then shrinks like the variance once the model is sure (``~ alpha *
    x^T A^{-1} x / 2s``) instead of like its square root, so a well-learned arm stops paying for exploration
    sooner, while an arm never seen keeps a bonus of about ``alpha * |x| / sqrt(ridge)``.
    """

    algorithm = "linucb"
    deterministic_scores = True  # a context's scores are a function of the model: they may be reused

    def __init__(self, n_arms: int, n_features: int, alpha: float = 1.0, ridge: float = 1.0,
                 half_life: float = 0.0, noise_sd: float = 0.0, change_z: float = 0.0,
                 change_window: float = 500.0) -> None:
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite number >= 0 (got {alpha})")
        if not (noise_sd >= 0 and math.isfinite(noise_sd)):
            raise ValueError(f"noise_sd must be a finite number >= 0 (got {noise_sd})")
        super().__init__(n_arms, n_features, ridge, half_life, change_z, change_window)
        self.alpha = float(alpha)
        self.noise_sd = float(noise_sd)

    def _params(self) -> dict[str, float]:
        noise = {"noise_sd": self.noise_sd} if self.noise_sd > 0 else {}
        return {"alpha": self.alpha, "ridge": self.ridge, **noise, **self._forgetting()}

    def _all_scores(self, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Upper confidence bound of every arm (scratch buffer)."""
        mean, var = self._mean_and_var(x)
        s = self.noise_sd
        if s:
            var += s * s
        np.sqrt(var, out=var)
        if s:
            var -= s
        var *= self.alpha
        return np.add(mean, var, out=self._score)

    def score_list(self, x: np.ndarray, arms: list[int], rng: np.random.Generator | None = None) -> list[float]:
        """Upper confidence bounds of ``arms`` as floats: the same IEEE operations as :meth:`scores`
        (sqrt, product, sum), done on Python floats, which for K of about ten beats four numpy calls."""
        if arms and (min(arms) < 0 or max(arms) >= self.n_arms):
            raise ValueError(f"arms must be indices in [0, {self.n_arms - 1}] (got {arms})")
        mean, var = self._mean_and_var(self._x(x))
        m, v = mean.tolist(), var.tolist()
        alpha, sqrt, s = self.alpha, math.sqrt, self.noise_sd
        if s:
            s2 = s * s
            return [m[a] + alpha * (sqrt(v[a] + s2) - s) for a in arms]
        return [m[a] + alpha * sqrt(v[a]) for a in arms]


class LinearTS(_LinearBase):
    """Linear Thompson sampling (Agrawal & Goyal 2013): each arm's score is a draw of
    ``x.theta~`` with ``theta~ ~ N(theta_a, v^2 A_a^{-1})``.

    Only ``x.theta~`` is needed, so the draw is the exact scalar Gaussian
    ``N(x.theta_a, v^2 x^T A_a^{-1} x)`` (no Cholesky factor per call). Arms are independent.
    """

    algorithm = "lints"

    def __init__(self, n_arms: int, n_features: int, v: float = 0.5, ridge: float = 1.0, seed: int | None = 0,
                 half_life: float = 0.0, change_z: float = 0.0, change_window: float = 500.0) -> None:
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"v must be a finite number >= 0 (got {v})")
        super().__init__(n_arms, n_features, ridge, half_life, change_z, change_window)
        self.v = float(v)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._z = np.empty(self.n_arms)

    def _params(self) -> dict[str, float]:
        return {"v": self.v, "ridge": self.ridge, **self._forgetting()}

    def _all_scores(self, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """One posterior draw per arm, from ``rng`` (the policy's own seeded one if None); every arm is
        drawn even when fewer are asked, so the random stream does not depend on the eligible set."""
        mean, var = self._mean_and_var(x)
        g = self._rng if rng is None else rng
        z = g.standard_normal(self.n_arms, out=self._z)
        np.sqrt(var, out=var)
        var *= z
        var *= self.v
        return np.add(mean, var, out=self._score)

    def to_state(self) -> dict[str, Any]:
        state = super().to_state()
        state["rng_state"] = self._rng.bit_generator.state
        return state

    def _load(self, state: Mapping[str, Any]) -> None:
        super()._load(state)
        if "rng_state" in state:
            self._rng.bit_generator.state = state["rng_state"]


_CLASSES: dict[str, type[_LinearBase]] = {c.algorithm: c for c in (LinUCB, LinearTS, RidgeGreedy)}


def build_policy(algorithm: str, n_arms: int, n_features: int, *, alpha: float = 1.0, l2: float = 1.0,
                 seed: int | None = 0, half_life: float = 0.0, noise_sd: float = 0.0, change_z: float = 0.0,
                 change_window: float = 500.0, n_clusters: int = 5, warmup: int = 1000) -> Policy:
    """A policy by catalog name: ``linucb`` (bonus width ``alpha``, on the predictive sd when ``noise_sd`` >
    0), ``lints`` (posterior scale ``v = alpha``, draws from ``seed``), ``ridge`` (greedy) or ``cluster_linucb``
    (LinUCB on ``n_clusters`` soft cluster memberships fitted on the first ``warmup`` contexts,
    :mod:`bandits.latent`; no half-life); ``l2`` is the ridge of all, ``half_life`` (in the unit of the learned
    timestamps; 0 = never) how fast they forget and ``change_z`` (0 = off) / ``change_window`` their per-arm
    change detection."""
    change = {"half_life": half_life, "change_z": change_z, "change_window": change_window}
    if algorithm == "cluster_linucb":
        from bandits.latent import ClusterLinUCB  # it builds on LinUCB: imported here, not at the top

        if half_life:
            raise ValueError("cluster_linucb does not forget by a half-life (its change test relearns a step)")
        return ClusterLinUCB(n_arms, n_features, n_clusters=n_clusters, warmup=warmup, alpha=alpha, ridge=l2,
                             noise_sd=noise_sd, change_z=change_z, change_window=change_window, seed=seed or 0)
    if algorithm == "linucb":
        return LinUCB(n_arms, n_features, alpha=alpha, ridge=l2, noise_sd=noise_sd, **change)
    if algorithm == "lints":
        return LinearTS(n_arms, n_features, v=alpha, ridge=l2, seed=seed, **change)
    if algorithm == "ridge":
        return RidgeGreedy(n_arms, n_features, ridge=l2, **change)
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)} (got {algorithm!r})")


def policy_from_state(state: Mapping[str, Any]) -> Policy:
    """Rebuild any policy of this module from its :meth:`to_state` output."""
    algorithm = state.get("algorithm")
    if algorithm == "cluster_linucb":
        from bandits.latent import ClusterLinUCB

        return ClusterLinUCB.from_state(state)
    cls = _CLASSES.get(str(algorithm))
    if cls is None:
        raise ValueError(f"state algorithm must be one of {', '.join(ALGORITHMS)} (got {algorithm!r})")
    return cls.from_state(state)
