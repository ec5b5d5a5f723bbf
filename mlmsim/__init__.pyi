"""The public API of mlmsim, for type checkers and editors, and the table from which
``mlmsim/__init__.py`` imports each name on first use."""

from mlmsim import datasets, studies
from mlmsim.analysis import centering
from mlmsim.analysis.centering import (
    CenteredForms,
    Equivalence,
    add_centered,
    centered_forms,
    equivalence,
)
from mlmsim.analysis.modelplots import (
    plot_caterpillar,
    plot_group_lines,
    plot_variance_function,
    plot_within_between,
    within_between_slopes,
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
from mlmsim.generate.covariance import T_from_sd_corr, tau0_sq_from_icc
from mlmsim.generate.distributions import ChiSquare, Discrete, Normal, StudentT
from mlmsim.generate.predictors import (
    Binary,
    Categorical,
    Complement,
    Continuous,
    GroupCentered,
    GroupMean,
    Indicator,
    Level2Binary,
    Level2Continuous,
    Values,
)
from mlmsim.generate.simulate import (
    SimBatch,
    simulate,
    simulate_batch,
)
from mlmsim.generate.sizes import PoissonSizes, SizeList, UniformSizes
from mlmsim.generate.spec import ModelSpec, Truth
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.planning import (
    PowerCurve,
    PowerResult,
    SampleSize,
    power,
    power_curve,
    sample_size,
)
from mlmsim.simstudy import (
    Study,
    StudyResult,
    load_study,
    plot_measure,
    summarise,
    summary_table,
)

__version__: str

__all__ = [
    "BatchFit", "Binary", "Bootstrap", "Categorical", "CenteredForms", "ChiSquare",
    "Complement", "Continuous", "Discrete", "Equivalence", "Evaluation", "FitControl",
    "FitResult", "FormulaMethod", "FromSpec", "GroupCentered", "GroupMean", "Indicator",
    "LRTResult", "Level2Binary", "Level2Continuous", "ModelSpec", "Normal", "OptSummary",
    "ParameterProfile", "PoissonSizes", "PowerCurve", "PowerResult", "SampleSize",
    "SimBatch", "SizeList", "StudentT", "Study", "StudyResult", "T_from_sd_corr", "Truth",
    "UniformSizes", "Values", "__version__", "add_centered", "centered_forms", "centering",
    "datasets", "equivalence", "evaluate", "exact_lrt", "fit", "fit_arrays", "fit_batch",
    "load_study", "lrt", "plot_caterpillar", "plot_group_lines", "plot_measure",
    "plot_variance_function", "plot_within_between", "power", "power_curve", "sample_size",
    "simulate", "simulate_batch", "studies", "summarise",
    "summary_table", "tau0_sq_from_icc", "within_between_slopes",
]
