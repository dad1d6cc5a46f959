"""Small statistics for the reports: proportion intervals, the two-proportion z-test, a binomial tail test,
bootstrap intervals of means and their differences (numpy), and the chi-square sample-ratio test (scipy's
chi-square tail)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def z_for(alpha: float) -> float:
    """The two-sided critical value ``z_{1 - alpha/2}`` (bisection on :func:`normal_sf`)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if normal_sf(mid) > alpha / 2:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs when ``n`` is 0)."""
    if n <= 0:
        return math.nan, math.nan
    z = z_for(alpha)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment minus control: the difference, its interval and the two-sided p-value."""

    control: float
    treatment: float
    diff: float
    low: float
    high: float
    p_value: float

    def significant(self, alpha: float) -> bool:
        return math.isfinite(self.p_value) and self.p_value < alpha


def two_proportion_test(x_t: int, n_t: int, x_c: int, n_c: int, alpha: float = 0.05) -> Comparison:
    """Two-proportion z-test (pooled variance for the p-value, unpooled Wald interval for the difference)."""
    if n_t <= 0 or n_c <= 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    pt, pc = x_t / n_t, x_c / n_c
    diff = pt - pc
    pooled = (x_t + x_c) / (n_t + n_c)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    p = 2 * normal_sf(abs(diff) / se0) if se0 > 0 else (1.0 if diff == 0 else 0.0)
    se = math.sqrt(pt * (1 - pt) / n_t + pc * (1 - pc) / n_c)
    z = z_for(alpha)
    return Comparison(pc, pt, diff, diff - z * se, diff + z * se, min(1.0, p))


def _too_small(t: np.ndarray, c: np.ndarray) -> Comparison:
    """A difference of means where an arm has fewer than two values: the means, and no interval or p-value."""
    mt = float(t.mean()) if t.size else math.nan
    mc = float(c.mean()) if c.size else math.nan
    return Comparison(mc, mt, mt - mc, math.nan, math.nan, math.nan)


def bootstrap_mean_diff(treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05, n_bootstrap: int = 2000,
                        seed: int = 0) -> Comparison:
    """Difference of means with a percentile-bootstrap interval and a Welch (normal) two-sided p-value."""
    t = np.asarray(treatment, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    if t.size < 2 or c.size < 2:
        return _too_small(t, c)
    rng = np.random.default_rng(seed)
    bt = t[rng.integers(t.size, size=(n_bootstrap, t.size))].mean(axis=1) if t.size * n_bootstrap <= 2e7 else \
        rng.normal(t.mean(), t.std(ddof=1) / math.sqrt(t.size), n_bootstrap)
    bc = c[rng.integers(c.size, size=(n_bootstrap, c.size))].mean(axis=1) if c.size * n_bootstrap <= 2e7 else \
        rng.normal(c.mean(), c.std(ddof=1) / math.sqrt(c.size), n_bootstrap)
    lo, hi = np.quantile(bt - bc, [alpha / 2, 1 - alpha / 2])
    diff = float(t.mean() - c.mean())
    se = math.sqrt(t.var(ddof=1) / t.size + c.var(ddof=1) / c.size)
    p = 2 * normal_sf(abs(diff) / se) if se > 0 else (1.0 if diff == 0 else 0.0)
    return Comparison(float(c.mean()), float(t.mean()), diff, float(lo), float(hi), min(1.0, p))


def bootstrap_mean_interval(values: np.ndarray, alpha: float = 0.05, n_bootstrap: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of a mean (NaNs for fewer than two values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    if v.size * n_bootstrap <= 2e7:
        means = v[rng.integers(v.size, size=(n_bootstrap, v.size))].mean(axis=1)
    else:
        means = rng.normal(v.mean(), v.std(ddof=1) / math.sqrt(v.size), n_bootstrap)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def binomial_lower_p(successes: int, n: int, p0: float) -> float:
    """P(X <= successes) for X ~ Binomial(n, p0): small when a step completes far less often than ``p0``
    (exact sum for small n, normal approximation with continuity correction otherwise)."""
    if n <= 0:
        return 1.0
    if p0 <= 0:
        return 1.0
    if p0 >= 1:
        return 0.0 if successes < n else 1.0
    if n <= 2000:
        logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p0)
                + (n - k) * math.log1p(-p0) for k in range(successes + 1)]
        top = max(logs)
        return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))
    sd = math.sqrt(n * p0 * (1 - p0))
    return 1.0 - normal_sf((successes + 0.5 - n * p0) / sd)


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Sample-ratio check of an experiment: users per arm against the configured shares (chi-square goodness
    of fit). A tiny p-value means assignment or logging is broken, so arm comparisons cannot be trusted."""

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    threshold: float

    @property
    def mismatch(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < self.threshold


def sample_ratio_test(arms: dict[str, int], shares: dict[str, float], threshold: float = 0.001) -> SampleRatio:
    """Chi-square test of the users per arm (``arms``) against the expected ``shares`` (which need not sum to
    one; arms with share 0 are left out). ``threshold`` is the p-value below which a mismatch is reported;
    0.001 is the usual choice, since the test runs on every report and a false alarm stops an experiment.

    >>> round(sample_ratio_test({"a": 500, "b": 500}, {"a": 0.5, "b": 0.5}).p_value, 3)
    1.0
    """
    from scipy.stats import chi2 as chi2_dist

    names = tuple(a for a in shares if shares[a] > 0)
    observed = tuple(int(arms.get(a, 0)) for a in names)
    n = sum(observed)
    total_share = sum(shares[a] for a in names)
    if n == 0 or len(names) < 2:
        return SampleRatio(names, observed, tuple(0.0 for _ in names), math.nan, math.nan, threshold)
    expected = tuple(n * shares[a] / total_share for a in names)
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    return SampleRatio(names, observed, expected, float(stat), float(chi2_dist.sf(stat, len(names) - 1)), threshold)


def welch_diff(treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05) -> Comparison:
    """Difference of means with a Wald (normal) interval and two-sided p-value, unequal variances."""
    t = np.asarray(treatment, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    if t.size < 2 or c.size < 2:
        return _too_small(t, c)
    diff = float(t.mean() - c.mean())
    se = math.sqrt(t.var(ddof=1) / t.size + c.var(ddof=1) / c.size)
    return _wald(float(c.mean()), float(t.mean()), diff, se, alpha)


def _wald(control: float, treatment: float, diff: float, se: float, alpha: float) -> Comparison:
    z = z_for(alpha)
    p = 2 * normal_sf(abs(diff) / se) if se > 0 else (1.0 if diff == 0 else 0.0)
    return Comparison(control, treatment, diff, diff - z * se, diff + z * se, min(1.0, p))


@dataclass(frozen=True, slots=True)
class Cuped:
    """A CUPED-adjusted comparison and how much of the metric's variance the covariate removed."""

    comparison: Comparison
    theta: float
    variance_reduction: float  # 1 - var(adjusted) / var(raw), pooled over both arms (0 when not applied)


