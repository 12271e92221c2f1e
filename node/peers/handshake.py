"""The peer handshake: the headers a node sends to a peer's route, and the one check of them.

Every node-to-node request — the Raft stream (``GET /raft/v1/stream``, transport.py) and a
snapshot file (``POST /raft/v1/snapshot``, snapshot_transfer.py) — carries the same headers:

    X-Raftstate-Node      the dialer's node id
    X-Raftstate-Cluster   the dialer's cluster_id; must equal the receiver's
    X-Raftstate-Target    the node id the dialer believes lives at this address
    X-Raftstate-Proof     the HMAC proof of peer_auth.py (when the cluster has auth on)

and the receiver runs one check, :meth:`PeerGate.check`, before it reads a byte of the body or
upgrades the connection: a certificate of the cluster's CA (TLS on), the proof, the cluster id, the
dialer's id and the target. A refusal is answered with its status and the reason in
``X-Raftstate-Reject``, and logged at ERROR at most once a minute per (host, reason key): a
misconfigured peer redials every couple of seconds, and a hostile one varies everything it can.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiohttp import web

from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.peer_auth import PeerAuth, PeerRefusal
from raftstate.node.security.log_fields import printable

__all__ = [
    "CLUSTER_HEADER",
    "NODE_HEADER",
    "REJECT_HEADER",
    "TARGET_HEADER",
    "PeerGate",
    "handshake_headers",
    "remote_of",
]

NODE_HEADER = "X-Raftstate-Node"  #: the dialer's node id
CLUSTER_HEADER = "X-Raftstate-Cluster"  #: the dialer's cluster_id; must equal the receiver's
TARGET_HEADER = "X-Raftstate-Target"  #: the node id the dialer believes lives at this address
REJECT_HEADER = "X-Raftstate-Reject"  #: why the receiver refused the handshake
#: at most one ERROR line per (host, reason) this often; the rest at DEBUG, counted in the next line
REFUSAL_LOG_INTERVAL_S: Final = 60.0


def handshake_headers(
    node_id: str, cluster_id: str, target: str, peer_auth: PeerAuth | None
) -> dict[str, str]:
    """The headers of a request from ``node_id`` to peer ``target``: who we are, and the proof."""
    headers = {NODE_HEADER: node_id, CLUSTER_HEADER: cluster_id, TARGET_HEADER: target}
    if peer_auth is not None:
        headers.update(peer_auth.sign(target))
    return headers


def remote_of(request: web.Request) -> str:
    """``host:port`` of the connection's other end, for logs."""
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peername[0]}:{peername[1]}" if peername else (request.remote or "?")


class PeerGate:
    """The handshake check of one node's peer route (one per route: each logs under its own name)."""

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        *,
        metrics: NodeMetrics,
        peer_auth: PeerAuth | None,
        require_peer_cert: bool,
        what: str,
        logger: logging.Logger,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._metrics = metrics
        self._peer_auth = peer_auth  # None: auth off (the config said so explicitly)
        self._require_peer_cert = require_peer_cert  # TLS on: a peer must show a cert of our CA
        self._what = what  #: what is refused, for the log: "raft stream", "snapshot transfer"
        self._log = logger
        self.refused = 0  #: handshakes refused since start
        #: (host, reason key) -> (when its last ERROR line was written, refusals since, unlogged)
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}

    def check(self, request: web.Request, *, spend: bool = True) -> PeerRefusal | None:
        """None if the request comes from a peer of this cluster that may talk to this node (its id
        is then ``request.headers[NODE_HEADER]``); else why not. ``spend=False``: a look ahead
        that leaves the proof good for the real check (:meth:`PeerAuth.check`)."""
        peer_id = request.headers.get(NODE_HEADER, "")
        cluster = request.headers.get(CLUSTER_HEADER, "")
        target = request.headers.get(TARGET_HEADER, self.node_id)
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        if self._require_peer_cert and not cert:
            return PeerRefusal(403, "no_peer_cert", "no client certificate signed by this cluster's CA")
        if self._peer_auth is not None:
            refusal = self._peer_auth.check(request.headers, peer_id, cluster, spend=spend)
            if refusal is not None:
                self._metrics.peer_handshakes_refused_total.labels(reason=refusal.reason).inc()
                return refusal
        if cluster != self.cluster_id:
            self._metrics.peer_handshakes_refused_total.labels(reason="wrong_cluster").inc()
            return PeerRefusal(
                403,
                "wrong_cluster",
                f"cluster_id mismatch: this node is in {self.cluster_id!r}, the dialer in {cluster!r}; "
                "it was started from another cluster file",
            )
        if not peer_id:
            return PeerRefusal(400, "missing_node", f"missing {NODE_HEADER} header")
        if target != self.node_id:
            return PeerRefusal(
                421,
                "wrong_target",
                f"this address is node {self.node_id!r}, not {target!r}; "
                f"check {target}'s address in the cluster file",
            )
        return None

    def refuse(self, request: web.Request, refusal: PeerRefusal) -> web.Response:
        """Answer a refused handshake: its status, its message in the body and the reject header.

        Logged at ERROR once per (host, reason key) per REFUSAL_LOG_INTERVAL_S, the next line saying
        how many were refused meanwhile; the others at DEBUG. The key is the constant ``reason``
        (``stale_proof``, ...), never the message or the claimed node id: both vary per request, so
        keying on them let a dialer write one ERROR line per request."""
        self.refused += 1
        remote = remote_of(request)
        peer_id = request.headers.get(NODE_HEADER, "")
        key = (remote.rpartition(":")[0], refusal.reason)
        now = time.monotonic()
        last, quiet = self._logged.get(key, (None, 0))
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            self._logged[key] = (last, quiet + 1)
            level = logging.DEBUG
        else:
            if key not in self._logged and len(self._logged) >= 1000:
                self._logged.clear()  # bound the memory a stream of bogus dialers can pin
            self._logged[key] = (now, 0)
            level = logging.ERROR
        more = f" ({quiet} more from this host for this reason since the last such line)" if quiet else ""
        self._log.log(
            level,
            "refused %s from %s (node %s): %s%s",
            self._what,
            printable(remote),
            printable(peer_id or "?"),
            printable(refusal.message),
            more,
        )
        return web.Response(
            status=refusal.status, text=refusal.message + "\n", headers={REJECT_HEADER: refusal.message}
        )
