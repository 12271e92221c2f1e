"""Wire types shared by the server (raftstate.node) and the client library — the only module both use.

Every error response body is ``{"error": {"code": CODE, "message": TEXT, ...details}}`` with the
HTTP status from :data:`STATUS_OF`. Codes are stable API; messages are for people.
"""

from __future__ import annotations

from typing import Final

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"

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
#: the write may or may not have been applied (e.g. leadership lost after proposing)
OUTCOME_UNKNOWN: Final = "outcome_unknown"
INTERNAL: Final = "internal"
# Membership (admin) refusals: nothing was changed. See docs/operations.md.
MEMBER_EXISTS: Final = "member_exists"  #: adding an id that is already a voter or learner
CHANGE_IN_PROGRESS: Final = "change_in_progress"  #: another membership change is not committed yet
QUORUM_UNREACHABLE: Final = "quorum_unreachable"  #: the resulting voters would have no reachable quorum
NOT_CAUGHT_UP: Final = "not_caught_up"  #: a learner too far behind the leader to be promoted

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
    OUTCOME_UNKNOWN: 504,
    INTERNAL: 500,
    MEMBER_EXISTS: 409,
    CHANGE_IN_PROGRESS: 409,
    QUORUM_UNREACHABLE: 409,
    NOT_CAUGHT_UP: 409,
}

#: codes after which the request was certainly not applied, so any client may retry it elsewhere
RETRYABLE_SAFELY: Final = frozenset({NOT_LEADER, UNAVAILABLE})


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
