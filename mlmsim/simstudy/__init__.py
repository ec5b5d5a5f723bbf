"""The generic Monte Carlo machinery: studies, their runner, measures and figures.

It knows nothing of mixed models (:mod:`mlmsim.methods` is where they meet it). A study
is data (conditions), a ``generate(condition, rng)`` callable, methods and true values
(:class:`Study`); :meth:`Study.run` owns seeds, parallelism, checkpoints, resume and
error accounting; :func:`summarise` turns the tidy records into performance measures
with Monte Carlo SEs; :func:`plot_measure` draws them. One module per idea, in the order
of the flow:

- ``protocols``: what the runner asks of a generator and a method;
- ``conditions``: the table of conditions and its rows;
- ``records``: the record columns and what a method's result becomes;
- ``seeds``: one stream per replicate, from the root seed;
- ``identity``: the study's definition hash (what may resume what);
- ``execution``: one chunk of replicates in a worker, chunks across workers;
- ``storage``: the study directory (manifest, chunk files, lock);
- ``study``: :class:`Study`, which ties them together;
- ``results``: records read back (:class:`StudyResult`, :func:`load_study`);
- ``measures``: performance measures with Monte Carlo SEs; ``intervals`` and ``plots``.
"""

from __future__ import annotations

from mlmsim.simstudy.conditions import Condition
from mlmsim.simstudy.identity import DefinitionError
from mlmsim.simstudy.measures import FIT_PARAMETER, MEASURES, summary_table
from mlmsim.simstudy.plots import plot_measure
from mlmsim.simstudy.records import RECORD_COLUMNS, Estimates
from mlmsim.simstudy.results import (
    IncompleteStudyWarning,
    ReplicateCount,
    StudyResult,
    load_study,
    summarise,
    summarize,
)
from mlmsim.simstudy.seeds import replicate_rng, replicate_seed
from mlmsim.simstudy.storage import CorruptChunkWarning, StudyDirectoryError
from mlmsim.simstudy.study import Study

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
