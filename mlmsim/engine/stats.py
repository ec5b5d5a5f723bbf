"""Per-group sufficient statistics of a two-level linear mixed model.

One pass over the data gives everything the deviance needs, for any theta:

    A_j = Z_j'Z_j (q x q),   B_j = Z_j'X_j (q x p),   c_j = Z_j'y_j (q,)
    and the totals X'X (p x p), X'y (p,), y'y, N, and n_j.

Arrays may carry leading batch dimensions (replicates): A (..., J, q, q),
B (..., J, q, p), c (..., J, q), XtX (..., p, p), Xty (..., p), yty (...,).
Groups with n_j = 0 (padding, so that replicates with different numbers of
groups stack) contribute nothing: M_j = I and log|M_j| = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlmsim.engine import sums
from mlmsim.model.terms import identity_terms

__all__ = ["GroupStats", "Centering", "group_stats", "centred_group_stats",
           "stack_stats", "residual_check", "flat_arrays", "kernel_array"]


@dataclass(frozen=True)
class GroupStats:
    """Sufficient statistics; see the module docstring for the formulas and shapes."""

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: np.ndarray
    n: np.ndarray
    N: np.ndarray

    @property
    def q(self) -> int:
        return int(self.A.shape[-1])

    @property
    def p(self) -> int:
        return int(self.B.shape[-1])

    def select(self, idx: np.ndarray | None) -> GroupStats:
        """Replicates ``idx`` of batched statistics; None adds a batch axis of 1."""
        if idx is None:
            return GroupStats(*(np.asarray(getattr(self, f))[None]
                                for f in GroupStats.__dataclass_fields__))
        if idx.size == self.A.shape[0] and np.array_equal(idx, np.arange(idx.size)):
            return self
        return GroupStats(*(np.asarray(getattr(self, f))[idx]
                            for f in GroupStats.__dataclass_fields__))


def kernel_array(a, batch: tuple[int, ...], tail: tuple[int, ...],
                 dtype=np.float64) -> np.ndarray:
    """``a`` broadcast to ``batch + tail`` and flattened to (R,) + tail (R = prod(batch)), as
    the compiled kernels take it (:func:`_laid_out`). No copy when ``a`` is already so."""
    a = np.asarray(a)
    shape = (*batch, *tail)
    flat = (math.prod(batch), *tail)
    if a.shape != shape:
        a = np.broadcast_to(a, shape)
    return _laid_out(a.reshape(flat), dtype)


def flat_arrays(stats: GroupStats, batch: tuple[int, ...] | None = None) -> tuple:
    """A, B, c, XtX, Xty, yty, N (float) and n (int64) broadcast to the batch shape
    ``batch`` (default: the statistics' own) and flattened to one leading axis R, as
    :func:`kernel_array` lays them out for the compiled kernels."""
    batch = np.shape(stats.yty) if batch is None else tuple(batch)

    def flat(a, tail: int, dtype=np.float64) -> np.ndarray:
        a = np.asarray(a)
        return kernel_array(a, batch, a.shape[a.ndim - tail:], dtype)

    return (flat(stats.A, 3), flat(stats.B, 3), flat(stats.c, 2), flat(stats.XtX, 2),
            flat(stats.Xty, 1), flat(stats.yty, 0), flat(stats.N, 0), flat(stats.n, 1, np.int64))


@dataclass(frozen=True)
class Centering:
    """A shift of y and of X's non-intercept columns by their means, for numerical accuracy.

    With an intercept column, X = X_c + 1 m' (m = column means, 0 for the intercept) and
    y = y_c + ybar span the same models: the deviance, REML criterion (|L| = 1), T,
    sigma^2 and the EBLUPs are unchanged, and the fixed effects map back exactly as
    gamma = L gamma_c + ybar e_0, vcov = L vcov_c L', with L = I except row 0:
    L[0, k] = -m_k. The sums of squares behind the deviance then carry no large
    means (a response or covariate with mean 1e3 residual SDs would cost ~6 digits).
    Without an all-ones column nothing is shifted (L = I). Arrays may carry leading
    replicate axes: L (..., p, p), offset (..., p).
    """

    L: np.ndarray
    offset: np.ndarray

    @classmethod
    def identity(cls, p: int) -> Centering:
        return cls(np.eye(p), np.zeros(p))

    @classmethod
    def of_shifts(cls, ybar: np.ndarray, m: np.ndarray, i0: np.ndarray) -> Centering:
        """The map for shifts ybar (...,) and m (..., p) about the intercept column i0
        (...,) (-1: none, no shift), as :func:`centred_group_stats` finds them."""
        p = m.shape[-1]
        batch = m.shape[:-1]
        mf, yf, kf = m.reshape(-1, p), np.reshape(ybar, -1), np.reshape(i0, -1)
        L = np.tile(np.eye(p), (mf.shape[0], 1, 1))
        offset = np.zeros(mf.shape)
        rr = np.flatnonzero(kf >= 0)
        k = kf[rr]
        L[rr, k, :] -= mf[rr]
        L[rr, k, k] = 1.0
        offset[rr, k] = yf[rr]
        return cls(L.reshape(batch + (p, p)), offset.reshape(batch + (p,)))

    def beta(self, beta_c: np.ndarray) -> np.ndarray:
        return (self.L @ beta_c[..., None])[..., 0] + self.offset

    def cov(self, cov_c: np.ndarray) -> np.ndarray:
        """L C L' for C (..., p, p)."""
        return self.L @ cov_c @ np.swapaxes(self.L, -1, -2)

    def select(self, idx: np.ndarray) -> Centering:
        """Replicates ``idx`` of a batched map."""
        return Centering(self.L[idx], self.offset[idx])


def group_stats(
    y, X, Z, codes: np.ndarray, J: int, *,
    fixed_terms: np.ndarray | None = None, random_terms: np.ndarray | None = None,
) -> GroupStats:
    """Accumulate A_j, B_j, c_j and the totals from one data set or a stack of them.

    y (..., N), X (..., N, p), Z (..., N, q), with leading replicate dimensions
    allowed (X and Z may also be shared, without them); or R data sets as sequences of
    arrays y[r] (N,), X[r] (N, p), Z[r] (N, q) (no stacking copy). codes (N,) integers
    in 0..J-1, shared by all, in any order. One compiled pass per data set
    (:func:`mlmsim.engine.sums.group_sums_one`): about N (q + p + 1)(q + p + 2) / 2
    multiply-adds.

    With ``fixed_terms`` (p, s) and ``random_terms`` (q, s), X (..., N, kx) and Z
    (..., N, kz) are variables, and the design columns are their products: column t of
    the fixed design is prod_f X[..., f] over the indices f >= 0 in row t of
    ``fixed_terms`` (-1 pads; a row of -1 alone is the intercept). X and Z may be one
    array. The design matrices are then never formed.
    """
    return _sums(y, X, Z, codes, J, fixed_terms, random_terms, False)[0]


def centred_group_stats(
    y, X, Z, codes: np.ndarray, J: int, *,
    fixed_terms: np.ndarray | None = None, random_terms: np.ndarray | None = None,
) -> tuple[GroupStats, Centering]:
    """:func:`group_stats` of the centred y - ybar and X - 1 m' (see :class:`Centering`;
    per data set, about its intercept column), and the centring's map back."""
    stats, (ybar, m, i0) = _sums(y, X, Z, codes, J, fixed_terms, random_terms, True)
    return stats, Centering.of_shifts(ybar, m, i0)


def _data_sets(a, batch: tuple[int, ...], ndim: int, N: int, what: str) -> list[np.ndarray]:
    """Per data set arrays of shape (N, ...) with ``ndim`` dimensions, laid out for the
    kernels (:func:`_laid_out`), from a stack (batch + shape), one array shared by all,
    or a list/tuple of per-data-set arrays; a ValueError names ``what`` if the shapes do
    not fit."""
    if _per_data_set(a):
        out = [_laid_out(x) for x in a]
    else:
        a = np.asarray(a, dtype=float)
        R = math.prod(batch)
        if a.ndim == ndim:
            out = [_laid_out(a)] * R
        elif a.shape[:a.ndim - ndim] == batch:
            out = list(kernel_array(a, batch, a.shape[a.ndim - ndim:]))
        else:
            raise ValueError(f"{what} has shape {a.shape}; expected {batch} + (N, ...) or one "
                             f"array of {ndim} dimensions shared by all data sets")
    for x in out:
        if x.ndim != ndim or x.shape[0] != N:
            raise ValueError(f"{what} of a data set has shape {x.shape}; the group codes give "
                             f"N = {N} rows" + ("" if ndim == 1 else " (rows x columns)"))
    return out


def _per_data_set(a) -> bool:
    """A list or tuple of arrays, one per data set (not a nested list of numbers)."""
    return isinstance(a, list | tuple) and len(a) > 0 and all(
        isinstance(x, np.ndarray) for x in a)


def _laid_out(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``a`` as the compiled kernels take it: of ``dtype``, C order and writeable (numba
    dispatches slowly on read-only arrays, such as pandas' views); a copy only if not."""
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.require(a, dtype, ["C", "W"])


def _sums(y, X, Z, codes, J, fixed_terms, random_terms, centre):
    codes = np.asarray(codes)
    if codes.ndim != 1 or not (np.issubdtype(codes.dtype, np.integer)
                               or np.array_equal(codes, np.round(codes))):
        raise ValueError("group codes must be a 1-d array of integers")
    codes = codes.astype(np.intp, copy=False)
    N, J = codes.shape[0], int(J)
    if N and (codes.min() < 0 or codes.max() >= J):
        raise ValueError(f"group codes must lie in 0..{J - 1} (J = {J} groups), got "
                         f"{codes.min()}..{codes.max()}")
    batch = (len(y),) if _per_data_set(y) else np.shape(y)[:-1]
    ys = _data_sets(y, batch, 1, N, "y")
    Xs = _data_sets(X, batch, 2, N, "X")
    Zs = Xs if Z is X else _data_sets(Z, batch, 2, N, "Z")
    if not len(ys) == len(Xs) == len(Zs):
        raise ValueError(f"{len(ys)} responses but {len(Xs)} X and {len(Zs)} Z data sets")
    xt = identity_terms(Xs[0].shape[-1]) if fixed_terms is None else fixed_terms
    zt = identity_terms(Zs[0].shape[-1]) if random_terms is None else random_terms
    xt, zt = np.asarray(xt, dtype=np.int64), np.asarray(zt, dtype=np.int64)
    p, q, R = xt.shape[0], zt.shape[0], len(ys)
    n = np.bincount(codes, minlength=J)
    ordered = not (N > 1 and (codes[1:] < codes[:-1]).any())
    # the rows group by group (read in place when already so)
    order = np.empty(0, dtype=np.intp) if ordered else np.argsort(codes, kind="stable")
    starts = np.zeros(J + 1, dtype=np.int64)
    np.cumsum(n, out=starts[1:])
    A, B, c = np.zeros((R, J, q, q)), np.zeros((R, J, q, p)), np.zeros((R, J, q))
    XtX, Xty, m = np.zeros((R, p, p)), np.zeros((R, p)), np.zeros((R, p))
    yty, ybar, i0 = np.zeros(R), np.zeros(R), np.zeros(R, dtype=np.int64)
    W = np.empty((q + p + 1, N))
    for r in range(R):
        yty[r], ybar[r], i0[r] = sums.group_sums_one(
            ys[r], Xs[r], xt, Zs[r], zt, order, ordered, starts, centre, W, A[r], B[r], c[r],
            XtX[r], Xty[r], m[r])
    stats = GroupStats(
        A=A.reshape(batch + A.shape[1:]),
        B=B.reshape(batch + B.shape[1:]),
        c=c.reshape(batch + c.shape[1:]),
        XtX=XtX.reshape(batch + (p, p)),
        Xty=Xty.reshape(batch + (p,)),
        yty=yty.reshape(batch),
        n=np.broadcast_to(n, batch + (J,)).copy(),
        N=np.full(batch, float(N)),
    )
    return stats, (ybar.reshape(batch), m.reshape(batch + (p,)), i0.reshape(batch))


def stack_stats(stats: list[GroupStats]) -> GroupStats:
    """Stack single-data-set statistics along a new replicate axis, padding J.

    Replicates with fewer groups get empty groups (A_j = 0, B_j = 0, c_j = 0,
    n_j = 0), which contribute nothing to the deviance (M_j = I).
    """
    J = max(s.A.shape[-3] for s in stats)

    def pad(a: np.ndarray, axis_len: int) -> np.ndarray:
        extra = J - axis_len
        if extra == 0:
            return a
        widths = [(0, extra)] + [(0, 0)] * (a.ndim - 1)
        return np.pad(a, widths)

    return GroupStats(
        A=np.stack([pad(s.A, s.A.shape[0]) for s in stats]),
        B=np.stack([pad(s.B, s.B.shape[0]) for s in stats]),
        c=np.stack([pad(s.c, s.c.shape[0]) for s in stats]),
        XtX=np.stack([s.XtX for s in stats]),
        Xty=np.stack([s.Xty for s in stats]),
        yty=np.stack([np.asarray(s.yty) for s in stats]),
        n=np.stack([pad(s.n, s.n.shape[0]) for s in stats]),
        N=np.stack([np.asarray(s.N, dtype=float) for s in stats]),
    )


def residual_check(stats: GroupStats) -> np.ndarray:
    """Per replicate, None or a message saying why the model cannot be fitted.

    - as many random effects as observations (N <= J q, lme4's check.nobs.vs.nRE):
      the random effects and the residual variance cannot be told apart;
    - the fixed effects fit y exactly (OLS residual sum of squares y'y - y'X (X'X)^{-1}
      X'y below 1e-12 of y'y: a constant response, say): no residual variance is left,
      sigma^2-hat would be 0 and the deviance -infinity.
    """
    XtX, Xty, yty = stats.XtX, stats.Xty, np.asarray(stats.yty, dtype=float)
    try:
        beta = np.linalg.solve(XtX, Xty[..., None])[..., 0]
    except np.linalg.LinAlgError:  # singular X'X: a least-squares solution
        beta = (np.linalg.pinv(XtX) @ Xty[..., None])[..., 0]
    rss = yty - (beta * Xty).sum(axis=-1)
    exact = rss <= 1e-12 * np.maximum(yty, 1e-300)
    J = np.count_nonzero(stats.n, axis=-1)
    q = stats.q
    N = np.asarray(stats.N)
    too_many = N <= J * q
    out = np.full(yty.shape, None, dtype=object)
    if not (exact.any() or too_many.any()):
        return out
    out[exact] = ("the response is fitted exactly by the fixed effects (e.g. a constant "
                  "response): zero residual variance, nothing to estimate")
    for i in np.flatnonzero(np.ravel(too_many)):
        n_obs, n_groups = int(np.ravel(N)[i]), int(np.ravel(J)[i])
        out.flat[i] = (f"number of observations ({n_obs}) <= number of random effects "
                       f"({n_groups * q} = {n_groups} groups x {q}): the random effects and "
                       "the residual variance cannot be told apart; use fewer random effects "
                       "or more observations per group")
    return out
