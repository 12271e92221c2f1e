"""Node to node: the peer transport and its wire frames, the peer proof, membership rules, joining
a running cluster, bootstrap records and what each peer was last heard from.

May import: ``raftstate.raft``, ``raftstate.client.protocol``, the hub (config, metrics, errors),
``storage`` (bootstrap and peer-memory files), ``security`` (credentials) and ``ops`` (join calls a
member's admin route as an operator would) — never ``api`` or ``chaos``.
"""
