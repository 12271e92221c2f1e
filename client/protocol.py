"""The wire contract shared by the server (raftstate.node) and the client library — the only module
both use: every endpoint a node serves (:data:`ENDPOINTS`), error codes and their HTTP statuses.

THE ENDPOINT TABLE is the one place a path, a method or a role is written. One row per operation:

    name      its metrics label, and its op on /v1/stream when it is a client operation
    method    HTTP method
    path      route template: ``{key}`` is one path segment (a '/' inside travels as %2F);
              ``{key:.+}`` also takes raw slashes
    access    the weakest credential it accepts (:class:`Access`)
    writes    changes the cluster (state, membership, leadership) or only reads
    stream    a client operation: the node serves it with ``Api.op_<name>`` over HTTP and, as op
              ``name``, on /v1/stream; the client sends it on the stream when it can
    body, query  the fields it takes (request body; query string)

Everything else is derived from the rows: the node's routes (node/api/handlers.py ``add_routes``),
its authorization (node/security/auth.py ``route_roles``), the stream's operations and their roles
(node/api/stream.py), the request schema's allowed fields (node/api/schema.py), the client's
requests (``Request(op, name)`` in client/_transport.py) and the test twin
(tests/fake_cluster.py). Adding an operation is one row here plus its handler.

Every error response body is ``{"error": {"code": CODE, "message": TEXT, ...details}}`` with the
HTTP status from :data:`STATUS_OF`. Codes are stable API; messages are for people.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"
#: ``X-Raftstate-Forward: never`` on a request: a follower answers 421 not_leader instead of
#: forwarding it to the leader (node/api/forward.py). The client library sends it: it follows the
#: leader itself (one hop less, and its retries stay exactly-once).
FORWARD_HEADER: Final = "X-Raftstate-Forward"

# Error codes (machine-readable, stable).
NOT_LEADER: Final = "not_leader"
NOT_FOUND: Final = "not_found"
VERSION_MISMATCH: Final = "version_mismatch"
LOCK_HELD: Final = "lock_held"
LOCK_LOST: Final = "lock_lost"
WRONG_TYPE: Final = "wrong_type"
OVERFLOW: Final = "overflow"
KEY_TOO_LARGE: Final = "key_too_large"
VALUE_TOO_LARGE: Final = "value_too_large"
REQUEST_TOO_LARGE: Final = "request_too_large"
SESSION_EXPIRED: Final = "session_expired"
PAGE_TOO_LARGE: Final = "page_too_large"  #: GET /v1/keys limit above settings.max_keys_per_page
TOO_MANY_SESSIONS: Final = "too_many_sessions"  #: settings.max_sessions open sessions exist
TOO_MANY_LOCKS: Final = "too_many_locks"  #: settings.max_locks locks are held
UNAUTHORIZED: Final = "unauthorized"  #: no token, or not a token of this cluster
FORBIDDEN: Final = "forbidden"  #: the token's role is too weak for the endpoint
INVALID_REQUEST: Final = "invalid_request"
UNAVAILABLE: Final = "unavailable"
TIMEOUT: Final = "timeout"
REQUEST_TIMEOUT: Final = "request_timeout"  #: the request body arrived too slowly (a slow client)
#: this address failed authentication too often lately: answered without checking, retry later
TOO_MANY_AUTH_FAILURES: Final = "too_many_auth_failures"
#: the write may or may not have been applied (e.g. leadership lost after proposing)
OUTCOME_UNKNOWN: Final = "outcome_unknown"
INTERNAL: Final = "internal"
#: no route for this method and path on the node (a typo, or a newer client than the node)
UNKNOWN_ENDPOINT: Final = "unknown_endpoint"
# Membership (admin) refusals: nothing was changed. See docs/operations.md.
MEMBER_EXISTS: Final = "member_exists"  #: adding an id that is already a voter or learner
CHANGE_IN_PROGRESS: Final = "change_in_progress"  #: another membership change is not committed yet
QUORUM_UNREACHABLE: Final = "quorum_unreachable"  #: the resulting voters would have no reachable quorum
NOT_CAUGHT_UP: Final = "not_caught_up"  #: a learner too far behind the leader to be promoted
#: a watch asked for history older than the node keeps; the body names ``oldest`` (docs/watch.md)
COMPACTED: Final = "compacted"

STATUS_OF: Final[dict[str, int]] = {
    NOT_LEADER: 421,  # Misdirected Request: retry on the leader named in the body
    NOT_FOUND: 404,
    VERSION_MISMATCH: 409,
    LOCK_HELD: 409,
    LOCK_LOST: 409,
    WRONG_TYPE: 409,
    OVERFLOW: 409,
    KEY_TOO_LARGE: 413,
    VALUE_TOO_LARGE: 413,
    REQUEST_TOO_LARGE: 413,
    SESSION_EXPIRED: 410,
    PAGE_TOO_LARGE: 400,
    TOO_MANY_SESSIONS: 429,
    TOO_MANY_LOCKS: 429,
    UNAUTHORIZED: 401,
    FORBIDDEN: 403,
    INVALID_REQUEST: 400,
    UNAVAILABLE: 503,
    TIMEOUT: 504,
    REQUEST_TIMEOUT: 408,
    TOO_MANY_AUTH_FAILURES: 429,
    OUTCOME_UNKNOWN: 504,
    INTERNAL: 500,
    UNKNOWN_ENDPOINT: 404,
    MEMBER_EXISTS: 409,
    CHANGE_IN_PROGRESS: 409,
    QUORUM_UNREACHABLE: 409,
    NOT_CAUGHT_UP: 409,
    COMPACTED: 410,  # Gone: re-list, then watch again from the revision of the listing
}


# =========================================================================== the endpoint table


class Access(enum.StrEnum):
    """Who may call an endpoint: the weakest credential it accepts. Token roles are ordered
    read < write < admin (a stronger token may do what a weaker one may); with auth off, anyone."""

    PUBLIC = "public"  #: no token needed
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    #: authenticated by the peer handshake (node/peers/peer_auth.py), not by a token
    PEER = "peer"
    #: a read token, or a members proof made with the cluster secret (node/peers/members_auth.py)
    READ_OR_PEER = "read_or_peer"


_PARAM = re.compile(r"\{(\w+)(?::[^{}]+)?\}")
_METHODS: Final = frozenset({"GET", "PUT", "POST", "DELETE"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One row of the table (see the module docstring for the columns)."""

    name: str
    method: str
    path: str
    access: Access
    writes: bool = False
    stream: bool = False
    body: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    #: ``auth.open`` in cluster.yaml may make it public (monitoring without a token)
    openable: bool = False
    #: the path parameter carrying the key, lock name or id (None: the path has none) — from ``path``
    param: str | None = field(init=False)
    #: the path before and after the parameter (computed once: path_for runs on every request)
    _around: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        params = _PARAM.findall(self.path)
        assert self.method in _METHODS, f"{self.name}: method {self.method!r}"
        assert self.path.startswith("/") and len(params) <= 1, f"{self.name}: path {self.path!r}"
        assert not (self.stream and self.access not in (Access.READ, Access.WRITE, Access.ADMIN)), self.name
        object.__setattr__(self, "param", params[0] if params else None)
        head, _, tail = _PARAM.sub("\0", self.path).partition("\0")
        object.__setattr__(self, "_around", (head, tail))

    @property
    def canonical(self) -> str:
        """The path with ``{key:.+}`` written ``{key}`` (aiohttp's ``resource.canonical``)."""
        return _PARAM.sub(r"{\1}", self.path)

    def path_for(self, name: str = "") -> str:
        """The request path: ``name`` percent-encoded as ONE path segment (a '/' in it is %2F) in
        place of the parameter. "." and ".." are spelled %2E so that no URL normalisation anywhere
        can read them as dot-segments."""
        if self.param is None:
            assert not name, f"{self.name} takes no name, got {name!r}"
            return self.path
        if not name:
            raise ValueError(f"{self.name}: the {self.param} must not be empty")
        seg = quote(name, safe="")
        if seg in (".", ".."):
            seg = seg.replace(".", "%2E")
        return seg.join(self._around)

    def describe(self, name: str | None = None) -> str:
        """``METHOD /path`` for messages: with ``name`` as it is (not encoded) in place of the
        parameter, "PUT /v1/kv/a b"; without, the canonical template, "PUT /v1/kv/{key}"."""
        path = self.canonical if name is None else name.join(self._around)
        return f"{self.method} {path}"


