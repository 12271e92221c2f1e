"""A node's durable storage: the data dir (lock, meta), log segments, hard state and snapshots.

Every acknowledgement the node gives rests on what this package fsyncs; blocking work runs off the
event loop. May import: ``raftstate.raft``, ``raftstate.node.errors`` and itself (the state machine
reaches it only as bytes).
"""
