"""How a blocking caller (operator commands, ``--join``, the wiped-voter check, scripts) reaches a
node's HTTP API when the cluster is secured: the scheme and CA to trust, and what proves who it is.

    tls: in the cluster file (or --ca)        https, verifying the nodes against that CA
    a token (--token or $RAFTSTATE_TOKEN)     Authorization: Bearer <token>
    the cluster secret (nodes only)           a peer proof for ``GET /v1/members``
                                              (node/peers/members_auth.py)

One :class:`NodeAccess` serves every request of a command, so the rules live here once.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from raftstate.client.config import TOKEN_ENV
from raftstate.node.config import ClusterConfig
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.peers.transport import CLUSTER_HEADER, NODE_HEADER

__all__ = ["CA_ENV", "MEMBERS_RECEIVER", "NodeAccess", "refusal_hint"]

#: the CA file to trust when no cluster file says (``--ca`` wins)
CA_ENV = "RAFTSTATE_CA"
#: the receiver a ``/v1/members`` proof is made for: not a valid node id, so such a proof can never
#: open a Raft stream, nor a stream proof read /v1/members
MEMBERS_RECEIVER = "*members"


@dataclass(frozen=True, slots=True)
class NodeAccess:
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None  #: None: plain http
    peer: PeerAuth | None = None  #: set for node-to-node calls when auth is on

    @classmethod
    def for_operator(
        cls, config: ClusterConfig | None, token: str | None = None, ca: str | Path | None = None
    ) -> NodeAccess:
        """Token from ``token`` or $RAFTSTATE_TOKEN; https when ``ca`` (or $RAFTSTATE_CA) is given
        or the cluster file has ``tls:``."""
        tok = token if token is not None else os.environ.get(TOKEN_ENV)
        ca = ca or os.environ.get(CA_ENV) or None
        if ca is None and config is not None and config.tls:
            ca = next(iter(config.tls.values())).ca
        ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
        return cls(tok or None, ctx)

    def with_peer(self, peer: PeerAuth | None) -> NodeAccess:
        return replace(self, peer=peer)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def url(self, address: str, path: str = "") -> str:
        base = address.rstrip("/") if "://" in address else f"{self.scheme}://{address}"
        return base + path

    def headers(self) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.peer is not None:
            h.update(self.peer.sign(MEMBERS_RECEIVER))
            h.update({NODE_HEADER: self.peer.node_id, CLUSTER_HEADER: self.peer.cluster_id})
        return h


def refusal_hint(status: int) -> str:
    """What an operator should do about a 401/403 (empty for other statuses)."""
    if status in (401, 403):
        return (
            " (pass --token or set RAFTSTATE_TOKEN; membership, snapshots and leadership need an admin token)"
        )
    return ""