_PUBLIC, _READ, _WRITE, _ADMIN = Access.PUBLIC, Access.READ, Access.WRITE, Access.ADMIN
#: every /v1/ request may say ``?timeout=S`` (seconds, at most the node's request timeout)
_T: Final = ("timeout",)
#: reads: ``?consistency=stale`` answers from any node's local state (no ReadIndex)
_READ_Q: Final = ("consistency", "timeout")
#: exactly-once writes: (session, seq) numbers the write, ack forgets outcomes up to it
_NUMBERED: Final = ("session", "seq", "ack")
#: ``{"lock": NAME, "token": N}``: apply only while that lock is held with that token
_FENCED: Final = (*_NUMBERED, "fence")

# fmt: off
# ---- operations endpoints (no /v1: probes and monitoring)
HEALTH: Final = Endpoint("health", "GET", "/health", _PUBLIC)
#: a load balancer's probe: says only ready or not, and who leads
READY: Final = Endpoint("ready", "GET", "/ready", _PUBLIC)
STATUS: Final = Endpoint("status", "GET", "/status", _READ, query=("digest",), openable=True)
METRICS: Final = Endpoint("metrics", "GET", "/metrics", _READ, openable=True)
# ---- client operations (docs/api.md): HTTP, and ops of the same name on /v1/stream
KV_INCREMENT: Final = Endpoint("increment", "POST", "/v1/kv/{key}/increment", _WRITE, writes=True,
                               stream=True, body=("by", "ttl", "expires_at", *_FENCED), query=_T)
