"""raftstate.node — the server process: storage, peer transport, state machine, HTTP API, CLI."""
