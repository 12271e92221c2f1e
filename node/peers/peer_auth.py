"""Proof of membership for peer streams: an HMAC of the cluster secret in the WebSocket handshake.

The dialer of ``/raft/v1/stream`` sends one header::

    X-Raftstate-Proof: v1:<unix ms>:<nonce, 32 hex>:<HMAC-SHA256 hex>

over ``raftstate-peer-v1 | cluster id | sender id | receiver id | unix ms | nonce``. The receiver
checks it before upgrading, so no byte of a refused stream ever reaches the Raft core:

    no/garbled header                      refused 401 (missing_proof / malformed_proof)
    time off by more than max_skew_s       refused 401 (stale_proof): a captured handshake expires
    nonce already seen within that window  refused 401 (replayed_proof)
    MAC wrong (no secret, other cluster)   refused 401 (bad_proof)
    sender not a member of this cluster    refused 403 (not_member): a removed node cannot vote

The MAC binds sender and receiver ids, so a proof captured on the way to n2 cannot open a stream
to n3, nor claim to be another node. (Without TLS an on-path attacker can still read and alter the
frames of an established stream; enable tls: for that.)

**Bound to the TLS channel** (issue 18). With TLS on, the proof is ``v2`` and its MAC also covers
the SHA-256 of the certificate the *receiver* showed in this connection's TLS handshake — which the
dialer reads from its own TLS session after the handshake, just before the request leaves
(node/peers/bound_dial.py), and the receiver knows as its own certificate. A node tricked into
dialing someone else (a wrong address, a test's dial map, DNS) hands that someone a proof bound to
*its* certificate: relayed to the real receiver over another connection, it fails (``bad_proof``),
since no one but the receiver holds the receiver's key. A TLS receiver refuses an unbound ``v1``
proof (``unbound_proof``); without TLS only ``v1`` exists.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Final

from raftstate.node.errors import RemoteFault

__all__ = ["PROOF_HEADER", "PeerAuth", "PeerRefusal", "cert_binding"]

PROOF_HEADER: Final = "X-Raftstate-Proof"
_VERSION: Final = "v1"
#: a proof bound to the TLS channel: the MAC also covers the receiver's certificate
_BOUND: Final = "v2"


def cert_binding(der: bytes) -> bytes:
    """What a proof is bound to: the SHA-256 of a certificate (DER), as seen in the TLS handshake."""
    return hashlib.sha256(der).digest()


class PeerRefusal(RemoteFault):
    """Why a peer's handshake is refused: a *remote* fault. :meth:`PeerAuth.check` returns it as a
    verdict (the transport answers it with a reject status and header); nothing raises it."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        #: 401 (no valid proof) or 403 (valid proof, but not a member); handshake.py's other checks
        #: also answer 400 (no node id), 403 (no peer certificate, another cluster), 421 (wrong target)
        self.status = status
        self.reason = reason  #: short label for the metric
        self.message = message  #: for the log and the reject header; never contains the secret or the MAC

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerRefusal) and (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.status, self.reason, self.message))

    def __repr__(self) -> str:
        return f"PeerRefusal({self.status!r}, {self.reason!r}, {self.message!r})"


