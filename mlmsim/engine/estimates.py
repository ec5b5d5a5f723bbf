"""Read estimates, inference and flags off an optimum, for R replicates at once.

At theta-hat (R, k), from one pass of the GLS core (docs/math.md sections 4, 6, 8, 9):

    sigma2 = r2 / N (ML) or r2 / (N - p) (REML)                       (4.3)
    gamma  = XtVX^{-1} XtVy,   vcov = sigma2 XtVX^{-1}                (3.6), (8.1)
    T      = sigma2 Lambda Lambda'
    phi    = (T's distinct elements, sigma2);  H = Hessian of the objective in phi  (6.3)
    Acov   = 2 H^{-1} where H is positive definite (else NaN)         (6.5)

and the flags, each decided on a quantity that does not change with the units of the
data (docs/math.md section 9; the constants in :mod:`mlmsim.engine.tolerances`):
``hessian_pd`` (9.1), the smallest eigenvalue of H's correlation form above
HESSIAN_PD; ``singular`` (9.2), the smallest eigenvalue of T (Z'Z/N) / sigma^2 below
SINGULAR; ``identifiable`` (9.3), the random-effect columns are not dependent within
every group; and lme4's convergence check (9.4), the gradient scaled by the Hessian in
theta below GRAD_CHECK. Used by the single fit (R = 1) and the batch path alike; computed
in one compiled pass over the replicates (:func:`mlmsim.engine.kernels.estimates_many`).
:func:`messages` renders the flags in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mlmsim.engine import inference, kernels, sums
from mlmsim.engine.deviance import ThetaMap
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.optimize import OptResult
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array
from mlmsim.engine.tolerances import DEPENDENT_EIG, GRAD_CHECK, SINGULAR

__all__ = ["Estimates", "estimates", "estimates_and_ranef", "messages", "notes", "Note",
           "boundary_names", "dependent_columns"]


@dataclass(frozen=True)
class Estimates:
    """Batched estimates (leading dimension R); see the module docstring."""

    theta: np.ndarray
    beta: np.ndarray
    vcov: np.ndarray
    sigma2: np.ndarray
    T: np.ndarray
    phi: np.ndarray
    hessian: np.ndarray
    hessian_eigenvalues: np.ndarray
    hessian_pd: np.ndarray
    acov: np.ndarray
    deviance: np.ndarray
    converged: np.ndarray
    grad_ok: np.ndarray
    scaled_grad: np.ndarray
    singular: np.ndarray
    dependent: np.ndarray
    singular_value: np.ndarray
    zscale: np.ndarray
    stop: np.ndarray
    evaluations: np.ndarray

    """``singular_value``: the smallest eigenvalue of T (Z'Z/N) / sigma^2 (9.2);
    ``zscale`` (R, q): diag(Z'Z) / N, the mean square of each random-effect column;
    ``hessian_eigenvalues``: those of H's correlation form D^{-1/2} H D^{-1/2} (9.1);
    ``stop``: the optimiser's :class:`mlmsim.engine.control.StopReason` code;
    ``evaluations``: the deviance evaluations it spent (restarts included)."""

    @property
    def beta_se(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.vcov, axis1=-2, axis2=-1))

    @property
    def phi_se(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.acov, axis1=-2, axis2=-1))

    @property
    def identifiable(self) -> np.ndarray:
        return ~self.dependent.any(axis=-1)


def dependent_columns(stats: GroupStats) -> np.ndarray:
    """(R, q) bool: random-effect columns involved in a dependence holding in every group.

    A group's Z_j has dependent columns when A_j = Z_j'Z_j is singular; if that
    holds in every group with at least q rows (intercept + female + male; a
    random slope on a variable constant within groups), T is not identifiable.
    (docs/math.md (9.3))
    """
    A = stats.A
    n = stats.n
    R, J, q, _ = A.shape
    out = np.zeros((R, q), dtype=bool)
    if q < 2:
        return out
    # screen with the determinant of the correlation-scaled A_j (in [0, 1]); only
    # replicates where every group looks singular need the eigen-decomposition
    cand = sums.dependence_screen(kernel_array(A, (R,), (J, q, q)),
                                     kernel_array(n, (R,), (J,), np.int64))
    if not cand.any():
        return out
    d = np.sqrt(np.maximum(np.einsum("rjii->rji", A), 1e-300))
    C = A / (d[..., :, None] * d[..., None, :])
    big = n >= q
    none_big = ~big.any(axis=-1)
    big[none_big] = (n > 0)[none_big]
    for r in np.flatnonzero(cand):
        w, V = np.linalg.eigh(C[r][big[r]])
        if np.all(w[:, 0] < DEPENDENT_EIG * np.maximum(w[:, -1], 1e-300)):
            out[r] = (np.abs(V[:, :, 0]) > 1e-6).any(axis=0)
    return out


def estimates(stats: GroupStats, tmap: ThetaMap, cs: inference.CovStructure, opt: OptResult,
              reml: bool) -> Estimates:
    """Everything a fit reports about its parameters, for each replicate (batch axis R)."""
    return estimates_and_ranef(stats, tmap, cs, opt, reml, False)[0]


def estimates_and_ranef(stats: GroupStats, tmap: ThetaMap, cs: inference.CovStructure,
                        opt: OptResult, reml: bool, ranef: bool
                        ) -> tuple[Estimates, np.ndarray, np.ndarray]:
    """:func:`estimates`, and with ``ranef`` the EBLUPs U_j = D_j u_j (R, J, q) and
    D_j = Lambda M_j^{-1} Lambda' (R, J, q, q), whose sigma^2 multiple is their conditional
    covariance (docs/math.md (8.2)); computed in one compiled pass
    (:func:`mlmsim.engine.kernels.estimates_many`)."""
    st = Stats(*flat_arrays(stats))
    R, k = st.A.shape[0], tmap.size
    theta = kernel_array(opt.theta, (R,), (k,))
    (beta, vcov, sigma2, T, phi, H, eig, pd, acov, scaled, grad_ok, zscale, smallest, U, V
     ) = kernels.estimates_many(
        theta, st, tmap.rows, tmap.cols, cs.rows, cs.cols, bool(reml),
        kernel_array(opt.grad, (R,), (k,)), kernel_array(opt.hessian, (R,), (k, k)), ranef,
        qtoken(tmap.q))
    singular = ~(smallest >= SINGULAR)  # nan (no fit) counts as singular
    est = Estimates(
        theta=theta, beta=beta, vcov=vcov, sigma2=sigma2, T=T, phi=phi, hessian=H,
        hessian_eigenvalues=eig, hessian_pd=pd, acov=acov, deviance=opt.deviance,
        converged=opt.converged, grad_ok=grad_ok, scaled_grad=scaled, singular=singular,
        dependent=dependent_columns(stats), singular_value=smallest,
        zscale=zscale, stop=opt.info[:, 1].copy(), evaluations=opt.info[:, 2].copy(),
    )
    return est, U, V


def boundary_names(est: Estimates, r: int, random_names) -> list[str]:
    """Random effects whose variance is at the boundary: T_aa (Z'Z)_aa / (N sigma^2) below
    SINGULAR (docs/math.md (9.2) for one component); "a combination of ..." when T-hat is
    singular with every variance positive (a correlation of +-1)."""
    T, s2, zz = est.T[r], est.sigma2[r], est.zscale[r]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.diagonal(T) * zz / s2
    at = [random_names[a] for a in np.flatnonzero(~(rel >= SINGULAR))]
    if est.singular[r] and not at:
        at = ["a combination of " + ", ".join(random_names)]
    return at


_STOPPED = {
    3: "the iteration limit was reached before the convergence criterion held",
    4: "no step lowered the deviance although the Newton decrement was not small",
    5: "the deviance is not finite at the start",
}


class Note(NamedTuple):
    """A plain-language note on a fit, and whether it deserves a warning (as lme4 warns of
    non-convergence and prints the rest)."""

    text: str
    warn: bool = False


def notes(est: Estimates, r: int, random_names, dropped_fixed=(), n_dropped: int = 0,
          bounded: bool = True) -> list[Note]:
    """Notes on replicate r's fit, rendered from its flags, in the spirit of SAS's and
    lme4's messages (``bounded`` False: an unbounded fit, :mod:`mlmsim.engine.unbounded`)."""
    out = [Note(m) for m in _flag_texts(est, r, random_names, dropped_fixed, n_dropped,
                                        bounded)]
    k = 0
    if not est.converged[r]:
        why = _STOPPED.get(int(est.stop[r]), "the convergence criterion did not hold")
        if bounded:
            out.insert(k, Note(f"The optimiser stopped early: {why}", True))
        else:
            out.insert(k, Note(f"The unbounded (NOBOUND) optimisation did not converge: {why}; "
                               "the likelihood may have no maximum with every V_j positive "
                               "definite (it keeps rising towards a singular V_j). The last "
                               "point is reported", True))
        k += 1
    if not est.grad_ok[r] and (bounded or est.converged[r]):
        out.insert(k, Note(f"Model failed to converge with max|grad| = "
                           f"{np.abs(est.scaled_grad[r]).max():.3g} (gradient scaled by the "
                           f"Hessian in theta; tolerance {GRAD_CHECK})", True))
    return out


def messages(est: Estimates, r: int, random_names, dropped_fixed=(), n_dropped: int = 0,
             bounded: bool = True) -> list[str]:
    """The texts of :func:`notes`."""
    return [n.text for n in notes(est, r, random_names, dropped_fixed, n_dropped, bounded)]


def _flag_texts(est: Estimates, r: int, random_names, dropped_fixed, n_dropped,
                bounded: bool = True) -> list[str]:
    """The notes that are printed, not warned: identifiability, the Hessian, the boundary,
    dropped columns and rows."""
    out = []
    dep = [random_names[i] for i in np.flatnonzero(est.dependent[r])]
    if dep:
        out.append("Random-effect columns " + ", ".join(dep) + " are linearly dependent "
                   "within every group: T is not identifiable from these data")
    if not est.hessian_pd[r]:
        eig = est.hessian_eigenvalues[r]
        lead = ("Convergence criteria met but final" if est.converged[r] else "The final")
        what = ("has a diagonal element <= 0 or is not finite" if np.isnan(eig[0]) else
                f"in correlation form has eigenvalues {eig[0]:.3g} .. {eig[-1]:.3g}")
        out.append(f"{lead} Hessian is not positive definite ({what}); covariance-parameter "
                   "SEs and Satterthwaite df are not available")
    if est.singular[r] and not bounded:
        neg = [random_names[a] for a in np.flatnonzero(np.diagonal(est.T[r]) < 0)]
        what = ("a negative variance at: " + ", ".join(neg) if neg else
                "a zero variance, or T-hat not positive semi-definite")
        out.append(f"Estimated G matrix is not positive definite (NOBOUND): {what}")
    elif est.singular[r]:
        at = boundary_names(est, r, random_names)
        out.append("boundary (singular) fit: estimated T is singular (G matrix not positive "
                   "definite); a zero variance or a correlation of +-1 at: " + ", ".join(at))
    if dropped_fixed:
        out.append("fixed-effect model matrix is rank deficient so dropping "
                   f"{len(dropped_fixed)} column(s): " + ", ".join(dropped_fixed))
    if n_dropped:
        out.append(f"{n_dropped} observation(s) not used (missing or non-finite values)")
    return out
