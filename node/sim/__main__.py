"""``python -m raftstate.node.sim``: the simulator's command (node/sim/cli.py)."""

import sys

from raftstate.node.sim.cli import main

sys.exit(main())