class PeerAuth:
    """Signs outbound handshakes and checks inbound ones for one node."""

    def __init__(
        self,
        secret: bytes,
        cluster_id: str,
        node_id: str,
        *,
        members: Callable[[], Collection[str]],
        max_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
        binding: bytes | None = None,
    ) -> None:
        """``binding``: :func:`cert_binding` of this node's own TLS certificate when it serves TLS
        (its inbound proofs must then be bound to it); None without TLS."""
        assert secret, "an empty secret proves nothing"
        self.binding = binding
        self._secret = secret
        self.cluster_id = cluster_id
        self.node_id = node_id
        self._members = members
        self.max_skew_s = max_skew_s
        self._clock = clock
        self._max_nonces = max_nonces
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when seen; oldest first

    def _mac(
        self, cluster: str, sender: str, receiver: str, ts_ms: int, nonce: str, binding: bytes | None = None
    ) -> str:
        fields = ["raftstate-peer-v1", cluster, sender, receiver, str(ts_ms), nonce]
        if binding is not None:
            fields[0] = "raftstate-peer-v2"
            fields.append(binding.hex())
        msg = "\n".join(fields)
        return hmac.new(self._secret, msg.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def sign(self, receiver: str, binding: bytes | None = None) -> dict[str, str]:
        """Headers for a handshake from this node to ``receiver``; ``binding``: the
        :func:`cert_binding` of the certificate the receiver showed in this connection (TLS)."""
        ts_ms = int(self._clock() * 1000)
        nonce = secrets.token_hex(16)
        mac = self._mac(self.cluster_id, self.node_id, receiver, ts_ms, nonce, binding)
        return {PROOF_HEADER: f"{_VERSION if binding is None else _BOUND}:{ts_ms}:{nonce}:{mac}"}

    def check(
        self, headers: Mapping[str, str], sender: str, cluster: str, *, spend: bool = True
    ) -> PeerRefusal | None:
        """None if ``headers`` prove that ``sender`` of ``cluster`` holds the secret and may talk to
        this node; else why not. ``cluster`` is the dialer's claimed cluster id (checked by the
        caller against ours, after this proof says the claim comes from a secret holder).

        A proof is good once: a check spends its nonce. ``spend=False`` looks ahead without
        spending it (the snapshot route's answer to ``Expect: 100-continue``, before its handler
        checks the same request for real)."""
        raw = headers.get(PROOF_HEADER)
        if raw is None:
            return PeerRefusal(401, "missing_proof", f"no {PROOF_HEADER} header; this cluster requires auth")
        parts = raw.split(":")
        want_version = _VERSION if self.binding is None else _BOUND
        if len(parts) == 4 and parts[0] == _VERSION and self.binding is not None:
            return PeerRefusal(
                401,
                "unbound_proof",
                "this node serves TLS and needs a proof bound to the TLS channel (v2); the dialer "
                "sent v1: upgrade it, or check that it dials this node over TLS",
            )
        if len(parts) != 4 or parts[0] != want_version or not parts[1].isascii() or not parts[1].isdigit():
            return PeerRefusal(
                401, "malformed_proof", f"{PROOF_HEADER} is not {want_version}:<ms>:<nonce>:<mac>"
            )
        _, ts_text, nonce, mac = parts
        if len(ts_text) > 15 or not 16 <= len(nonce) <= 64 or len(mac) != 64:
            return PeerRefusal(401, "malformed_proof", f"{PROOF_HEADER} has fields of the wrong size")
        now = self._clock()
        skew = abs(now - int(ts_text) / 1000)
        if skew > self.max_skew_s:
            return PeerRefusal(
                401,
                "stale_proof",
                f"handshake time is {skew:.0f}s away from this node's clock (limit {self.max_skew_s:.0f}s); "
                "sync the clocks (NTP) — or this is a replayed handshake",
            )
        want = self._mac(cluster, sender, self.node_id, int(ts_text), nonce, self.binding)
        if not hmac.compare_digest(want.encode("ascii"), mac.encode("ascii", "replace")):
            return PeerRefusal(
                401,
                "bad_proof",
                "the handshake proof does not match this cluster's secret; "
                "every node needs the same auth.cluster_secret",
            )
        # A proof is valid while its time is within max_skew_s of ours: at most 2 * max_skew_s after
        # we first see it (if it was stamped that far ahead). Remember its nonce that long.
        self._forget_older_than(now - 2 * self.max_skew_s)
        if nonce in self._seen:
            return PeerRefusal(401, "replayed_proof", "this handshake was already used (replay)")
        if spend:
            self._seen[nonce] = now
            if len(self._seen) > self._max_nonces:
                self._seen.popitem(last=False)
        if cluster == self.cluster_id and sender not in self._members():
            return PeerRefusal(
                403,
                "not_member",
                f"node {sender!r} is not a member of cluster {self.cluster_id!r}; add it through a "
                "membership change first",
            )
        return None

    def _forget_older_than(self, cutoff: float) -> None:
        while self._seen:
            nonce, seen = next(iter(self._seen.items()))
            if seen >= cutoff:
                break
            del self._seen[nonce]
