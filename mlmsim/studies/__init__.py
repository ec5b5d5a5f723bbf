"""The method studies of the seed lecture, each one module in the ADEMP frame.

A study module defines ``TITLE`` (one line), ``run(out_dir, options)`` (run
the replicates into ``out_dir/records`` through :class:`mlmsim.Study`, then
report) and ``report(out_dir)`` (summarise the saved records into CSV tables,
PNG figures and ``report.md`` in ``out_dir``; rerunnable without refitting).
``mlmsim study list|run|report`` and the scripts in ``studies/`` call them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["RunOptions", "STUDIES", "names", "key", "get", "write_index"]

STUDIES = {
    "bias": "mlmsim.studies.bias",
    "maas_hox": "mlmsim.studies.maas_hox",
    "hessian": "mlmsim.studies.hessian",
    "centering": "mlmsim.studies.centering",
    "seed_tables": "mlmsim.studies.seed_tables",
    "small_groups": "mlmsim.studies.small_groups",
}
"""The registry: each study's name and the module that defines it (``TITLE``,
``run(out_dir, options)``, ``report(out_dir)``). ``mlmsim study list|run|report`` reads
it; a study of one's own is listed, run and reported once its name and module are added."""


@dataclass(frozen=True)
class RunOptions:
    """How to run a study: ``quick`` is the small version for CI and smoke tests;
    ``reps`` overrides the replicates per condition; the rest go to ``Study.run``."""

    quick: bool = False
    reps: int | None = None
    n_jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    seed: int = 20261125
    progress: bool | None = None

    def run(self, study: Any, out_dir: Path, label: str) -> Any:
        """``study.run`` into ``out_dir`` with these options' workers, backend, scheduler
        and progress, its bar and lines named ``label``."""
        return study.run(out_dir, n_jobs=self.n_jobs, backend=self.backend,
                         scheduler=self.scheduler, progress=self.progress, label=label)

    def run_blocks(self, blocks: dict[str, Any], out_dir: Path, name: str) -> None:
        """:meth:`run` each block of a study (block name -> ``Study``) into
        ``out_dir/records/<block>``, labelled ``name/<block>``."""
        for block, study in blocks.items():
            self.run(study, Path(out_dir) / "records" / block, f"{name}/{block}")


def names() -> list[str]:
    """The registered study names."""
    return list(STUDIES)


def key(name: str) -> str | None:
    """The registered name that ``name`` means ('maas-hox' and 'Maas_Hox' mean
    'maas_hox'), None if none."""
    for candidate in (name, name.replace("-", "_").lower()):
        if candidate in STUDIES:
            return candidate
    return None


def get(name: str) -> ModuleType:
    """The study module called ``name`` (ValueError naming the choices otherwise)."""
    found = key(name)
    if found is None:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[found])


def _first_finding(report: str) -> str:
    """The first bullet under '## Findings', else the first bullet of the report."""
    lines = report.splitlines()
    start = next((i for i, t in enumerate(lines) if t.strip() == "## Findings"), 0)
    for t in lines[start:] + lines[:start]:
        if t.startswith("- "):
            return t[2:].strip()
    return ""


def write_index(results: str | Path = "results") -> Path:
    """Write ``results/README.md``: each study's directory, title and first finding,
    read from its ``report.md`` (regenerated after every run or report)."""
    results = Path(results)
    rows = ["# Results of the method studies", "",
            "Written by `mlmsim study run` / `mlmsim study report` from each study's "
            "`report.md`; the study records (Parquet) stay out of git.", ""]
    for name in names():
        report = results / name / "report.md"
        if not report.exists():
            continue
        text = report.read_text()
        rows.append(f"- [{name}]({name}/report.md): {get(name).TITLE}. "
                    f"{_first_finding(text)}")
    path = results / "README.md"
    path.write_text("\n".join(rows) + "\n")
    return path
