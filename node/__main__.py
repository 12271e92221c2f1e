"""``python -m raftstate.node ...`` is the ``raftstate`` command."""

import sys

from raftstate.node.cli import main

sys.exit(main())
