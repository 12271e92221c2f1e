"""The node's clocks and loop: the wall clock, cluster time (leader-stamped), request deadlines,
the expiry sweeper, the event loop choice and log filters.

May import: ``raftstate.raft``, the hub and ``raftstate.node.state``.
"""
