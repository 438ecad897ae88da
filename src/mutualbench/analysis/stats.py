"""The statistics behind every table, comparison, contrast, claim and ``compare``: paired
differences over seeds, one-sample tests of a per-seed contrast, Holm's step-down adjustment
over a family of tests, and the Welch interval of the difference of two independent means
(a rerun against a stored study). Pure functions of numbers; scipy and statsmodels do the
distribution work.

Significance everywhere is a two-sided test at ``ALPHA`` after Holm's adjustment within the
test's family (``holm``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import wraps

import numpy as np
import pandas as pd

ALPHA = 0.05


def _quiet(fn):
    """scipy warns (RuntimeWarning) on nearly identical samples, as seeds of a deterministic
    run are; the statistics are still right (or NaN), and the warning is noise to a user."""
    @wraps(fn)
    def inner(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kwargs)
    return inner


def t_quantile(n: int) -> float:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom (NaN below n = 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan


@_quiet
def one_sample(values: pd.Series) -> dict:
    """Per-seed values (a difference or a contrast): n, mean, std, the 95% t-interval of the
    mean, the two-sided one-sample t-test of mean 0 (NaN when n < 2 or every value is equal)
    and on how many seeds the value is > 0 and < 0."""
    from scipy import stats

    v = pd.Series(values, dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    half = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
    p = float(stats.ttest_1samp(v, 0.0).pvalue) if n > 1 and std > 0 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half, "p_value": p,
            "positive": int((v > 0).sum()), "negative": int((v < 0).sum())}


def paired(a: pd.Series, b: pd.Series) -> dict:
    """Accuracies ``a`` and ``b`` indexed by seed, over the seeds both have: n, their means, and
    ``one_sample`` of a - b (the paired t-test), with ``a_wins`` the seeds where a is higher."""
    seeds = sorted(set(a.index) & set(b.index))
    a, b = a.loc[seeds].astype(float), b.loc[seeds].astype(float)
    d = one_sample(a - b)
    return {"n": d["n"], "mean_a": float(a.mean()) if seeds else math.nan,
            "mean_b": float(b.mean()) if seeds else math.nan, "diff_mean": d["mean"], "diff_std": d["std"],
            "ci95_low": d["ci95_low"], "ci95_high": d["ci95_high"], "p_value": d["p_value"],
            "a_wins": d["positive"], "b_wins": d["negative"]}


@_quiet
def equivalence_p(values: Sequence[float], delta: float) -> float:
    """Two one-sided tests (TOST, statsmodels' ``ttost_paired`` against zero) that the mean of
    per-seed values lies inside (-delta, +delta): the larger of the two one-sided p-values. NaN
    when there is no delta, fewer than 2 values, or no spread (every value equal)."""
    from statsmodels.stats.weightstats import ttost_paired

    v = np.asarray(list(values), dtype=float)
    if delta is None or not delta > 0 or len(v) < 2 or not np.std(v) > 0:
        return math.nan
    return float(ttost_paired(v, np.zeros_like(v), -float(delta), float(delta))[0])


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """The probability that the two-sided one-sample t-test at ``alpha`` on ``n`` seeds finds an
    effect of mean ``effect`` and seed-to-seed spread ``sd`` significant *in its own direction*
    (noncentral t; statsmodels' ``TTestPower`` one-sided at alpha / 2). NaN without a spread."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or not sd > 0 or math.isnan(effect):
        return math.nan
    return float(TTestPower().power(effect_size=abs(effect) / sd, nobs=n, alpha=alpha / 2, alternative="larger"))


def seeds_for_power(effect: float, sd: float, alpha: float = ALPHA, target: float = 0.8, most: int = 200) -> int | None:
    """The fewest seeds (>= 2) at which ``power`` reaches ``target``; None when no spread is
    known or more than ``most`` would be needed."""
    if not sd > 0 or math.isnan(effect) or effect == 0:
        return None
    for n in range(2, most + 1):
        if power(effect, sd, n, alpha) >= target:
            return n
    return None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family of tests (controls the family-wise
    error rate). A NaN p-value is a test that was not computed: it is left NaN and does not
    count in the family's size."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(list(p_values), dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=ALPHA, method="holm")[1]
    return [float(x) for x in out]


def holm_by_family(frame: pd.DataFrame, p_column: str, family_column: str = "family") -> pd.Series:
    """``holm`` applied within each family of ``frame``'s rows (index-aligned)."""
    out = pd.Series(math.nan, index=frame.index, dtype=float)
    for _, g in frame.groupby(family_column, sort=False):
        out.loc[g.index] = holm(g[p_column].tolist())
    return out


def significant(p: float) -> bool:
    return not math.isnan(p) and p < ALPHA


@_quiet
def welch(new: pd.Series, stored: pd.Series) -> dict:
    """Two independent sets of seeds (a rerun and the stored runs): the difference of their
    means new - stored with its 95% Welch interval. With one new value and n >= 2 stored ones
    the interval is the stored spread's prediction interval for one more run,
    ``t(n-1) * s * sqrt(1 + 1/n)``; with fewer than two values on the stored side (and one on
    the new) there is no spread to test against (NaN interval)."""
    from scipy import stats

    new, stored = pd.Series(new, dtype=float), pd.Series(stored, dtype=float)
    n_new, n_stored = len(new), len(stored)
    diff = float(new.mean() - stored.mean()) if n_new and n_stored else math.nan
    low = high = math.nan
    how = "no spread"
    if n_new > 1 and n_stored > 1:
        s2 = new.var(ddof=1) / n_new + stored.var(ddof=1) / n_stored
        if s2 > 0:
            ci = stats.ttest_ind(new, stored, equal_var=False).confidence_interval(0.95)
            low, high = float(ci.low), float(ci.high)
        else:
            low = high = diff
        how = "welch"
    elif n_stored > 1 and n_new >= 1:
        # one new run (or n_new = 1 with n_stored >= 2): the prediction interval of one more run
        s = float(stored.std(ddof=1))
        half = t_quantile(n_stored) * s * math.sqrt(1 / n_new + 1 / n_stored)
        low, high = diff - half, diff + half
        how = "prediction"
    elif n_new > 1 and n_stored == 1:
        s = float(new.std(ddof=1))
        half = t_quantile(n_new) * s * math.sqrt(1 / n_new + 1)
        low, high = diff - half, diff + half
        how = "prediction"
    return {"n_new": n_new, "n_stored": n_stored, "diff": diff, "ci95_low": low, "ci95_high": high, "how": how}


def consistency(w: dict, tolerance: float) -> str:
    """``consistent`` or ``differs`` for a ``welch`` result: a rerun differs when its interval
    excludes 0 *and* the difference is larger than ``tolerance`` (the smallest difference
    that matters); without an interval, when the difference alone exceeds the tolerance."""
    d, low, high = w["diff"], w["ci95_low"], w["ci95_high"]
    if math.isnan(d):
        return "missing"
    if math.isnan(low):
        return "differs" if abs(d) > tolerance else "consistent"
    excludes_zero = low > 0 or high < 0
    return "differs" if excludes_zero and abs(d) > tolerance else "consistent"
