"""The exact finite-sample null distribution of the (restricted) likelihood-ratio test of
one variance component (Crainiceanu and Ruppert 2004, JRSS-B 66:165-185; RLRsim's
``RLRTSim`` and ``LRTSim``, behind its ``exactRLRT`` and ``exactLRT``).

Model y = X beta + Z b + e, b ~ N(0, lambda sigma^2 I_K), e ~ N(0, sigma^2 I_n), X (n, p)
of full rank, no other random effect; H0: lambda = 0. With mu_1..mu_K the eigenvalues of
Z' P0 Z, P0 = I - X (X'X)^{-1} X', xi_1..xi_K those of Z'Z, and w_s, u_t iid N(0, 1):

    N(lambda) = sum_{s<=K} lambda mu_s / (1 + lambda mu_s) w_s^2
    D(lambda) = sum_{s<=K} w_s^2 / (1 + lambda mu_s) + sum_{s=K+1}^{n-p} w_s^2

    RLRT =_d sup_{lambda>=0} (n - p) log(1 + N/D) - sum_{s<=K} log(1 + lambda mu_s)
    LRT  =_d sup_{lambda>=0} n log(1 + N/D) - sum_{s<=K} log(1 + lambda xi_s)
             + n log(1 + sum_{t<=q} u_t^2 / sum_{s<=n-p} w_s^2)

(Crainiceanu and Ruppert's Theorems 1 and 2 at lambda_0 = 0). The RLRT is the REML
criterion (-2 log L_R) of the model without the random effect minus that of the model
with it, the LRT the same difference of -2 log L; q is the number of fixed effects the
null also sets to 0 (0 when only the variance is tested).

RLRsim's conventions, kept so that a sample has RLRsim's distribution and p-values agree
with ``exactRLRT`` / ``exactLRT``:

* the eigenvalues are scaled (lambda's unit only, which places the grid): mu / max(mu)
  for the RLRT, mu and xi by max(xi) (>= max(mu)) for the LRT. (RLRsim's ``LRTSim``
  scales xi by max(mu / max(xi), xi), which is max(xi) whenever max(xi)^2 >= max(mu), e.g.
  for any random intercept; otherwise it scales mu and xi differently, which is not the
  model's distribution. mlmsim always uses the common scale.);
* lambda runs over a grid: 0, then ``gridlength - 1`` points equally spaced in log lambda
  from exp(``log_grid_lo``) to exp(``log_grid_hi``) (RLRsim: 200 points, -10 to 8);
* the supremum is the first local maximum along that grid: the value is followed up the
  grid from lambda = 0 (where it is 0) while it does not decrease, with no optimisation
  between grid points. A draw is exactly 0 when the value drops at the first positive
  grid point: the point mass at 0;
* sum_{s>K} w_s^2 is one chi2(n - p - K) draw, sum_t u_t^2 one chi2(q) draw;
* the p-value is the share of the sample at or above the observed statistic (RLRsim:
  above it; the same but at 0, see :func:`p_value`).

Eigenvalues below 1e-12 max(mu) (for a random intercept with an intercept in X, Z'P0Z has
one zero) add their w_s^2 to D only, so they are drawn within the chi-square of
sum_{s>K}, which then has n - p - (number of positive mu) df (RLRsim keeps them as
K - rank chi2(1) draws: the same distribution while K <= n - p); equal eigenvalues
(balanced groups) share one chi2(multiplicity) draw. Neither changes the distribution;
both make the balanced case cheap.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

__all__ = ["spectrum", "null_sample", "p_value", "ols_deviance", "lambda_grid"]

CHUNK = 8192
"""Simulations per batch of draws (fixed, so a seed gives the same draws on any machine
and for any number of threads)."""

ZERO_EIGEN = 1e-12
"""Eigenvalues of Z'P0Z below this share of the largest are treated as 0."""

