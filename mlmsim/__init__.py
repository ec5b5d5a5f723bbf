"""mlmsim: simulation and method studies of two-level linear mixed models.

The data flow, one module (or package) each: a :class:`ModelSpec` (gamma, T,
sigma^2, predictors, groups) -> :func:`simulate` (data sets) -> :func:`fit`
(ML/REML from an lme4 formula: :class:`FitResult`) -> :class:`Study`
(conditions x replicates x methods, seeds, parallel, resumable) ->
:func:`summarise` (performance measures with Monte Carlo SEs) and figures;
:func:`power`, :func:`power_curve` and :func:`sample_size` plan a study.
"""

from __future__ import annotations

from mlmsim import centering, datasets, studies
from mlmsim.centering import (
    CenteredForms,
    Equivalence,
    add_centered,
    centered_forms,
    equivalence,
)
from mlmsim.engine import (
    BatchFit,
    Bootstrap,
    Evaluation,
    FitControl,
    FitResult,
    LRTResult,
    OptSummary,
    ParameterProfile,
    evaluate,
    exact_lrt,
    fit,
    fit_arrays,
    fit_batch,
    lrt,
)
from mlmsim.modelplots import (
    plot_caterpillar,
    plot_group_lines,
    plot_variance_function,
    plot_within_between,
    within_between_slopes,
)
from mlmsim.planning import (
    PowerCurve,
    PowerResult,
    SampleSize,
    power,
    power_curve,
    sample_size,
)
from mlmsim.simulate import SimBatch, simulate, simulate_batch
from mlmsim.spec import (
    Binary,
    Categorical,
    ChiSquare,
    Complement,
    Continuous,
    Discrete,
    GroupCentered,
    GroupMean,
    Indicator,
    Level2Binary,
    Level2Continuous,
    ModelSpec,
    Normal,
    PoissonSizes,
    SizeList,
    StudentT,
    T_from_sd_corr,
    Truth,
    UniformSizes,
    Values,
    tau0_sq_from_icc,
)
from mlmsim.study import (
    FormulaMethod,
    FromSpec,
    Study,
    StudyResult,
    load_study,
    plot_measure,
    summarise,
    summary_table,
)

__version__ = "0.1.0"


def studies_registry():
    """The registry of the method studies (``mlmsim.studies``: ``names()``, ``get(name)``)."""
    return studies


__all__ = [
    "BatchFit", "Binary", "Bootstrap", "ParameterProfile", "exact_lrt", "Evaluation",
    "PowerCurve", "PowerResult", "SampleSize", "power", "power_curve", "sample_size",
    "FitControl", "OptSummary", "evaluate",
    "CenteredForms", "Equivalence", "add_centered", "centered_forms",
    "centering", "equivalence", "Categorical", "ChiSquare", "Complement", "Continuous", "Discrete",
    "FitResult", "FormulaMethod", "FromSpec", "GroupCentered", "GroupMean", "Indicator",
    "LRTResult", "Level2Binary", "Level2Continuous", "ModelSpec", "Normal", "PoissonSizes",
    "SimBatch", "SizeList", "StudentT", "Study", "StudyResult", "T_from_sd_corr", "Truth",
    "UniformSizes", "Values", "__version__", "datasets", "fit", "fit_arrays", "fit_batch",
    "load_study", "lrt", "plot_caterpillar", "plot_group_lines", "plot_measure",
    "plot_variance_function", "plot_within_between", "simulate", "simulate_batch",
    "studies", "studies_registry", "summarise", "summary_table", "tau0_sq_from_icc",
    "within_between_slopes",
]
