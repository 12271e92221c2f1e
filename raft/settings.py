"""Tunables of the core, in ticks (the driver decides how long a tick is)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftSettings:
    #: a leader sends heartbeats every this many ticks
    heartbeat_ticks: int = 1
    #: base election timeout; each follower waits a random number of ticks in [e, 2e)
    election_ticks: int = 10
    #: most entries in one AppendEntries
    max_entries_per_msg: int = 256
    #: most bytes of entry data in one AppendEntries (a single larger entry still goes alone)
    max_bytes_per_msg: int = 1 << 20
    #: most AppendEntries in flight to one follower in replicate state (pipelining window)
    max_inflight_msgs: int = 64
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1:
            raise ValueError(f"heartbeat_ticks must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(
                f"election_ticks ({self.election_ticks}) must exceed heartbeat_ticks ({self.heartbeat_ticks})"
            )
        if self.max_entries_per_msg < 1 or self.max_inflight_msgs < 1 or self.max_bytes_per_msg < 1:
            raise ValueError("max_entries_per_msg, max_bytes_per_msg and max_inflight_msgs must be >= 1")
