"""A replicate's record: t intervals and p-values as ``FitResult.coef_table`` gives them."""

from __future__ import annotations

import numpy as np
from scipy import stats

from mlmsim.simstudy.records import t_inference


def test_t_inference_is_scipy_stats_t_to_the_last_bit():
    rng = np.random.default_rng(5)
    df = np.concatenate([rng.uniform(0.5, 300, 5000), [np.inf, np.nan, 1e8]])
    est, se = rng.normal(scale=3, size=df.size), rng.uniform(0.1, 2, df.size)
    for level in (0.9, 0.95):
        lo, hi, p = t_inference(est, se, df, level)
        crit = stats.t.ppf(0.5 + level / 2, df)
        np.testing.assert_array_equal(lo, est - crit * se)
        np.testing.assert_array_equal(hi, est + crit * se)
        np.testing.assert_array_equal(p, 2 * stats.t.sf(np.abs(est / se), df))
    assert np.isnan(p[-2]) and np.isnan(lo[-2])