TIE_EIGEN = 1e-10
"""Eigenvalues within this share of the largest of each other are one (tied) value."""


def _full_rank_r(X: np.ndarray) -> np.ndarray:
    """R of X = QR (p, p), after checking that X has full column rank."""
    r = np.linalg.qr(X, mode="r")
    norms = np.linalg.norm(X, axis=0)
    if X.shape[0] < X.shape[1] or np.any(np.abs(np.diag(r)) <= 1e-10 * norms):
        raise ValueError("X does not have full column rank")
    return r


def spectrum(X, Z=None, *, groups=None, slope=None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, xi): the eigenvalues of Z' P0 Z and of Z'Z, largest first.

    P0 = I - X (X'X)^{-1} X'. Either ``Z`` (n, K) dense, or ``groups`` (n,): the group of
    each row (any labels), for Z = the group indicators times ``slope`` (n,) (ones when
    None: a random intercept; a column x: ``(0 + x | g)``). From the groups, with
    S = diag(sum_{i in j} slope_i^2) = Z'Z and A = Z'X (group sums), Z'P0Z = S - A (X'X)^{-1} A',
    formed as S - B B' with B = A R^{-1}, X = QR; no n x K matrix is built. Eigenvalues
    that rounding leaves slightly below 0 are set to 0. mu has min(n, K) entries.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError("X must be a 2-d array (n, p)")
    n = X.shape[0]
    if (Z is None) == (groups is None):
        raise ValueError("give either Z or groups")
    r = _full_rank_r(X)
    if Z is not None:
        if slope is not None:
            raise ValueError("slope goes with groups, not with a dense Z")
        Z = np.asarray(Z, dtype=float)
        if Z.ndim != 2 or Z.shape[0] != n:
            raise ValueError("Z must be (n, K) with the rows of X")
        q, _ = np.linalg.qr(X)
        mu = np.linalg.svd(Z - q @ (q.T @ Z), compute_uv=False) ** 2
        xi = np.linalg.svd(Z, compute_uv=False) ** 2
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError("groups must be (n,) with the rows of X")
        _, codes = np.unique(groups, return_inverse=True)
        k = int(codes.max()) + 1 if n else 0
        s = np.ones(n) if slope is None else np.asarray(slope, dtype=float)
        if s.shape != (n,):
            raise ValueError("slope must be (n,) with the rows of X")
        xi_diag = np.bincount(codes, weights=s * s, minlength=k)
        a = np.stack([np.bincount(codes, weights=s * X[:, c], minlength=k)
                      for c in range(X.shape[1])], axis=1)
        b = np.linalg.solve(r.T, a.T).T
        mu = np.linalg.eigvalsh(np.diag(xi_diag) - b @ b.T)[::-1]
        xi = np.sort(xi_diag)[::-1]
    mu = np.clip(mu[: min(n, mu.size)], 0.0, None)
    return np.sort(mu)[::-1], np.sort(np.clip(xi, 0.0, None))[::-1]


def lambda_grid(log_grid_lo: float = -10.0, log_grid_hi: float = 8.0,
                gridlength: int = 200) -> np.ndarray:
    """RLRsim's lambda grid: 0, then ``gridlength - 1`` points exp(t) with t equally spaced
    from ``log_grid_lo`` to ``log_grid_hi``."""
    if gridlength < 2 or not log_grid_lo < log_grid_hi:
        raise ValueError("need gridlength >= 2 and log_grid_lo < log_grid_hi")
    return np.concatenate(([0.0], np.exp(np.linspace(log_grid_lo, log_grid_hi,
                                                     int(gridlength) - 1))))


