"""The node's clocks and loop: the wall clock, cluster time (leader-stamped), request deadlines,
the expiry sweeper, the event loop choice and log filters.

May import: ``raftstate.raft``, the driver, ``raftstate.node.state`` and ``raftstate.node.errors``.
"""
