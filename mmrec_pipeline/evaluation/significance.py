"""Uncertainty of the leaderboard's averages, from the per-user metric values behind them.

- `bootstrap_ci`: percentile bootstrap over users (resample users with replacement, recompute the mean);
  seeded, so a re-run prints the same interval.
- `paired_tests`: each model against a reference (the best model, popularity) on the same users, with the
  Wilcoxon signed-rank test (scipy; users whose two values are equal carry no sign and are dropped, the
  `wilcox` zero method), then Holm's step-down correction over the models compared with one reference.
- `pareto_front`: the models no other model beats on both accuracy and coverage.
"""

from __future__ import annotations

import numpy as np
import polars as pl

ALPHA = 0.05
# scipy's `wilcoxon` tests up to this many pairs with ties or zeros by enumerating every sign flip (2**13), calling
# its statistic once per flip; `paired_p_value` runs that same test with a vectorized statistic.
EXACT_MAX_PAIRS = 13


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                 max_draws: int = 20_000_000) -> tuple[float, float]:
    """(low, high) percentile interval of the mean of `values` (NaNs ignored). Resamples run in blocks of at
    most `max_draws` indices (160 MB), whatever the number of users and resamples."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    block = max(1, min(n_resamples, max_draws // len(values)))
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[rng.integers(0, len(values), size=(min(block, n_resamples - lo), len(values)))]
                            .mean(axis=1) for lo in range(0, n_resamples, block)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down: the i-th smallest times m - i, kept monotone, capped at 1).
    Hand-written because it is five lines and the only other home is statsmodels, a large dependency."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of a - b; 1.0 when every pair is equal (nothing to test)."""
    # imported here, not at the top: every process that imports the code location would pay for scipy.stats
    from scipy.stats import permutation_test, wilcoxon

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return 1.0
    if nonzero.size >= 2 and diff.size <= EXACT_MAX_PAIRS:
        # The p-value scipy's `wilcoxon` gives here (the same exhaustive sign-flip test;
        # tests/test_evaluation_stats), vectorized: scipy's per-flip loop was most of a small dataset's report
        # step (docs/BENCHMARKS.md, Speed).
        return float(permutation_test((nonzero,), signed_rank_sum, permutation_type="samples", vectorized=True,
                                      n_resamples=np.inf, alternative="two-sided").pvalue)
    return float(wilcoxon(diff, zero_method="wilcox").pvalue)


def signed_rank_sum(d: np.ndarray, axis: int = -1) -> np.ndarray:
    """Wilcoxon's W+ along `axis`: the sum of the ranks of |d| where d > 0 (ties get their average rank)."""
    from scipy.stats import rankdata

    return np.sum(np.where(d > 0, rankdata(np.abs(d), axis=axis), 0.0), axis=axis)


def wide_per_user(per_user: pl.DataFrame, metric: str) -> pl.DataFrame:
    """users x models table of one per-user metric (column names `model/variant`), on the users every model
    was evaluated on (the same users under one protocol; an inner join guards against a model that was not)."""
    t = per_user.select((pl.col("model") + "/" + pl.col("variant")).alias("name"), "user_id", metric)
    return t.pivot(on="name", index="user_id", values=metric, aggregate_function="first").drop_nulls()


def paired_tests(per_user: pl.DataFrame, metric: str, reference: str) -> pl.DataFrame:
    """name, mean difference to `reference` and Holm-adjusted Wilcoxon p-value, for every other model."""
    wide = wide_per_user(per_user, metric)
    if reference not in wide.columns:
        return pl.DataFrame(schema={"name": pl.Utf8, "diff": pl.Float64, "p": pl.Float64, "p_holm": pl.Float64})
    ref = wide[reference].to_numpy()
    names = [c for c in wide.columns if c not in ("user_id", reference)]
    p = [paired_p_value(wide[n].to_numpy(), ref) for n in names]
    return pl.DataFrame({"name": names, "diff": [float(np.mean(wide[n].to_numpy() - ref)) for n in names],
                         "p": p, "p_holm": holm(p) if p else []},
                        schema={"name": pl.Utf8, "diff": pl.Float64, "p": pl.Float64, "p_holm": pl.Float64})


def pareto_front(x, y) -> np.ndarray:
    """Indices of the points no other point matches or beats on both x and y while beating it on one
    (higher is better on both), sorted by x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = [i for i in range(len(x)) if not np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))]
    return np.asarray(sorted(keep, key=lambda i: x[i]), dtype=np.int64)