KV_GET: Final = Endpoint("get", "GET", "/v1/kv/{key:.+}", _READ, stream=True, query=_READ_Q)
KV_SET: Final = Endpoint("set", "PUT", "/v1/kv/{key:.+}", _WRITE, writes=True, stream=True,
                         body=("value", "ttl", "expires_at", "if_absent", "if_version", *_FENCED), query=_T)
KV_DELETE: Final = Endpoint("delete", "DELETE", "/v1/kv/{key:.+}", _WRITE, writes=True, stream=True,
                            body=("if_version", *_FENCED), query=_T)
KEYS_LIST: Final = Endpoint("list", "GET", "/v1/keys", _READ, stream=True,
                            query=("prefix", "after", "limit", *_READ_Q))
LOCK_ACQUIRE: Final = Endpoint("lock_acquire", "POST", "/v1/locks/{name}/acquire", _WRITE, writes=True,
                               stream=True, body=("owner", "ttl", *_NUMBERED), query=_T)
LOCK_RENEW: Final = Endpoint("lock_renew", "POST", "/v1/locks/{name}/renew", _WRITE, writes=True,
                             stream=True, body=("token", "ttl", *_NUMBERED), query=_T)
LOCK_RELEASE: Final = Endpoint("lock_release", "POST", "/v1/locks/{name}/release", _WRITE, writes=True,
                               stream=True, body=("token", *_NUMBERED), query=_T)
LOCK_GET: Final = Endpoint("lock_get", "GET", "/v1/locks/{name:.+}", _READ, stream=True, query=_READ_Q)
#: a long poll for the changes under ``prefix`` from revision ``from`` (docs/watch.md); ``timeout``
#: is how long to wait for one (at most settings.watch_max_wait_s), not a request deadline
WATCH: Final = Endpoint("watch", "GET", "/v1/watch", _READ, stream=True,
                        query=("prefix", "from", "limit", "consistency", "timeout"))
