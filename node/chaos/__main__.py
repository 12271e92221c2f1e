"""``python -m raftstate.node.chaos``: the same as ``raftstate chaos`` (node/chaos/cli.py)."""

import sys

from raftstate.node.chaos.cli import main

sys.exit(main())