def _ties(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of the sorted (descending) positive ``mu`` and their multiplicities:
    runs whose neighbours differ by at most TIE_EIGEN max(mu) become their mean."""
    if mu.size == 0:
        return mu, np.zeros(0, dtype=np.int64)
    cut = np.flatnonzero(np.abs(np.diff(mu)) > TIE_EIGEN * mu[0]) + 1
    runs = np.split(mu, cut)
    return (np.array([run.mean() for run in runs]),
            np.array([run.size for run in runs], dtype=np.int64))


def _chunk_seeds(rng, n_chunks: int) -> list[np.random.SeedSequence]:
    """One child SeedSequence per batch of draws from ``rng`` (a Generator, SeedSequence,
    int or None)."""
    if isinstance(rng, np.random.Generator):
        root = np.random.SeedSequence(int(rng.integers(0, 2**63)))
    elif isinstance(rng, np.random.SeedSequence):
        root = rng
    elif rng is None or isinstance(rng, int | np.integer):
        root = np.random.SeedSequence(rng)
    else:
        raise ValueError(f"rng must be a numpy Generator, a SeedSequence, an int seed or None, "
                         f"got {type(rng).__name__}")
    return root.spawn(n_chunks)


@njit(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc"})
def _first_grid_maximum(chi, chi_rest, f_num, f_den, penalty, n0, out):
    """out[i] = the first local maximum along the grid of
    n0 log(1 + N_g / D_g) - penalty[g], N_g = sum_s f_num[g, s] chi[i, s],
    D_g = sum_s f_den[g, s] chi[i, s] + chi_rest[i], followed up from g = 0 (value 0)
    while it does not decrease (RLRsim's RLRsimCpp loop; the sums reassociated, so the
    compiler vectorises them)."""
    nsim, k = chi.shape
    for i in range(nsim):
        row = chi[i]
        best = 0.0
        for g in range(1, penalty.shape[0]):
            fn = f_num[g]
            fd = f_den[g]
            num = 0.0
            den = 0.0
            for s in range(k):
                num += fn[s] * row[s]
                den += fd[s] * row[s]
            den += chi_rest[i]
            value = n0 * math.log1p(num / den) - penalty[g]
            if value >= best:
                best = value
            else:
                break
        out[i] = best


def null_sample(X, Z=None, *, groups=None, slope=None, reml: bool, nsim: int = 10000,
                rng, q: int = 0, log_grid_lo: float = -10.0, log_grid_hi: float = 8.0,
                gridlength: int = 200, n_jobs: int = 1) -> np.ndarray:
    """``nsim`` draws from the null distribution of the RLRT (``reml=True``) or the LRT.

    The design is ``X`` (n, p) and ``Z`` (n, K), or ``groups`` and ``slope`` as in
    :func:`spectrum`. Each draw is (module docstring) the first grid maximum over lambda of
    (n - p) log(1 + N/D) - sum_s log(1 + lambda mu_s) (RLRT), or of
    n log(1 + N/D) - sum_s log(1 + lambda xi_s) plus n log(1 + chi2_q / sum_{s<=n-p} w_s^2)
    (LRT; ``q`` fixed effects also tested, 0 when only the variance is; REML needs q = 0).
    ``rng``: a numpy Generator, SeedSequence or int seed (None: fresh entropy). Batch i of
    CHUNK simulations draws from the i-th child of ``SeedSequence(rng)``; ``n_jobs``
    threads work on the batches (numpy's draws and the compiled loop release the GIL), and
    the sample is the same for any ``n_jobs``.

    Six balanced groups of 5, intercept only: the RLRT is 0 with probability
    P(F(5, 24) <= 1) = 0.561.

    >>> import numpy as np
    >>> groups = np.repeat(np.arange(6), 5)
    >>> sample = null_sample(np.ones((30, 1)), groups=groups, reml=True, nsim=20000, rng=1)
    >>> bool(abs(np.mean(sample == 0) - 0.561) < 0.015)
    True
    """
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    nsim, q, n_jobs = int(nsim), int(q), int(n_jobs)
    if nsim < 1:
        raise ValueError("nsim must be at least 1")
    if n_jobs < 1:
        raise ValueError("n_jobs must be at least 1")
    if q < 0 or (reml and q):
        raise ValueError("q must be >= 0, and 0 for the RLRT (REML compares the same "
                         "fixed effects)")
    mu, xi = spectrum(X, Z, groups=groups, slope=slope)
    if mu.size == 0 or mu[0] <= ZERO_EIGEN * xi[0]:
        raise ValueError("Z' P0 Z is 0: the random effect is not identified beside X")
    mu = mu[mu > ZERO_EIGEN * mu[0]]
    if mu.size > n - p:
        raise ValueError("Z' P0 Z has more positive eigenvalues than n - p")
    scale = mu[0] if reml else xi[0]
    mu = mu / scale
    xi = mu if reml else xi / scale
    values, mult = _ties(mu)
    rest_df = (n - p) - int(mult.sum())
    lam = lambda_grid(log_grid_lo, log_grid_hi, gridlength)
    lam_mu = lam[:, None] * values[None, :]
    f_den = 1.0 / (1.0 + lam_mu)
    f_num = lam_mu * f_den
    penalty = np.log1p(lam[:, None] * xi[None, :]).sum(axis=1)
    n0 = float(n - p if reml else n)
    seeds = _chunk_seeds(rng, -(-nsim // CHUNK))
    starts = range(0, nsim, CHUNK)
    out = np.empty(nsim)

    def run(start: int, seed: np.random.SeedSequence) -> None:
        gen = np.random.default_rng(seed)
        size = min(CHUNK, nsim - start)
        if np.all(mult == 1):
            chi = np.square(gen.standard_normal((size, values.size)))
        else:
            chi = gen.chisquare(mult.astype(float), size=(size, values.size))
        chi_rest = gen.chisquare(rest_df, size) if rest_df > 0 else np.zeros(size)
        part = out[start:start + size]
        _first_grid_maximum(chi, chi_rest, f_num, f_den, penalty, n0, part)
        if not reml and q > 0:
            part += n * np.log1p(gen.chisquare(q, size) / (chi.sum(axis=1) + chi_rest))

    if n_jobs == 1 or len(seeds) == 1:
        for start, seed in zip(starts, seeds, strict=True):
            run(start, seed)
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(run, starts, seeds))
    return out


def p_value(statistic: float, sample) -> float:
    """The Monte Carlo p-value mean(sample >= statistic): 1 for a statistic <= 0, NaN for
    a NaN statistic.

    RLRsim computes mean(sample > statistic): the same for a positive statistic (the
    sample has no atom there), but ``exactLRT`` then gives P(sample > 0) < 1 for a
    statistic of 0 (``exactRLRT`` returns 1 without simulating). A statistic of an
    alternative fit at the boundary should be passed as 0: its rounding residue (RLRsim
    reports 5.7e-10 for a singular HSB-sized fit) would give P(sample > 0), not 1."""
    sample = np.asarray(sample, dtype=float)
    if sample.size == 0:
        raise ValueError("the sample is empty")
    if math.isnan(statistic):
        return float("nan")
    return float(np.mean(sample >= statistic))


def ols_deviance(y, X, *, reml: bool) -> float:
    """-2 log L of the model without the random effect (y = X beta + e) at its optimum.

    ML: n log(2 pi RSS / n) + n. REML (lme4's REML criterion at theta = 0):
    (n - p) log(2 pi RSS / (n - p)) + (n - p) + log det(X'X). RSS = |y - X beta-hat|^2.
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    r = _full_rank_r(X)
    q, _ = np.linalg.qr(X)
    resid = y - q @ (q.T @ y)
    rss = float(resid @ resid)
    if not reml:
        return n * math.log(2.0 * math.pi * rss / n) + n
    m = n - p
    logdet = 2.0 * float(np.sum(np.log(np.abs(np.diag(r)))))
    return m * math.log(2.0 * math.pi * rss / m) + m + logdet
