"""A deterministic, seeded, in-process simulator of a raftstate cluster (issue #2).

One ``random.Random(seed)`` drives network delays, loss, faults and the client workload; each
node's core gets its own ``random.Random`` derived from it. A run is a fixed number of *steps*
(events), with the invariants of :mod:`sim.invariants` checked after every step, then a liveness
phase. A failure raises :class:`SimulationFailure` whose message names the invariant, the seed, the
step, the last events, and the command that replays it::

    python scripts/simulate.py --seed S --steps M --mix NAME

Modules: network (delays, loss, the partition in place), statemachine (the KV store), node (one
server), cluster (the event loop: ticks, deliveries, fsync completions, clients), faults (mixes and
the injector), invariants (the named checks), mutants (broken cores the tests must catch), summary
(soak reports). The disk (durable vs in-flight writes), the Ready driver and the partition builders
are the raft test kit's (:mod:`raftstate.raft.testing`), shared with tests/raftnet.py.

It lives in node/, not raft/: like the node's driver it *drives* the pure core, and a driver owns
the seeded ``random.Random`` and the wall clock it reports with — raft/ takes both as inputs.
May import only ``raftstate.raft`` (the core and its test kit) and itself.
"""

from raftstate.node.sim.cluster import Cluster, RunStats, SimConfig, SimulationFailure, run_seed
from raftstate.node.sim.faults import MIXES, Mix

__all__ = ["MIXES", "Cluster", "Mix", "RunStats", "SimConfig", "SimulationFailure", "run_seed"]
