"""Dialing a peer over TLS with a proof bound to the connection (node/peers/peer_auth.py, ``v2``).

The proof header is made before the request is built, when no connection exists yet. This
connector, used by every peer client session (the Raft stream, snapshot transfers), steps in once
the connection is made and its TLS handshake done, and *before* the request's headers are written:
it reads the certificate the peer showed in this handshake and re-signs the proof bound to it. Over
plain HTTP (no TLS) the unbound proof goes as it is.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from raftstate.node.peers.handshake import TARGET_HEADER
from raftstate.node.peers.peer_auth import PROOF_HEADER, PeerAuth, cert_binding

__all__ = ["BoundProofConnector", "peer_connector"]


class BoundProofConnector(aiohttp.TCPConnector):
    """A TCPConnector that binds a request's peer proof to its TLS connection."""

    def __init__(self, peer_auth: PeerAuth, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._peer_auth = peer_auth

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)
        if PROOF_HEADER not in req.headers:
            return conn
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return conn  # plain HTTP: nothing to bind to (a TLS receiver refuses the unbound proof)
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            receiver = req.headers.get(TARGET_HEADER, "")
            req.headers[PROOF_HEADER] = self._peer_auth.sign(receiver, cert_binding(der))[PROOF_HEADER]
        return conn


def peer_connector(peer_auth: PeerAuth | None, **kwargs: Any) -> aiohttp.TCPConnector:
    """The connector of a peer client session: proofs bound to TLS when auth is on."""
    return aiohttp.TCPConnector(**kwargs) if peer_auth is None else BoundProofConnector(peer_auth, **kwargs)
