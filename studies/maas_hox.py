"""The `maas_hox` study from the command line: `python studies/maas_hox.py [--quick] [--jobs K]`.

The study itself is `mlmsim/studies/maas_hox.py`; this script is `mlmsim study run maas_hox`.
"""

import sys

from mlmsim.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "run", "maas_hox", *sys.argv[1:]]))
