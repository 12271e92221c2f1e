"""Blocking HTTP calls to nodes for operator tools (``raftstate member/leader/snapshot``, ``--join``,
scripts/rolling_restart.py): find the leader, follow ``not_leader`` redirects, retry while no
leader is known. Stdlib only, so the tools start fast and need no event loop. Token, TLS trust and
peer proof come from one :class:`~raftstate.node.security.node_access.NodeAccess` (default: plain http)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.client import HTTPResponse
from typing import Any

from raftstate.client import protocol as p
from raftstate.node.errors import RemoteFault
from raftstate.node.security.node_access import NodeAccess, refusal_hint

__all__ = ["AdminError", "call", "call_leader", "open_leader"]


class AdminError(RemoteFault):
    """A node refused the request (``code`` from client/protocol.py) or none could be reached."""

    def __init__(self, message: str, code: str | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body or {}


_PLAIN = NodeAccess()


def call(
    address: str,
    op: p.Endpoint,
    body: Any = None,
    timeout: float = 5.0,
    access: NodeAccess = _PLAIN,
    *,
    name: str = "",
) -> Any:
    """One request of operation ``op`` (on ``name``: a member id) to one node. Raises AdminError
    (with the node's code) or OSError."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        access.url(address, op.path_for(name)),
        data=data,
        method=op.method,
        headers={"Content-Type": p.JSON, **access.headers()},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=access.ssl_context) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raise _refusal(address, exc) from None


def _refusal(address: str, exc: urllib.error.HTTPError) -> AdminError:
    raw = exc.read()
    try:
        err = json.loads(raw)["error"]
        return AdminError(f"{address}: HTTP {exc.code}: {err['message']}", err.get("code"), err)
    except (ValueError, KeyError, TypeError):
        return AdminError(f"{address}: HTTP {exc.code}: {raw[:200]!r}{refusal_hint(exc.code)}", None)


def _leader_attempts(endpoints: Sequence[str], deadline: float) -> Iterator[str]:
    """Endpoints to try, in turn, until the deadline: the known leader first after a redirect."""
    i = 0
    while time.monotonic() < deadline:
        yield endpoints[i % len(endpoints)]
        i += 1
        if i % len(endpoints) == 0:
            time.sleep(0.2)


def call_leader(
    endpoints: Sequence[str],
    op: p.Endpoint,
    body: Any = None,
    timeout: float = 30.0,
    access: NodeAccess = _PLAIN,
    *,
    name: str = "",
) -> Any:
    """Send to the leader: follow ``not_leader``, skip unreachable nodes, retry ``unavailable`` and
    ``change_in_progress`` until ``timeout``. Other refusals raise AdminError at once."""
    deadline = time.monotonic() + timeout
    last: str = "no endpoint tried"
    hint: str | None = None
    for ep in _leader_attempts(list(endpoints), deadline):
        target = hint or ep
        hint = None
        try:
            left = min(10.0, max(0.5, deadline - time.monotonic()))
            return call(target, op, body, timeout=left, access=access, name=name)
        except AdminError as exc:
            last = str(exc)
            if exc.code == p.NOT_LEADER:
                hint = exc.body.get("leader_address")
                if not hint:
                    time.sleep(0.1)
                continue
            if exc.code in (p.UNAVAILABLE, p.CHANGE_IN_PROGRESS):
                # change_in_progress changed nothing: a new leader commits an entry of its term
                # first, or an earlier membership change is still committing (milliseconds).
                time.sleep(0.2)
                continue
            raise
        except OSError as exc:
            last = f"{target}: {exc}"
    raise AdminError(
        f"no leader answered {op.describe(name)} within {timeout:.0f}s; last: {last}", p.UNAVAILABLE
    )


@contextmanager
def open_leader(
    endpoints: Sequence[str], op: p.Endpoint, timeout: float = 60.0, access: NodeAccess = _PLAIN
) -> Iterator[HTTPResponse]:
    """Operation ``op`` of the leader as a stream (a backup). The leader is found with /v1/members."""
    doc = call_leader(endpoints, p.MEMBERS_LIST, timeout=timeout, access=access)
    leader = doc["leader_address"] if doc.get("leader") else None
    if leader is None:
        raise AdminError("no leader is known; retry when the cluster has one", p.UNAVAILABLE)
    req = urllib.request.Request(
        access.url(leader, op.path_for()), method=op.method, headers=access.headers()
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=access.ssl_context) as resp:
            yield resp
    except urllib.error.HTTPError as exc:
        raise _refusal(leader, exc) from None
