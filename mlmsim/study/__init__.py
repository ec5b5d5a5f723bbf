"""The Monte Carlo machinery: declarative studies, their runner, measures and figures.

A study is data (conditions), a ``generate(condition, rng)`` callable, methods and true
values (:class:`Study`); :meth:`Study.run` owns seeds, parallelism, checkpoints, resume
and error accounting; :func:`summarise` turns the tidy records into performance measures
with Monte Carlo SEs; :func:`plot_measure` draws them.
"""

from __future__ import annotations

from mlmsim.study.identity import DefinitionError
from mlmsim.study.measures import FIT_PARAMETER, MEASURES, summarise, summarize, summary_table
from mlmsim.study.plots import plot_measure
from mlmsim.study.runner import (
    RECORD_COLUMNS,
    Condition,
    Estimates,
    IncompleteStudyWarning,
    ReplicateCount,
    Study,
    StudyResult,
    load_study,
)
from mlmsim.study.seeds import replicate_rng, replicate_seed
from mlmsim.study.storage import CorruptChunkWarning, StudyDirectoryError

__all__ = [
    "FIT_PARAMETER",
    "MEASURES",
    "RECORD_COLUMNS",
    "Condition",
    "CorruptChunkWarning",
    "DefinitionError",
    "Estimates",
    "IncompleteStudyWarning",
    "ReplicateCount",
    "Study",
    "StudyDirectoryError",
    "StudyResult",
    "load_study",
    "plot_measure",
    "replicate_rng",
    "replicate_seed",
    "summarise",
    "summarize",
    "summary_table",
]