def cuped_diff(y_t: np.ndarray, x_t: np.ndarray, y_c: np.ndarray, x_c: np.ndarray, alpha: float = 0.05) -> Cuped:
    """Treatment minus control of a user-level metric ``y`` adjusted for a pre-experiment covariate ``x``
    (CUPED, Deng et al. 2013): ``y - theta (x - mean(x))`` with ``theta = cov(x, y) / var(x)`` pooled over
    both arms, then a Welch comparison. Since ``x`` was fixed before assignment, the adjustment removes
    chance imbalance between arms (of slow or busy users) without bias, and the variance shrinks by the
    squared correlation. Without variance in ``x`` it is the plain Welch comparison.

    >>> x_c, x_t = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0, 5.0, 6.0])  # busier users in treatment
    >>> r = cuped_diff(x_t, x_t, x_c, x_c)  # the metric is their prior activity: no effect at all
    >>> r.comparison.treatment - r.comparison.control, round(r.comparison.diff, 9), r.theta, r.variance_reduction
    (2.0, 0.0, 1.0, 1.0)
    """
    yt, xt = np.asarray(y_t, dtype=np.float64), np.asarray(x_t, dtype=np.float64)
    yc, xc = np.asarray(y_c, dtype=np.float64), np.asarray(x_c, dtype=np.float64)
    if yt.shape != xt.shape or yc.shape != xc.shape:
        raise ValueError("cuped_diff: each arm needs one covariate value per metric value")
    y, x = np.concatenate([yt, yc]), np.concatenate([xt, xc])
    vx = float(x.var()) if x.size > 1 else 0.0
    if vx <= 0 or yt.size < 2 or yc.size < 2:
        return Cuped(welch_diff(yt, yc, alpha), 0.0, 0.0)
    theta = float(np.mean((x - x.mean()) * (y - y.mean())) / vx)
    mx = float(x.mean())
    at, ac = yt - theta * (xt - mx), yc - theta * (xc - mx)
    vy = float(y.var())
    adjusted = np.concatenate([at, ac])
    reduction = 1.0 - float(adjusted.var()) / vy if vy > 0 else 0.0
    cmp = welch_diff(at, ac, alpha)
    return Cuped(Comparison(float(yc.mean()), float(yt.mean()), cmp.diff, cmp.low, cmp.high, cmp.p_value),
                 theta, reduction)


def ratio_diff(num_t: np.ndarray, den_t: np.ndarray, num_c: np.ndarray, den_c: np.ndarray,
               alpha: float = 0.05) -> Comparison:
    """Treatment minus control of a ratio metric measured on units inside users (e.g. completed decisions /
    decisions), with users as the independent units: per-user sums ``num`` and ``den``, the ratio
    ``sum(num) / sum(den)`` per arm and its delta-method variance, so several decisions of one user are not
    counted as independent evidence.

    >>> c = ratio_diff(np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    >>> c.diff
    0.5
    """
    rt, vt = ratio_mean(num_t, den_t)
    rc, vc = ratio_mean(num_c, den_c)
    if not (math.isfinite(vt) and math.isfinite(vc)):
        return Comparison(rc, rt, rt - rc, math.nan, math.nan, math.nan)
    return _wald(rc, rt, rt - rc, math.sqrt(vt + vc), alpha)


def ratio_mean(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``sum(num) / sum(den)`` over users and its delta-method variance (NaN below two users)."""
    n, d = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    total = float(d.sum())
    if total <= 0:
        return math.nan, math.nan
    r = float(n.sum()) / total
    if n.size < 2:
        return r, math.nan
    resid = n - r * d
    return r, float(resid.var(ddof=1) * n.size / total ** 2)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; NaN stays NaN and does not count as a test): reject
    where the adjusted value is below alpha and the family-wise error rate over all the tests is at most
    alpha, whatever their dependence.

    >>> holm([0.01, 0.04, 0.03, float("nan")])
    [0.03, 0.06, 0.06, nan]
    """
    idx = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
