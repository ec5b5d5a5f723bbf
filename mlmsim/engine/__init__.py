"""The fitting engine: profiled ML/REML from per-group sufficient statistics.

stats (once) -> deviance(theta) (many times) -> optimize -> result (once);
inference holds the covariance-parameter Hessian, SEs and df.
"""

from mlmsim.engine.batch import BatchFit, fit_arrays, fit_batch
from mlmsim.engine.bootstrap import Bootstrap
from mlmsim.engine.control import FitControl, OptSummary, StopReason
from mlmsim.engine.evaluate import Evaluation, evaluate
from mlmsim.engine.fit import fit, fit_design
from mlmsim.engine.likelihood_profile import ParameterProfile
from mlmsim.engine.lrt import LRTResult, exact_lrt, lrt
from mlmsim.engine.result import FitResult

__all__ = ["fit", "fit_design", "fit_batch", "fit_arrays", "BatchFit", "FitResult", "lrt",
           "LRTResult", "exact_lrt", "Bootstrap", "ParameterProfile", "FitControl",
           "OptSummary", "StopReason", "Evaluation", "evaluate"]
