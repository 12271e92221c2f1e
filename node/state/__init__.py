"""The replicated state machine: keys, counters, TTLs, locks and sessions, and the command schema
carried in the Raft log.

Pure like raftstate.raft: no I/O, no clock reads, no asyncio. Every decision depends only on the
log (time comes from the leader-stamped ``Entry.time_ms``), so replicas applying the same entries
reach byte-identical state.

May import: itself, ``raftstate.node.errors`` and ``raftstate.client.protocol``.
"""