SESSION_OPEN: Final = Endpoint("session_open", "POST", "/v1/sessions", _WRITE, writes=True, stream=True,
                               query=_T)
SESSION_KEEPALIVE: Final = Endpoint("session_keepalive", "POST", "/v1/sessions/{id}/keepalive", _WRITE,
                                    writes=True, stream=True, query=_T)
#: the client is done with the session: the cluster forgets it and its outcomes at once (idempotent)
SESSION_CLOSE: Final = Endpoint("session_close", "DELETE", "/v1/sessions/{id}", _WRITE, writes=True,
                                stream=True, query=_T)
# ---- admin (docs/operations.md): leadership, membership, backups
LEADER_TRANSFER: Final = Endpoint("transfer", "POST", "/v1/leader/transfer", _ADMIN, writes=True,
                                  body=("to",), query=_T)
#: --join and the wiped-voter check ask it with a members proof instead of a token
MEMBERS_LIST: Final = Endpoint("members_list", "GET", "/v1/members", Access.READ_OR_PEER)
MEMBER_ADD: Final = Endpoint("member_add", "POST", "/v1/members", _ADMIN, writes=True,
                             body=("id", "address"), query=_T)
MEMBER_PROMOTE: Final = Endpoint("member_promote", "POST", "/v1/members/{id}/promote", _ADMIN, writes=True,
                                 query=_T)
MEMBER_REMOVE: Final = Endpoint("member_remove", "DELETE", "/v1/members/{id}", _ADMIN, writes=True, query=_T)
SNAPSHOT_SAVE: Final = Endpoint("snapshot_save", "GET", "/v1/snapshot", _ADMIN, query=_T)
#: an admin frees a lock whoever holds it (an audit line in the leader's log); docs/operations.md
LOCK_FORCE_RELEASE: Final = Endpoint("lock_force_release", "POST", "/v1/locks/{name}/force-release", _ADMIN,
                                     writes=True, query=_T)
# ---- connections (WebSockets)
#: many client operations on one connection (docs/stream.md); each op is then held to its own row's access
STREAM: Final = Endpoint("stream", "GET", "/v1/stream", _READ)
#: the most requests one /v1/stream frame may hold (the node refuses a bigger frame whole)
STREAM_MAX_ITEMS_PER_FRAME: Final = 1000
#: node to node: Raft messages (node/peers/transport.py)
RAFT_STREAM: Final = Endpoint("raft_stream", "GET", "/raft/v1/stream", Access.PEER)
# ---- node to node, one request per transfer
#: a snapshot file for a lagging follower, streamed in its own request (node/peers/snapshot_transfer.py)
RAFT_SNAPSHOT: Final = Endpoint("raft_snapshot", "POST", "/raft/v1/snapshot", Access.PEER)
# fmt: on

#: every row above, in order (module globals keep definition order). Read it as ``protocol.ENDPOINTS``
#: at the time of use (never copy it at import), so that a test may add a row.
ENDPOINTS: Final[tuple[Endpoint, ...]] = tuple(v for v in dict(globals()).values() if isinstance(v, Endpoint))
assert len({e.name for e in ENDPOINTS}) == len(ENDPOINTS), "endpoint names are unique"
assert len({(e.method, e.canonical) for e in ENDPOINTS}) == len(ENDPOINTS), "one row per route"


# =========================================================================== cross-field rules
# A rule between fields of one request that the client (before sending: no round trip for a
# caller's mistake) and the node (its request schema and its state machine) both check is written
# once, here. Pure: the problem as text, or None when the fields agree. Rules only the node checks
# live in raftstate.node.state.commands.


def one_expiry(ttl: object, expires_at: object) -> str | None:
    """A write expires after ``ttl`` or at ``expires_at``, not both (None: not given)."""
    if ttl is not None and expires_at is not None:
        return 'give "ttl" or "expires_at", not both'
    return None
