"""The `centering` study from the command line: `python studies/centering.py [--quick] [--jobs K]`.

The study itself is `mlmsim/studies/centering.py`; this script is `mlmsim study run centering`.
"""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "run", "centering", *sys.argv[1:]]))
