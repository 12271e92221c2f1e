"""Node to node: the peer transport and its wire frames, the peer proof, membership rules, joining
a running cluster, bootstrap records and what each peer was last heard from.

May import: ``raftstate.raft``, the hub (config, metrics, errors), ``raftstate.node.security``.
"""
