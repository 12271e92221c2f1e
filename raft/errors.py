"""Errors raised by the Raft core to its driver.

    RaftError
    ├── NotLeader                      this node cannot take the request; carries the leader it knows
    ├── LeadershipTransferInProgress   the leader is handing over; retry on the new leader
    └── ConfChangeInProgress           a membership change refused: another is not committed yet,
                                       no entry of this term committed yet, or the change is invalid

All are *local* refusals: nothing was appended, so the caller may retry elsewhere safely.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error the core raises."""


class NotLeader(RaftError):
    def __init__(self, node_id: str, leader_id: str | None) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        where = f"the leader is {leader_id}" if leader_id else "no leader is known yet"
        super().__init__(f"node {node_id} is not the leader; {where}: retry there")


class LeadershipTransferInProgress(RaftError):
    def __init__(self, node_id: str, target: str) -> None:
        self.node_id = node_id
        self.target = target
        super().__init__(
            f"node {node_id} is transferring leadership to {target}; retry on the new leader shortly"
        )


class ConfChangeInProgress(RaftError):
    def __init__(self, node_id: str, reason: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id} refused a membership change: {reason}")
