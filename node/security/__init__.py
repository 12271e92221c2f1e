"""Authentication and authorization of clients (tokens, roles), TLS contexts, the security section
of cluster.yaml, and the credentials an operator command carries to a node.

May import: the hub (config, metrics, errors, driver), ``raftstate.client``'s public modules,
``api`` (answering a refusal, and the HTTP guard it wires) and ``peers`` (the peer proof).
"""
