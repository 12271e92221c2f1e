"""raftstate.client — the library workers import to talk to a raftstate cluster."""
