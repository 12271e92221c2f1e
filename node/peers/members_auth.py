"""Who may read ``GET /v1/members``: a token of role read or higher, OR a node holding the
cluster secret.

Nodes read other nodes' membership view before they can take part in the cluster, when no client
token is theirs to send: ``raftstate node --join`` (node/peers/join.py fetch_view) asks a member what
cluster it is joining, and a node starting from an empty data dir asks its peers whether they knew
it (check_not_wiped_voter). Those calls carry a peer proof (node/peers/peer_auth.py) made for the
receiver :data:`~raftstate.node.security.node_access.MEMBERS_RECEIVER` instead of a node id, so

    - the proof shows the caller holds this cluster's secret (a joiner is not a member yet: that
      is fine here, it only reads the view, and it must be added by an admin to ever vote);
    - a stream handshake proof cannot be replayed here, nor this proof open a Raft stream;
    - a proof made for another cluster id, or without the secret, counts for nothing: the request
      then needs a token like any other (401/403 from node/security/auth.py).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from raftstate.node.peers.peer_auth import PROOF_HEADER, PeerAuth
from raftstate.node.peers.transport import CLUSTER_HEADER, NODE_HEADER
from raftstate.node.security.node_access import MEMBERS_RECEIVER

__all__ = ["members_proof_checker"]


def members_proof_checker(secret: bytes, cluster_id: str) -> Callable[[web.Request], bool]:
    """A function telling whether a request carries a valid members proof of ``cluster_id``."""
    proofs = PeerAuth(secret, cluster_id, MEMBERS_RECEIVER, members=frozenset)

    def check(request: web.Request) -> bool:
        if PROOF_HEADER not in request.headers:
            return False
        claimed = request.headers.get(CLUSTER_HEADER, "")
        if claimed != cluster_id:
            return False
        refusal = proofs.check(request.headers, request.headers.get(NODE_HEADER, ""), claimed)
        return refusal is None or refusal.reason == "not_member"

    return check
