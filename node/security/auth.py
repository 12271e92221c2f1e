"""Client authentication and the one authorization point of the HTTP API.

Every request passes :func:`auth_middleware`, which looks the route up in :func:`route_roles` —
the ``access`` column of the endpoint table (client/protocol.py), nothing written here — and calls
:func:`authorize`. DENY BY DEFAULT: a route that is not a row of the table needs ``admin``, so an
endpoint registered some other way is closed until someone decides otherwise (make it a row, or
call ``authorize(request, Role.X)`` from the handler for a finer rule). ``auth.open`` makes a row
marked ``openable`` (status, metrics) public.

    no token, or not a token of this cluster   401 unauthorized   (WWW-Authenticate: Bearer)
    a token whose role is too weak             403 forbidden

Tokens travel as ``Authorization: Bearer <token>`` and are compared in constant time
(:func:`hmac.compare_digest` over every configured token, never stopping at the first match).
Failures are counted in ``raftstate_auth_failures{reason}`` and logged with the remote address and
the route (control characters escaped) — never the token.

An address whose requests failed authentication (401) ``max_failures`` times within
``failure_window_s`` is answered **429** ``too_many_auth_failures`` for the rest of that window,
without looking at its token (no hashing, no comparing): guessing tokens costs the guesser time,
not the node. 403s (a valid token, too weak) do not count.

Who is calling — the token's *name* and role, never the secret — is kept for the request in the
context variable :data:`CALLER` (the /v1/stream's operations inherit their connection's), so the
API can stamp it into the commands quotas count (node/state/quotas.py, node/api/admission.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Final

from aiohttp import web
from prometheus_client import Counter

from raftstate.client import protocol as p
from raftstate.node.api.codec import error_response
from raftstate.node.errors import Refusal
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.config import ResolvedAuth, Role
from raftstate.node.security.log_fields import printable

__all__ = [
    "AUTHENTICATOR",
    "CALLER",
    "MEMBERS_PROOF",
    "PEER",
    "PUBLIC",
    "READ_OR_PEER",
    "Authenticator",
    "auth_middleware",
    "authorize",
    "granted_role",
    "need_of",
    "refuse_weak_role",
    "route_roles",
]

log = logging.getLogger("raftstate.node.security.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC: Final = p.Access.PUBLIC  #: no token needed
PEER: Final = p.Access.PEER  #: authenticated by the peer handshake (node/peers/peer_auth.py), not by a token
#: a read token, or a members proof made with the cluster secret (node/peers/members_auth.py)
READ_OR_PEER: Final = p.Access.READ_OR_PEER
#: a token role, or one of the three needs above that no token role expresses
Need = Role | str

#: the table's access levels as this module checks them
_NEED_OF: Final[dict[p.Access, Need]] = {
    p.Access.PUBLIC: PUBLIC,
    p.Access.READ: Role.READ,
    p.Access.WRITE: Role.WRITE,
    p.Access.ADMIN: Role.ADMIN,
    p.Access.PEER: PEER,
    p.Access.READ_OR_PEER: READ_OR_PEER,
}


class _Rows:
    """The endpoint table by (method, canonical route): one dict lookup per request, rebuilt only
    when ``protocol.ENDPOINTS`` is another tuple (a test that adds a row)."""

    def __init__(self) -> None:
        self._table: tuple[p.Endpoint, ...] = ()
        self._by_route: dict[tuple[str, str], p.Endpoint] = {}

    def by_route(self) -> dict[tuple[str, str], p.Endpoint]:
        if self._table is not p.ENDPOINTS:
            self._by_route = {(ep.method, ep.canonical): ep for ep in p.ENDPOINTS}
            self._table = p.ENDPOINTS
        return self._by_route


_ROWS: Final = _Rows()


def route_roles() -> dict[tuple[str, str], Need]:
    """(method, canonical route) -> who may call it, for every row of the endpoint table (before
    ``auth.open``). Anything not listed needs Role.ADMIN."""
    return {route: _NEED_OF[ep.access] for route, ep in _ROWS.by_route().items()}


def need_of(ep: p.Endpoint) -> Role:
    """The token role endpoint ``ep`` needs, for a connection that already passed its handshake (a
    stream operation): read for a need no token role expresses (public, peer, read_or_peer)."""
    need = _NEED_OF[ep.access]
    return need if isinstance(need, Role) else Role.READ


#: an address is throttled after this many failed authentications within AUTH_FAILURE_WINDOW_S
AUTH_MAX_FAILURES: Final = 100
AUTH_FAILURE_WINDOW_S: Final = 10.0


class _FailureWindows:
    """Failed authentications per address in fixed windows: ``address -> (window start, count)``.
    Bounded: past ``max_addresses`` entries the expired windows are dropped (all, if none is)."""

    def __init__(self, max_failures: int, window_s: float, max_addresses: int = 10_000) -> None:
        assert max_failures > 0 and window_s > 0 and max_addresses > 0
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._windows: dict[str, tuple[float, int]] = {}

    def record(self, address: str, now: float) -> None:
        start, count = self._windows.get(address, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        if address not in self._windows and len(self._windows) >= self.max_addresses:
            self._windows = {a: w for a, w in self._windows.items() if now - w[0] < self.window_s}
            if len(self._windows) >= self.max_addresses:
                self._windows.clear()
        self._windows[address] = (start, count + 1)

    def retry_after_s(self, address: str, now: float) -> float | None:
        """Seconds until ``address`` may try again, or None if it is not throttled."""
        window = self._windows.get(address)
        if window is None or window[1] < self.max_failures:
            return None
        left = window[0] + self.window_s - now
        return left if left > 0 else None


class Authenticator:
    """The resolved tokens of one node, its failure counter and its per-address failure limit."""

    def __init__(
        self,
        auth: ResolvedAuth,
        metrics: NodeMetrics,
        *,
        max_failures: int = AUTH_MAX_FAILURES,
        failure_window_s: float = AUTH_FAILURE_WINDOW_S,
    ) -> None:
        self.enabled = auth.enabled
        self.open_endpoints = auth.open_endpoints
        # Keep digests, not tokens: compare_digest then always compares 32 bytes, whatever was sent.
        self._tokens = [(name, role, hashlib.sha256(tok).digest()) for name, role, tok in auth.tokens]
        self.failures = Counter(
            "raftstate_auth_failures",
            "Client requests refused by authentication (401) or authorization (403), by reason",
            ["reason"],
            registry=metrics.registry,
        )
        for reason in ("missing_token", "invalid_token", "weak_role", "throttled"):
            self.failures.labels(reason=reason)  # export zeros, not gaps
        self._last_log: dict[tuple[str, str], float] = {}
        self._failed = _FailureWindows(max_failures, failure_window_s)

    def throttled(self, request: web.Request) -> Refusal | None:
        """The 429 for an address over its failed-authentication limit, else None (checked before
        the token is even read)."""
        remote = request.remote or "?"
        left = self._failed.retry_after_s(remote, time.monotonic())
        if left is None:
            return None
        limit = self._failed.max_failures
        err = self.refuse(
            request,
            "throttled",
            p.TOO_MANY_AUTH_FAILURES,
            f"{limit} or more requests from {remote} failed authentication within "
            f"{self._failed.window_s:g} s; this address is refused without checking for {left:.1f} s "
            "more: fix the token (client: token=..., CLI: --token or RAFTSTATE_TOKEN), then retry",
            limit=limit,
            retry_after_s=round(left, 1),
        )
        return err

    def replace_tokens(self, auth: ResolvedAuth) -> None:
        """Take up a new token list (token rotation: node/security/token_reload.py). One assignment:
        a request is checked against the old list or the new one, never a mix."""
        assert auth.enabled == self.enabled, "auth cannot be switched on or off without a restart"
        self._tokens = [(name, role, hashlib.sha256(tok).digest()) for name, role, tok in auth.tokens]
        self.open_endpoints = auth.open_endpoints

    def role_of(self, request: web.Request) -> tuple[str, Role] | None:
        """(token name, role) of the request's bearer token; None if it has none or a wrong one."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found: tuple[str, Role] | None = None
        for name, role, want in self._tokens:  # no early exit: time does not depend on which matched
            if hmac.compare_digest(digest, want) and found is None:
                found = (name, role)
        return found

    def refuse(self, request: web.Request, reason: str, code: str, message: str, **fields: Any) -> Refusal:
        self.failures.labels(reason=reason).inc()
        remote = request.remote or "?"
        now = time.monotonic()
        if code == p.UNAUTHORIZED:
            self._failed.record(remote, now)
        # One line per (address, reason) per second: a flood must not flood the log too.
        key = (remote, reason)
        if now - self._last_log.get(key, 0.0) >= 1.0:
            if len(self._last_log) > 10_000:
                self._last_log.clear()
            self._last_log[key] = now
            log.warning(
                "refused %s %s from %s: %s",
                printable(request.method),
                printable(request.path),
                printable(remote),
                reason,
            )
        return Refusal(code, message, **fields)


