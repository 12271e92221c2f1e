"""A relayed peer proof fails where TLS is on (issue 18, item 7): the proof is bound to the TLS channel.

The attack the issue found: with the dial map (a test hook) — or any wrong address, DNS included —
n1 sends a fresh n1→n2 proof to whoever listens at the address it was given. That listener could
replay the proof to the real n2 and act as n1. Now, with TLS, the proof's MAC covers the certificate
the receiver showed in *that* TLS handshake (node/peers/peer_auth.py ``v2``, node/peers/bound_dial.py):
the relay showed its own certificate (it cannot show n2's without n2's key), so n2 refuses the
relayed proof.

Real TLS sockets on 127.0.0.1, in one process: n2's receiving side is the real PeerGate check of a
node's peer routes; the relay holds a certificate of the cluster's own CA (n3's: an insider, or a
removed node), the strongest relay there is.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.bound_dial import peer_connector
from raftstate.node.peers.handshake import PeerGate, handshake_headers
from raftstate.node.peers.peer_auth import PROOF_HEADER, PeerAuth
from raftstate.node.security.config import TlsConfig
from raftstate.node.security.node_security import own_cert_binding
from raftstate.node.security.tls import client_context, server_context

REPO = Path(__file__).resolve().parent.parent
SECRET = b"relay-test-secret-0123456789abcdef"
CLUSTER = "relay"
MEMBERS = frozenset({"n1", "n2", "n3"})


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("relay-certs")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_certs.py"), "--out", str(out), "--host", "127.0.0.1",
         "n1", "n2", "n3"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out


def tls_of(certs: Path, node: str) -> TlsConfig:
    return TlsConfig(certs / f"{node}.pem", certs / f"{node}.key", certs / "ca.pem")


def auth_of(certs: Path, node: str) -> PeerAuth:
    """A node's PeerAuth as NodeSecurity builds it with TLS on: bound to its own certificate."""
    return PeerAuth(
        SECRET, CLUSTER, node, members=lambda: MEMBERS, binding=own_cert_binding(tls_of(certs, node), "t")
    )


Serve = Callable[[str, Callable[[web.Request], Any]], Any]


@pytest.fixture
async def serve(certs: Path) -> AsyncIterator[Serve]:
    """``await serve(node, handler)``: an HTTPS server with ``node``'s certificate; its address."""
    runners: list[web.AppRunner] = []

    async def start(node: str, handler: Callable[[web.Request], Any]) -> str:
        app = web.Application()
        app.router.add_get("/raft/v1/stream", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tls_of(certs, node), "t"))
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


def n2_receiver(certs: Path) -> tuple[PeerGate, Callable[[web.Request], Any]]:
    gate = PeerGate(
        "n2",
        CLUSTER,
        metrics=NodeMetrics("n2", CLUSTER),
        peer_auth=auth_of(certs, "n2"),
        require_peer_cert=True,
        what="raft stream",
        logger=logging.getLogger("test.relay"),
    )

    async def handle(request: web.Request) -> web.Response:
        refusal = gate.check(request)
        if refusal is not None:
            return web.json_response(
                {"reason": refusal.reason, "message": refusal.message}, status=refusal.status
            )
        return web.json_response({"ok": True})

    return gate, handle


async def dial(
    address: str, headers: dict[str, str], ctx: ssl.SSLContext, auth: PeerAuth | None
) -> tuple[int, Any]:
    """GET the peer route at ``address`` over TLS; ``auth``: a node's own dialer (binds the proof)."""
    async with (
        aiohttp.ClientSession(connector=peer_connector(auth)) as s,
        s.get(f"https://{address}/raft/v1/stream", headers=headers, ssl=ctx) as r,
    ):
        return r.status, await r.json()


async def test_a_proof_relayed_by_whoever_n1_was_told_to_dial_fails_at_n2(certs: Path, serve: Serve) -> None:
    _, handle = n2_receiver(certs)
    n2 = await serve("n2", handle)
    n1_auth = auth_of(certs, "n1")
    n1_ctx = client_context(tls_of(certs, "n1"), "t")
    # The honest path: n1 dials n2 itself; the proof is bound to n2's certificate and accepted.
    assert await dial(n2, handshake_headers("n1", CLUSTER, "n2", n1_auth), n1_ctx, n1_auth) == (
        200,
        {"ok": True},
    )

    # n1 is told n2 lives at the relay's address (the dial map, a wrong DNS entry...).
    captured: list[dict[str, str]] = []

    async def relay_handler(request: web.Request) -> web.Response:
        captured.append(dict(request.headers))
        return web.json_response({"ok": True})

    relay = await serve("n3", relay_handler)
    status, _ = await dial(relay, handshake_headers("n1", CLUSTER, "n2", n1_auth), n1_ctx, n1_auth)
    assert status == 200 and captured, "n1 handed its proof to the relay"
    stolen = {k: v for k, v in captured[0].items() if k.lower().startswith("x-raftstate-")}
    assert stolen[PROOF_HEADER].startswith("v2:")
    # The relay replays it to n2 over its own TLS connection, with its own CA-signed certificate.
    relay_ctx = client_context(tls_of(certs, "n3"), "t")
    status, body = await dial(n2, stolen, relay_ctx, None)
    assert (status, body["reason"]) == (401, "bad_proof"), body
    # Nor does an unbound (v1) proof pass where TLS is on: the binding cannot be left out.
    unbound = handshake_headers("n1", CLUSTER, "n2", PeerAuth(SECRET, CLUSTER, "n1", members=lambda: MEMBERS))
    status, body = await dial(n2, unbound, relay_ctx, None)
    assert (status, body["reason"]) == (401, "unbound_proof"), body
    assert "needs a proof bound to the TLS channel" in body["message"]


def test_without_tls_the_proof_is_unbound_and_checked_as_before() -> None:
    a = PeerAuth(SECRET, CLUSTER, "n1", members=lambda: MEMBERS)
    b = PeerAuth(SECRET, CLUSTER, "n2", members=lambda: MEMBERS)
    headers = a.sign("n2")
    assert headers[PROOF_HEADER].startswith("v1:")
    assert b.check(headers, "n1", CLUSTER) is None
    bound = a.sign("n2", binding=b"\x01" * 32)
    refusal = b.check(bound, "n1", CLUSTER)  # a v2 proof to a node without TLS: not its format
    assert refusal is not None and refusal.reason == "malformed_proof"
