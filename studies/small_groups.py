"""The `small_groups` study from the command line: `python studies/small_groups.py [--quick]`.

The study itself is `mlmsim/studies/small_groups.py`; this is `mlmsim study run small_groups`.
"""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "run", "small_groups", *sys.argv[1:]]))
