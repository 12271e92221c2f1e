#!/usr/bin/env python3
"""Chaos runs from a checkout: the same as ``raftstate chaos`` (node/chaos/cli.py has the options).

    python scripts/chaos.py --nodes 3 --duration 60 --faults kill,pause,partition,clock,restart-all
    python scripts/chaos.py --seed 17                               replay one run
"""

import sys

from raftstate.node.chaos.cli import main

if __name__ == "__main__":
    sys.exit(main())