AUTHENTICATOR: Final = web.AppKey("raftstate_authenticator", Authenticator)
#: (token name, role) of the request being handled; None with auth off (or before authentication)
CALLER: Final[ContextVar[tuple[str, Role] | None]] = ContextVar("raftstate_caller", default=None)
#: does this request carry a valid members proof (node/peers/members_auth.py)? Absent: auth is off.
MEMBERS_PROOF: Final[web.AppKey[Callable[[web.Request], bool]]] = web.AppKey("raftstate_members_proof")


def authorize(request: web.Request, need: Need) -> None:
    """Raise Refusal (401/403) unless the request may do what ``need`` requires. Call it from a
    handler for a rule finer than its route's; the middleware calls it for every route."""
    auth = request.app.get(AUTHENTICATOR)
    if auth is None or not auth.enabled or need in (PUBLIC, PEER):
        return
    if need == READ_OR_PEER:
        proof = request.app.get(MEMBERS_PROOF)
        if proof is not None and proof(request):
            return
        need = Role.READ
    assert isinstance(need, Role)
    throttled = auth.throttled(request)
    if throttled is not None:
        raise throttled
    who = auth.role_of(request)
    if who is None:
        missing = "Authorization" not in request.headers
        reason = "missing_token" if missing else "invalid_token"
        what = "carries no token" if missing else "carries a token this cluster does not know"
        raise auth.refuse(
            request,
            reason,
            p.UNAUTHORIZED,
            f"{request.method} {request.path} {what}; send 'Authorization: Bearer <token>' with a token "
            f"of role {need.name.lower()} or higher (client: token=..., CLI: --token or RAFTSTATE_TOKEN)",
        )
    name, role = who
    if role < need:
        raise auth.refuse(
            request,
            "weak_role",
            p.FORBIDDEN,
            f"{request.method} {request.path} needs role {need.name.lower()}; token {name!r} has role "
            f"{role.name.lower()}; use a token with that role",
        )


