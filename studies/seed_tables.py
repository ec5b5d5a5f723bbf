"""The `seed_tables` study from the command line: `python studies/seed_tables.py [--quick]`.

The study itself is `mlmsim/studies/seed_tables.py`; this script is `mlmsim study run seed_tables`.
"""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "run", "seed_tables", *sys.argv[1:]]))
