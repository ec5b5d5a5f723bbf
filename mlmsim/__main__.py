"""``python -m mlmsim``: the ``mlmsim`` command (see :mod:`mlmsim.cli`)."""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
