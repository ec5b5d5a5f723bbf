"""The `bias` study from the command line: `python studies/bias.py [--quick] [--jobs K]`.

The study itself is `mlmsim/studies/bias.py`; this script is `mlmsim study run bias`.
"""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "run", "bias", *sys.argv[1:]]))
