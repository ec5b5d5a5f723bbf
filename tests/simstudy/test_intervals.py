"""Intervals for proportions (coverage, rejection and fit-flag rates): inside [0, 1] and
not empty at 0 or 1, where the MCSE sqrt(p (1 - p) / n) is 0."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlmsim.simstudy.intervals import (
    clopper_pearson_interval,
    is_proportion,
    proportion_interval,
    wilson_interval,
)

Z = stats.norm.ppf(0.975)


def test_wilson_closed_forms_at_the_edges_and_its_defining_equation():
    lo, hi = wilson_interval([0, 25], [25, 25])
    assert lo[0] == 0 and hi[0] == pytest.approx(Z**2 / (25 + Z**2))
    assert hi[1] == 1 and lo[1] == pytest.approx(25 / (25 + Z**2))
    # inside, the ends solve |p-hat - p| = z sqrt(p (1 - p) / n)
    k, n = np.array([1, 7, 13, 24]), 25
    lo, hi = wilson_interval(k, n)
    for end in (lo, hi):
        np.testing.assert_allclose(np.abs(k / n - end), Z * np.sqrt(end * (1 - end) / n),
                                   rtol=1e-10)
    assert ((lo < k / n) & (k / n < hi)).all()


def test_clopper_pearson_closed_forms_and_width():
    lo, hi = clopper_pearson_interval([0, 25], [25, 25])
    assert lo[0] == 0 and hi[0] == pytest.approx(1 - 0.025 ** (1 / 25))
    assert hi[1] == 1 and lo[1] == pytest.approx(0.025 ** (1 / 25))
    k = np.arange(26)
    wl, wh = wilson_interval(k, 25)
    cl, ch = clopper_pearson_interval(k, 25)
    assert ((ch - cl) >= (wh - wl) - 1e-12).all()  # exact intervals are the wider
    # the exact interval's ends are where the binomial tail is alpha / 2
    assert stats.binom.sf(6, 25, cl[7]) == pytest.approx(0.025)
    assert stats.binom.cdf(7, 25, ch[7]) == pytest.approx(0.025)


def test_proportion_interval_from_estimates_and_n():
    lo, hi = proportion_interval([0.0, 1.0, 0.2, np.nan, 0.5], [25, 25, 25, 25, 0])
    assert lo[0] == 0 and hi[0] > 0.1 and lo[1] < 0.9 and hi[1] == 1
    np.testing.assert_allclose([lo[2], hi[2]], [float(x) for x in wilson_interval(5, 25)])
    assert np.isnan(lo[3:]).all() and np.isnan(hi[3:]).all()
    lo, hi = proportion_interval(0.0, 25, method="clopper-pearson")
    assert hi == pytest.approx(1 - 0.025 ** (1 / 25))
    with pytest.raises(ValueError, match="wilson"):
        proportion_interval(0.5, 10, method="wald")
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


def test_which_measures_are_proportions():
    for m in ("cover", "becover", "rejection", "singular_rate", "nonconverged_rate",
              "noncover"):
        assert is_proportion(m)
    for m in ("bias", "relbias", "empse", "n_fits", "mean_seconds"):
        assert not is_proportion(m)


def test_clopper_pearson_is_scipy_stats_beta_quantiles():
    """The interval's ends are the Beta quantiles scipy.stats computes, to the last bit."""
    rng = np.random.default_rng(3)
    n = rng.integers(1, 5000, 2000).astype(float)
    k = np.minimum(np.floor(rng.uniform(0, 1, n.size) * (n + 1)), n)
    for level in (0.9, 0.95, 0.99):
        lo, hi = clopper_pearson_interval(k, n, level)
        a = (1 - level) / 2
        np.testing.assert_array_equal(
            lo, np.where(k > 0, stats.beta.ppf(a, np.maximum(k, 1e-300), n - k + 1), 0.0))
        np.testing.assert_array_equal(
            hi, np.where(k < n, stats.beta.ppf(1 - a, k + 1, np.maximum(n - k, 1e-300)), 1.0))
