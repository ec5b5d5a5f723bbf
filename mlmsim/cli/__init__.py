"""The ``mlmsim`` command, a thin layer over the public API: one module per task
(``fit``, ``spec`` for ``simulate`` and ``spec``, ``study``, ``power``), what they share
(``common``) and the parser with ``main`` (``app``)."""

from __future__ import annotations

from mlmsim.cli.app import build_parser, main
from mlmsim.cli.common import EXIT_BUG, EXIT_ERROR, CLIError

__all__ = ["main", "build_parser", "CLIError", "EXIT_ERROR", "EXIT_BUG"]