def granted_role(request: web.Request) -> Role:
    """The role this request's token grants (admin when auth is off). For a connection that carries
    many operations (the /v1/stream WebSocket): the handshake passed :func:`authorize`, and each
    operation is then held to its own route's role with :func:`refuse_weak_role`."""
    auth = request.app.get(AUTHENTICATOR)
    if auth is None or not auth.enabled:
        return Role.ADMIN
    who = auth.role_of(request)
    return who[1] if who is not None else Role.READ  # None only for an auth.open route: least role


def refuse_weak_role(request: web.Request, have: Role, need: Role, what: str) -> None:
    """Raise 403 (counted and logged like the middleware's) when ``have`` is below ``need``."""
    auth = request.app.get(AUTHENTICATOR)
    if auth is None or not auth.enabled or have >= need:
        return
    raise auth.refuse(
        request,
        "weak_role",
        p.FORBIDDEN,
        f"{what} needs role {need.name.lower()}; this connection's token has role "
        f"{have.name.lower()}; use a token with that role",
    )


def route_need(request: web.Request) -> Need:
    """What the endpoint table says for this request's route: the row's access (public if it is
    ``openable`` and ``auth.open`` lists it); admin for a route that is no row (deny by default)."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    canonical = resource.canonical if resource is not None else ""
    method = "GET" if request.method == "HEAD" else request.method
    ep = _ROWS.by_route().get((method, canonical))
    if ep is None:
        return Role.ADMIN
    auth = request.app.get(AUTHENTICATOR)
    if ep.openable and auth is not None and ep.name in auth.open_endpoints:
        return PUBLIC
    return _NEED_OF[ep.access]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if isinstance(request.match_info.http_exception, web.HTTPMethodNotAllowed):
        # A method no route of this path takes (OPTIONS, PATCH, ...): nothing runs, so nothing to
        # authorize; answer 405 (the router's error, made structured by the API) rather than the
        # deny-by-default 403, which would tell a read token it lacks a role that could not help.
        return await handler(request)
    try:
        authorize(request, route_need(request))
    except Refusal as err:
        resp = error_response(request, err)
        if err.code == p.UNAUTHORIZED:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="raftstate"'
        elif err.code == p.TOO_MANY_AUTH_FAILURES:
            resp.headers["Retry-After"] = str(max(1, math.ceil(err.fields.get("retry_after_s", 1))))
        return resp
    auth = request.app.get(AUTHENTICATOR)
    reset = CALLER.set(auth.role_of(request) if auth is not None and auth.enabled else None)
    try:
        return await handler(request)
    finally:
        CALLER.reset(reset)
