"""What an operator runs: membership and snapshot commands and their HTTP calls, backups
(file format, state payload, restore), a status fetcher, and a local cluster of real node
processes (used by ``raftstate chaos``, the scripts and the tests).

May import: the hub (config, errors), ``state``, ``storage``, ``peers``, ``security``,
``raftstate.raft`` and the public client — never ``api`` (it calls a node's routes over HTTP) or
``chaos``.
"""
