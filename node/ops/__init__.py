"""What an operator runs: membership and snapshot commands and their HTTP calls, backups
(file format, state payload, restore), a status fetcher, and a local cluster of real node
processes (used by ``raftstate chaos``, the scripts and the tests).

May import: everything in raftstate.node except ``chaos``; the public client.
"""
