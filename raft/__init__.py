"""raftstate.raft — the Raft consensus core as a pure, deterministic state machine.

It does no I/O: no clock reads, no sleeping, no sockets or files, no global randomness.
The driver (``raftstate.node``, or the simulator in ``raftstate.node.sim``) feeds it ticks,
messages and proposals, then consumes a :class:`Ready` batch in the order *persist → send →
apply* and acknowledges it with :meth:`RaftNode.advance`.
"""

from raftstate.raft.core import RaftNode
from raftstate.raft.errors import (
    ConfChangeInProgress,
    LeadershipTransferInProgress,
    NotLeader,
    RaftError,
)
from raftstate.raft.log import RaftLog
from raftstate.raft.messages import (
    AppendEntries,
    AppendEntriesResp,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    Membership,
    Message,
    RequestVote,
    RequestVoteResp,
    SnapshotMeta,
    TimeoutNow,
    decode_message,
    encode_message,
)
from raftstate.raft.ready import Outbound, PersistedState, ReadState, Ready, Role, SoftState
from raftstate.raft.settings import RaftSettings

__all__ = [
    "AppendEntries",
    "AppendEntriesResp",
    "ConfChange",
    "ConfChangeInProgress",
    "ConfChangeOp",
    "Entry",
    "EntryKind",
    "HardState",
    "Heartbeat",
    "HeartbeatResp",
    "InstallSnapshot",
    "InstallSnapshotResp",
    "LeadershipTransferInProgress",
    "Membership",
    "Message",
    "NotLeader",
    "Outbound",
    "PersistedState",
    "RaftError",
    "RaftLog",
    "RaftNode",
    "RaftSettings",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteResp",
    "Role",
    "SnapshotMeta",
    "SoftState",
    "TimeoutNow",
    "decode_message",
    "encode_message",
]
