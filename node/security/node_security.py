"""Everything a node needs to protect itself, built from the cluster file in one place.

``NodeSecurity(config, node_id, metrics)`` reads the secrets (a ConfigError names a missing
variable or file before any data directory is touched), and hands the server:

    install(app)      middlewares: HTTP guard (slow clients), then token auth (node/security/auth.py)
    reload_tokens()   token rotation on SIGHUP (node/security/token_reload.py)
    peer_auth         signs/checks peer handshakes (node/peers/peer_auth.py); None when auth is off
    client_ssl        TLS context for dialing peers; None without tls:
    site(...)         the listener: TLS if configured, behind the connection guard
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiohttp import web

from raftstate.node.api.codec import BODY_DONE, BODY_TIMEOUT_S
from raftstate.node.api.guard import GuardedTCPSite, HttpGuard
from raftstate.node.config import ClusterConfig
from raftstate.node.driver import RaftDriver
from raftstate.node.errors import ConfigError
from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.members_auth import members_proof_checker
from raftstate.node.peers.peer_auth import PeerAuth, cert_binding
from raftstate.node.security.auth import AUTHENTICATOR, MEMBERS_PROOF, Authenticator, auth_middleware
from raftstate.node.security.config import TlsConfig, resolve_auth
from raftstate.node.security.tls import client_context, server_context
from raftstate.node.security.token_reload import TokenReloader

__all__ = ["NodeSecurity"]

log = logging.getLogger("raftstate.node")


class NodeSecurity:
    def __init__(self, config: ClusterConfig, node_id: str, metrics: NodeMetrics) -> None:
        s = config.settings
        self._config = config
        self._driver: RaftDriver | None = None
        auth = resolve_auth(config.auth, config.path)
        if not auth.enabled:
            log.warning(
                "node %s: AUTH IS OFF (auth: {enabled: false} in %s): anyone who can reach %s can read and "
                "overwrite every key and lock; see README 'Securing a cluster'",
                node_id,
                config.path,
                config.node(node_id).address,
            )
        self.authenticator = Authenticator(auth, metrics)
        self._reloader = TokenReloader(config.path, node_id, auth, self.authenticator, metrics)
        tls = config.tls.get(node_id) if config.tls else None
        where = str(config.path)
        # With TLS, inbound peer proofs must be bound to this node's own certificate (peer_auth.py).
        binding = own_cert_binding(tls, where) if tls else None
        self.peer_auth = (
            PeerAuth(auth.cluster_secret, config.cluster_id, node_id, members=self._members, binding=binding)
            if auth.enabled
            else None
        )
        self._members_proof = (
            members_proof_checker(auth.cluster_secret, config.cluster_id) if auth.enabled else None
        )
        self.server_ssl: ssl.SSLContext | None = server_context(tls, where) if tls else None
        self.client_ssl: ssl.SSLContext | None = client_context(tls, where) if tls else None
        self.guard = HttpGuard.for_node(s.max_client_connections, float(s.client_body_timeout_s), metrics)

    def reload_tokens(self) -> bool:
        """SIGHUP: read the tokens again (the old ones are refused after it); False if it failed."""
        return self._reloader.reload()

    @property
    def tls(self) -> bool:
        return self.server_ssl is not None

    def attach(self, driver: RaftDriver) -> None:
        """Membership checks of peer handshakes follow the driver's current configuration."""
        self._driver = driver

    def install(self, app: web.Application) -> None:
        """Call before any route is added: these middlewares run first, in this order."""
        app[AUTHENTICATOR] = self.authenticator
        if self._members_proof is not None:
            app[MEMBERS_PROOF] = self._members_proof
        app[BODY_TIMEOUT_S] = self.guard.body_timeout_s
        app[BODY_DONE] = self.guard.body_done
        app.middlewares.append(self.guard.middleware)
        app.middlewares.append(auth_middleware)

    @property
    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for web.AppRunner: no "lingering" (aiohttp would otherwise keep reading
        an unread body for up to 10 s after answering, e.g. after a 408 to a slow client), and the
        guard's short keep-alive timeout (aiohttp's default is 3630 s)."""
        return {"lingering_time": 0.0, "keepalive_timeout": self.guard.keepalive_timeout_s}

    def site(self, runner: web.AppRunner, host: str, port: int, **kw: Any) -> web.TCPSite:
        return GuardedTCPSite(runner, host, port, self.guard, ssl_context=self.server_ssl, **kw)

    def _members(self) -> frozenset[str]:
        # The current membership, plus the nodes of the cluster file (a node that joins learns the
        # membership from the leader, so it must accept the leader before it knows it).
        listed = frozenset(n.id for n in self._config.nodes)
        if self._driver is None:
            return listed
        return self._driver.raft.membership.members | listed


def own_cert_binding(tls: TlsConfig, where: str) -> bytes:
    """:func:`cert_binding` of the certificate this node shows in its TLS handshakes: the first one
    of its ``tls.cert`` file (a chain starts with the leaf)."""
    try:
        pem = tls.cert.read_text(encoding="ascii")
        end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        der = ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----") : end])
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{where}: tls.cert: cannot read a certificate from {tls.cert} ({exc}); check the path, or "
            "make test certificates with scripts/make_certs.py"
        ) from None
    return cert_binding(der)
