"""What a leader knows about each follower's log (etcd calls it Progress).

State machine per follower (only the leader keeps these):

    PROBE      ── append accepted ─────────────▶ REPLICATE
    PROBE      ── needs compacted entries ─────▶ SNAPSHOT
    REPLICATE  ── reject / stall ──────────────▶ PROBE     (stall: a heartbeat round without progress)
    any        ── follower reports lost data ──▶ PROBE
    SNAPSHOT   ── snapshot acked or timed out ─▶ PROBE

PROBE sends one append at a time and waits (or a heartbeat reply) before the next, to find the
match point. REPLICATE pipelines up to ``max_inflight`` appends, advancing ``next`` optimistically.
Invariant: match < next.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class ProgressState(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    #: PROBE: an append is out and unanswered
    probe_sent: bool = False
    #: REPLICATE: last index of every append in flight, oldest first
    inflight: deque[int] = field(default_factory=deque)
    #: heard from since the last CheckQuorum round
    recent_active: bool = False
    #: highest read round (Heartbeat.seq) this follower acknowledged in the current term
    acked_seq: int = 0
    #: SNAPSHOT: index of the snapshot sent, and ticks spent waiting for it
    snapshot_index: int = 0
    snapshot_ticks: int = 0
    #: match seen at the previous heartbeat reply: no movement over a heartbeat means a stall
    match_at_last_heartbeat: int = -1
    #: heartbeat round (Heartbeat.seq) current when match last moved; only replies to later
    #: heartbeats may report lost data
    match_round: int = 0

    def check(self) -> None:
        assert self.match < self.next, (
            f"a follower's next index lies beyond its match (everything up to match is acknowledged, "
            f"next is the first entry not yet sent): match {self.match}, next {self.next}"
        )

    def become_probe(self) -> None:
        # From SNAPSHOT, resume just after the snapshot if it got there; else after match.
        after = self.snapshot_index if self.state == ProgressState.SNAPSHOT else 0
        self.next = max(self.match, after) + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.snapshot_index = 0
        self.snapshot_ticks = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_ticks = 0
        self.inflight.clear()
        self.probe_sent = False

    def update_match(self, index: int) -> bool:
        """An append up to ``index`` was accepted. Never moves match backwards (stale replies)."""
        moved = index > self.match
        if moved:
            self.match = index
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        self.probe_sent = False
        return moved

    def paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight
