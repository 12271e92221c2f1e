"""TLS contexts of a node, from the ``tls:`` section of the cluster file (node/security/config.py).

One listener serves clients and peers, so the server asks for a client certificate but does not
require one at the TLS layer (clients have none); the peer route refuses a stream whose dialer
showed no certificate of the cluster's CA (node/peers/transport.py). Dialing a peer, a node verifies the
peer's certificate against the CA and the peer's host, and presents its own.
"""

from __future__ import annotations

import ssl

from raftstate.node.errors import ConfigError
from raftstate.node.security.config import TlsConfig

__all__ = ["client_context", "server_context"]


def server_context(tls: TlsConfig, where: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, tls, where)
    ctx.verify_mode = ssl.CERT_OPTIONAL  # peers present one (checked per route); clients need not
    return ctx


def client_context(tls: TlsConfig, where: str) -> ssl.SSLContext:
    """For dialing peers: verify the peer against the CA (and its address), present our cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, tls, where)
    return ctx


def _load(ctx: ssl.SSLContext, tls: TlsConfig, where: str) -> None:
    for field, path in (("tls.ca", tls.ca), ("tls.cert/tls.key", tls.cert)):
        try:
            if field == "tls.ca":
                ctx.load_verify_locations(cafile=str(tls.ca))
            else:
                ctx.load_cert_chain(str(tls.cert), str(tls.key))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                f"{where}: {field}: cannot load {path} ({reason}); check the path, or make test "
                "certificates with scripts/make_certs.py"
            ) from None
