"""Authentication and authorization of clients (tokens, roles), TLS contexts, the security section
of cluster.yaml, and the credentials an operator command carries to a node.

May import: the hub (config, metrics, errors) and ``raftstate.client``'s public modules.
"""
