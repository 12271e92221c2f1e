"""Every error the client raises, in one hierarchy.

    RaftStateError          base class: ``except RaftStateError`` catches everything below
    ├── Unavailable         no leader answered before the call's deadline; ``cause`` is the last failure
    ├── OutcomeUnknown      a WRITE may or may not have been applied — never reported as "failed"
    ├── SessionExpired      the cluster forgot this client's session (the client registers a new one)
    ├── VersionMismatch     compare-and-set / ``version=`` guard did not match; ``actual`` version
    ├── WrongType           increment on a value that is not an integer
    ├── Overflow            increment would leave the signed 64-bit range
    ├── LockHeld            someone else holds the lock (or the once() claim); ``owner``, ``expires_at``
    ├── LockLost            a fenced write, renew or release whose token no longer holds the lock
    ├── NotFound            a lock or session that does not exist (a missing key is None, not an error)
    ├── Compacted           a watch asked for history older than the node keeps; ``oldest``, ``revision``
    ├── InvalidRequest      also a ValueError: a malformed request, refused locally or by the node
    │   └── TooLarge        a key, value or request over the cluster's limit; ``limit`` in bytes
    ├── AuthError           401 unauthorized (no/unknown token) or 403 forbidden (role too weak)
    ├── LimitExceeded       too_many_sessions / too_many_locks: a cluster-wide count limit (``limit``)
    ├── ServerError         the node failed in a way the API does not describe (``internal``, garbage)
    ├── ClientClosed        the client was closed (a *local* fault: the caller's mistake)
    └── TransportError      one attempt could not complete against one node — the ``cause`` of
        │                   Unavailable / OutcomeUnknown:
        ├── ConnectFailed   never reached the node: certainly not applied
        └── ResponseLost    sent, but no answer (timeout, reset, node died): may have been applied

Remote faults carry what the node said: ``code`` (from :mod:`raftstate.client.protocol`), the
``node`` (endpoint) that answered, and ``details`` (the error body: ``key``, ``limit``, ``version``,
``owner``, ...). Every message names the key or lock and the limit, node or deadline involved.

Which outcome a failed WRITE had is the one thing callers must never have to guess:

    =======================  ==========================================================
    raised                   was the write applied?
    =======================  ==========================================================
    a refusal (409/413/400)  no — the state machine (or the node) refused it, deterministically
    Unavailable              no — no attempt of it can have been applied
    OutcomeUnknown           maybe — retrying it would risk applying it twice; read back to find out
    =======================  ==========================================================
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from raftstate.client import protocol as p

__all__ = [
    "AuthError",
    "ClientClosed",
    "Compacted",
    "ConnectFailed",
    "InvalidRequest",
    "LimitExceeded",
    "LockHeld",
    "LockLost",
    "NotFound",
    "OutcomeUnknown",
    "Overflow",
    "RaftStateError",
    "ResponseLost",
    "ServerError",
    "SessionExpired",
    "TooLarge",
    "TransportError",
    "Unavailable",
    "VersionMismatch",
    "WrongType",
    "error_from_body",
]


class RaftStateError(Exception):
    """Base of every error raised by :mod:`raftstate.client`.

    ``code`` is the protocol error code (``None`` for faults detected locally), ``node`` the
    endpoint that answered (``None`` when no node did), ``details`` the rest of the error body.
    """

    #: the protocol code a node sends for this error (None: detected by the client)
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        node: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.node = node
        self.details: dict[str, Any] = dict(details or {})

    @property
    def key(self) -> str | None:
        """The key (or lock name) the error is about, when the node or the client named one."""
        k = self.details.get("key", self.details.get("name"))
        return k if isinstance(k, str) else None


# --------------------------------------------------------------------------- outcomes of a call


class Unavailable(RaftStateError):
    """No leader could serve the call before its deadline. For a write: it was certainly NOT applied
    (every attempt either never reached a node or was refused before proposing).

    ``cause`` (also ``__cause__``) is the last failure seen: a :class:`TransportError`, or the
    node's ``not_leader``/``unavailable``/``timeout`` answer."""

    default_code = p.UNAVAILABLE

    def __init__(self, message: str, *, cause: BaseException | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.cause = cause


class OutcomeUnknown(RaftStateError):
    """A write may or may not have been applied: an attempt reached a node and its answer was lost,
    and no later attempt (same session and sequence number, so never applied twice) could find out
    before the deadline — or the session expired meanwhile.

    Do not blindly retry a non-idempotent write (an increment) after this: read the state back.
    ``session`` and ``seq`` identify the write."""

    default_code = p.OUTCOME_UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        cause: BaseException | None = None,
        session: int | None = None,
        seq: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.cause = cause
        self.session = session
        self.seq = seq


class SessionExpired(RaftStateError):
    """The node no longer knows the client session a write carried (idle past the cluster's
    ``session_idle_timeout_s``). The client handles it: a write that cannot have been applied is
    re-sent under a new session; one that may have been becomes :class:`OutcomeUnknown`."""

    default_code = p.SESSION_EXPIRED


# --------------------------------------------------------------------------- refusals (never applied)


class VersionMismatch(RaftStateError):
    """A ``version=`` guard did not match. ``actual`` is the key's current version (None: absent)."""

    default_code = p.VERSION_MISMATCH

    @property
    def actual(self) -> int | None:
        v = self.details.get("version")
        return v if isinstance(v, int) else None


class WrongType(RaftStateError):
    """An increment on a key whose value is not an integer."""

    default_code = p.WRONG_TYPE


class Overflow(RaftStateError):
    """An increment whose result would leave the signed 64-bit range."""

    default_code = p.OVERFLOW


class LockHeld(RaftStateError):
    """The lock (or a :meth:`~raftstate.client.AsyncClient.once` claim) is held by someone else.
    ``owner`` and ``expires_at`` (cluster time, UTC) say who and until when, if known."""

    default_code = p.LOCK_HELD

    @property
    def owner(self) -> str | None:
        o = self.details.get("owner")
        return o if isinstance(o, str) else None

    @property
    def expires_at(self) -> datetime | None:
        from raftstate.client._time import from_epoch

        return from_epoch(self.details.get("expires_at"))


class LockLost(RaftStateError):
    """The lock is no longer held with this token: the lease expired (or renewals failed for longer
    than is safe) and the holder must stop acting on the protected resource. Fenced writes after
    this point are refused by the cluster."""

    default_code = p.LOCK_LOST

    @property
    def token(self) -> int | None:
        t = self.details.get("token")
        return t if isinstance(t, int) else None


class NotFound(RaftStateError):
    """A lock or session that does not exist. (A missing *key* is not an error: ``get`` returns
    the default, ``delete`` returns False.)"""

    default_code = p.NOT_FOUND


class Compacted(RaftStateError):
    """A watch asked for history the node no longer keeps (docs/watch.md). Re-list the prefix and
    watch again from the listing's revision + 1 — or pass ``relist=True`` to ``watch()``."""

    default_code = p.COMPACTED

    @property
    def oldest(self) -> int | None:
        """The oldest revision the node still keeps."""
        v = self.details.get("oldest")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def revision(self) -> int | None:
        """The node's current revision when it answered."""
        v = self.details.get("revision")
        return v if isinstance(v, int) and not isinstance(v, bool) else None


class InvalidRequest(RaftStateError, ValueError):
    """The request is malformed: a bad argument caught locally (``code`` None) or refused by the
    node (``invalid_request``). The message names the field."""

    default_code = p.INVALID_REQUEST


class TooLarge(InvalidRequest):
    """A key, value or whole request over the cluster's size limit. ``limit`` is in bytes."""

    @property
    def limit(self) -> int | None:
        v = self.details.get("limit")
        return v if isinstance(v, int) else None


class AuthError(RaftStateError):
    """The node refused the token (``code`` unauthorized: none or unknown) or its role (forbidden).
    Nothing was applied. Pass ``token=`` (CLI: --token or RAFTSTATE_TOKEN) with a strong enough role."""

    default_code = p.UNAUTHORIZED


class LimitExceeded(RaftStateError):
    """A cluster-wide count limit (sessions, held locks) is reached; ``details["limit"]``. Not applied."""

    default_code = p.TOO_MANY_LOCKS


class ServerError(RaftStateError):
    """The node answered something the API does not describe: ``internal``, an unknown code, a body
    that does not decode. For a write this is wrapped in :class:`OutcomeUnknown`."""

    default_code = p.INTERNAL


class ClientClosed(RaftStateError):
    """The client was closed; create a new one."""


# --------------------------------------------------------------------------- one failed attempt


class TransportError(RaftStateError):
    """One attempt against one node failed below HTTP. Raised by a transport; the client retries
    elsewhere and, at its deadline, reports it as the cause of Unavailable or OutcomeUnknown."""


class ConnectFailed(TransportError):
    """The request never reached the node (connection refused, DNS, connect timeout).

    ``misaddressed`` says why, when the address itself looks wrong rather than the node busy or
    restarting: ``"refused"`` (nothing listens there), ``"not_raftstate"`` (another service
    answered: an HTTP answer without a raftstate error document), ``"not_tls"`` (https to a plain
    http node); None otherwise. A client that never reached a node of its cluster and finds every endpoint
    misaddressed says so early instead of retrying until its deadline."""

    def __init__(
        self, message: str, *, misaddressed: str | None = None, ran_out: bool = False, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.misaddressed = misaddressed
        #: the caller's own deadline ran out before a connection was made: says nothing of the
        #: node, so the client keeps the attempt before it as the reason it gives up
        self.ran_out = ran_out


class ResponseLost(TransportError):
    """The request may have reached the node but no answer came back (read timeout, connection
    reset, node crashed): the write may have been applied."""


# --------------------------------------------------------------------------- decoding a node's answer

#: code -> class. Codes missing here (and "internal") become ServerError.
ERROR_OF_CODE: Final[dict[str, type[RaftStateError]]] = {
    p.UNKNOWN_ENDPOINT: InvalidRequest,  # a raftstate node without that route (an older version?)
    p.NOT_LEADER: Unavailable,  # the client follows these; raised only wrapped in Unavailable
    p.UNAVAILABLE: Unavailable,
    p.TIMEOUT: Unavailable,
    p.OUTCOME_UNKNOWN: OutcomeUnknown,
    p.SESSION_EXPIRED: SessionExpired,
    p.VERSION_MISMATCH: VersionMismatch,
    p.WRONG_TYPE: WrongType,
    p.OVERFLOW: Overflow,
    p.LOCK_HELD: LockHeld,
    p.LOCK_LOST: LockLost,
    p.NOT_FOUND: NotFound,
    p.INVALID_REQUEST: InvalidRequest,
    p.KEY_TOO_LARGE: TooLarge,
    p.VALUE_TOO_LARGE: TooLarge,
    p.REQUEST_TOO_LARGE: TooLarge,
    p.PAGE_TOO_LARGE: InvalidRequest,
    p.UNAUTHORIZED: AuthError,
    p.FORBIDDEN: AuthError,
    p.TOO_MANY_AUTH_FAILURES: AuthError,
    p.TOO_MANY_SESSIONS: LimitExceeded,
    p.TOO_MANY_LOCKS: LimitExceeded,
    p.REQUEST_TIMEOUT: Unavailable,  # the body arrived too slowly: not applied, safe to retry
    p.INTERNAL: ServerError,
    p.COMPACTED: Compacted,
}


def error_from_body(status: int, body: object, *, node: str, what: str) -> RaftStateError:
    """The error a node's non-2xx answer stands for. ``what`` names the call ("PUT key 'a'") for
    answers that carry no error document (a proxy's 502, another service on the port).

    Without an error document the answer is not a raftstate node's (every route of a node, also
    an unknown one, answers with one): 502/503/504 are a proxy's (Unavailable: retried), anything
    else is another service on that port — a misaddressed :class:`ConnectFailed`, never NotFound
    (which a caller could read as "no such key")."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        code: str = err["code"]
        message = str(err.get("message") or code)
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        cls = ERROR_OF_CODE.get(code, ServerError)
        return cls(f"{message} (node {node})", code=code, node=node, details=details)
    # No error document: classify by status alone, with a code no node sends.
    text = body if isinstance(body, str) else repr(body)
    code = f"http_{status}"
    if status in (502, 503, 504):
        return Unavailable(
            f"node {node} answered HTTP {status} to {what}: {text[:200]!r}", code=code, node=node
        )
    return ConnectFailed(
        f"{node} is not a raftstate node: it answered HTTP {status} without a raftstate error to {what} "
        f"({text[:120]!r}); check the endpoint (another service on that port?)",
        misaddressed="not_raftstate",
        code=code,
        node=node,
    )
