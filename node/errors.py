"""Every error a node raises, as one tree: refusals answered to a client, and faults kept apart by
whose they are (this node's own files and settings, or another process's answer).

    NodeError                      base of every exception class of the node (not the sim/, bench/ tools)
    │
    ├── Refusal                    a request refused with a wire code: ``code`` (raftstate.client.protocol),
    │                              ``status`` (STATUS_OF[code]), ``message``, ``fields`` (extra body keys).
    │                              ONE type for request validation (api/schema.py, api/codec.py), the
    │                              state machine's apply (state/) and the handlers: raised or returned as
    │                              is, answered as ``{"error": {"code", "message", **fields}}``
    │
    ├── LocalFault                 this node's own config, disk or files are wrong: fix them HERE
    │   ├── ConfigError            (this module; re-exported by config.py) the cluster file or flags
    │   │   │                      cannot be used as written; the message says what to edit
    │   │   └── JoinRefused        (peers/join.py) this node must not start as asked (its data dir,
    │   │                          id or address disagree with the cluster)
    │   ├── StorageError           (storage/errors.py) the data dir; its own drawing there:
    │   │   ├── StorageCorruption      on-disk data failed validation
    │   │   ├── StorageIOError         the OS failed a read/write/fsync now: restart
    │   │   ├── DataDirLocked          another process holds the data dir
    │   │   └── DataDirMismatch        the data dir is another node's or cluster's
    │   ├── BackupError            (ops/backup_file.py) a backup file that cannot be used
    │   └── TestHookError          (test_hooks.py) a test-only hook's variable is set to something
    │                              unusable: the node refuses to start
    │
    ├── RemoteFault                another process sent something bad or said no: nothing to fix here
    │   ├── FrameError             (peers/wire.py) a peer's frame is malformed (also a ValueError)
    │   ├── PeerRefusal            (peers/peer_auth.py) a peer's stream handshake is refused (401/403);
    │   │                          returned by PeerAuth.check as a verdict, like an apply's Refusal
    │   ├── SnapshotTransferFailed (peers/snapshot_transfer.py) a peer refused a snapshot file, or the
    │   │                          link failed or stalled while sending it
    │   ├── AdminError             (ops/admin_http.py) a node refused an operator's call, or none answered
    │   └── HttpError              (ops/local_cluster.py) a node of a local cluster answered non-2xx
    │
    └── Interrupted                nothing is broken: the cluster moved on while we waited. Retry —
        │                          after reading back where the outcome is unknown
        ├── ProposalLost           (driver.py) another leader's entry replaced ours: certainly not applied
        ├── OutcomeUnknown         (driver.py) we stopped waiting: may or may not be applied
        ├── ReadAborted            (driver.py) leadership lost before a read was confirmed
        └── SnapshotMovedOn        (ops/backup_state.py) a snapshot passed the backup point: pick a new one

Not in this tree: the core's own errors (``raftstate.raft.errors``: NotLeader, ...), which the API
answers as Refusals, and the client's tree (``raftstate.client.errors``), which never imports the node.
Caller misuse (a bug, not a fault) stays ``ValueError``/``AssertionError``. Two private helpers
are left out of the drawing: ``_BadRecord`` (a StorageError that never leaves storage/log_store.py)
and api/forward.py's ``_Lost`` (a RemoteFault that never leaves it: the leader's answer was lost).

This module imports nothing of raftstate.node, so the pure state machine (``state/``) can use it.
"""

from __future__ import annotations

from typing import Any

from raftstate.client.protocol import STATUS_OF

__all__ = ["ConfigError", "Interrupted", "LocalFault", "NodeError", "Refusal", "RemoteFault"]


class NodeError(Exception):
    """Base of every exception class of the node (tests/test_errors.py checks it; the tools in
    node/sim/ and node/bench/ report their own failures to their callers)."""


class Refusal(NodeError):
    """A request refused with a code from raftstate.client.protocol: the one refusal type of a node.

    Request validation raises it before anything is proposed; the state machine reaches it at apply
    time, where it is an *outcome* (every replica reaches the same one and a session remembers it
    like a success), so it compares by value. ``fields`` go into the error body beside code and
    message, e.g. ``{"key": ..., "version": ...}``.
    """

    def __init__(self, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields

    @property
    def status(self) -> int:
        """The HTTP status of the answer (500 for a code the protocol does not list)."""
        return STATUS_OF.get(self.code, 500)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refusal) and (self.code, self.message, self.fields) == (
            other.code,
            other.message,
            other.fields,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"Refusal({self.code!r}, {self.message!r}, **{self.fields!r})"


class LocalFault(NodeError):
    """This node's own configuration, disk or files are wrong: the fix is on this machine."""


class RemoteFault(NodeError):
    """Another process (a peer, a node an operator tool called) sent something bad or refused."""


class Interrupted(NodeError):
    """The cluster moved on while a request waited (a new leader, a new snapshot): nothing is broken."""


class ConfigError(LocalFault):
    """The cluster file cannot be used as written. A *local* fault: the message says what to edit.

    Here rather than in config.py so that security/ (which config.py imports) can raise it too.
    """
