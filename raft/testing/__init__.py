"""The raft test kit: the in-memory pieces every harness of the core shares (pure: no I/O, no
clock, no threads; it imports nothing but :mod:`raftstate.raft`, and the core never imports it).

* :mod:`~raftstate.raft.testing.disk` — :class:`MemDisk` (one node's disk: synced state, snapshots
  by index), :class:`WriteBatch` (one Ready's persist step, tearable), :class:`DiskContractError`.
  Used by node/sim and tests/raftnet.py.
* :mod:`~raftstate.raft.testing.driver` — :class:`ReadyDriver`: persist → send → apply → advance,
  Readys in flight behind an fsync, crashes that lose or tear them. Used by node/sim and
  tests/raftnet.py.
* :mod:`~raftstate.raft.testing.partition` — :class:`Partition` and its builders (``symmetric``,
  ``one_way``, ``isolate``, ``bridge``). Used by node/sim, tests/raftnet.py and tests/driverfarm.py.

Like etcd-io/raft's ``rafttest``, it ships with the core for the harnesses built on it: the seeded
simulator (:mod:`raftstate.node.sim`), the rule-by-rule network of tests/raftnet.py, and the
driver farm of tests/driverfarm.py, which drives the real node driver over the node's own
``MemoryStorage`` and so shares only the partitions.
"""

from raftstate.raft.testing.disk import DiskContractError, MemDisk, WriteBatch, torn_prefix
from raftstate.raft.testing.driver import InFlight, ReadyDriver
from raftstate.raft.testing.partition import Link, Partition, bridge, isolate, one_way, symmetric

__all__ = [
    "DiskContractError",
    "InFlight",
    "Link",
    "MemDisk",
    "Partition",
    "ReadyDriver",
    "WriteBatch",
    "bridge",
    "isolate",
    "one_way",
    "symmetric",
    "torn_prefix",
]
