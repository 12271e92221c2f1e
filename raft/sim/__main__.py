"""``python -m raftstate.raft.sim``: the simulator's command (raft/sim/cli.py)."""

import sys

from raftstate.raft.sim.cli import main

sys.exit(main())
