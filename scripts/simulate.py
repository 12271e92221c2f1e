#!/usr/bin/env python3
"""The simulator from a checkout: the same as ``python -m raftstate.node.sim`` (node/sim/cli.py).

    python scripts/simulate.py --seed 17 --steps 2000 --mix chaos         replay one seed (verbose)
    python scripts/simulate.py --seeds 1000 --steps 5000                   soak every mix, 3 nodes
"""

import sys

from raftstate.node.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
