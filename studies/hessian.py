"""The `hessian` study from the command line: `python studies/hessian.py [--quick] [--jobs K]`.

The study itself is `mlmsim/studies/hessian.py`; this script is `mlmsim study run hessian`.
"""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "run", "hessian", *sys.argv[1:]]))
