"""raftstate.node — the server process that drives the Raft core (docs/architecture.md is the map).

The hub (this folder) ties the rooms together; each package says its job and what it may import:

    server.py, driver.py, config.py, metrics.py, cli.py   the hub: one node process, wired up
    test_hooks.py  the TEST-ONLY hooks (slow fsync, clock offset, dial map, injected bugs): read
                   once at start, all off unless a test or chaos run sets them
    errors.py      every node error as one tree (its docstring draws it): one Refusal, local/remote faults
    state/     the replicated state machine and its command schema (pure: no I/O, no clock)
    storage/   the data dir: log segments, hard state, snapshots, fsync
    peers/     node-to-node: transport, wire frames, peer proof, membership, join, bootstrap
    api/       the client-facing HTTP and stream handlers, request schema, codec, admin routes
    security/  tokens and roles, TLS, the credentials operator commands carry
    ops/       operator commands (member, snapshot, transfer), backups, a local cluster runner
    runtime/   clock, cluster time, deadlines, the expiry sweeper, the event loop, log filters
    chaos/     Jepsen-style chaos runs against real processes (``raftstate chaos``)
    sim/       the seeded simulator: a second driver of the pure core, with a simulated network,
               disk and clock (``python -m raftstate.node.sim``); imports only raftstate.raft

Imports point one way: the hub and every package may import ``raftstate.raft`` and the public
modules of ``raftstate.client``; ``state/`` imports only itself, ``raftstate.node.errors`` and
``raftstate.client.protocol`` (tests/test_import_rules.py enforces it).
"""
