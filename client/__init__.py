"""raftstate.client — the library workers import to talk to a raftstate cluster.

    from raftstate.client import AsyncClient, Client

    async with AsyncClient(["http://127.0.0.1:7001", "http://127.0.0.1:7002"]) as state:
        await state.set("imports:42:progress", {"processed": 100, "total": 500})

``Client`` is the same API, blocking and thread-safe. Errors: :mod:`raftstate.client.errors`.
"""

from raftstate.client._lock import Lock
from raftstate.client._transport import AiohttpTransport, Request, Response, Transport
from raftstate.client._types import Consistency, Entry, Fence, LockInfo, LockLease
from raftstate.client.async_client import AsyncClient
from raftstate.client.errors import (
    AuthError,
    ClientClosed,
    Compacted,
    ConnectFailed,
    InvalidRequest,
    LimitExceeded,
    LockHeld,
    LockLost,
    NotFound,
    OutcomeUnknown,
    Overflow,
    RaftStateError,
    ResponseLost,
    ServerError,
    SessionExpired,
    TooLarge,
    TransportError,
    Unavailable,
    VersionMismatch,
    WrongType,
)
from raftstate.client.sync_client import Client, SyncLock
from raftstate.client.watch import Event, Progress, Snapshot, Watch

__all__ = [
    "AiohttpTransport",
    "AsyncClient",
    "AuthError",
    "Client",
    "ClientClosed",
    "Compacted",
    "ConnectFailed",
    "Consistency",
    "Entry",
    "Event",
    "Fence",
    "InvalidRequest",
    "LimitExceeded",
    "Lock",
    "LockHeld",
    "LockInfo",
    "LockLease",
    "LockLost",
    "NotFound",
    "OutcomeUnknown",
    "Overflow",
    "Progress",
    "RaftStateError",
    "Request",
    "Response",
    "ResponseLost",
    "ServerError",
    "SessionExpired",
    "Snapshot",
    "SyncLock",
    "TooLarge",
    "Transport",
    "TransportError",
    "Unavailable",
    "VersionMismatch",
    "Watch",
    "WrongType",
]
