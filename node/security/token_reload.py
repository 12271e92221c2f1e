"""Token rotation without a restart: on SIGHUP a node reads its cluster file's ``auth:`` section and
every token it names again, and from then on accepts exactly those tokens.

Rotating a token: add the new one (a new entry, or a new file content), ``kill -HUP`` every node,
move the clients over, remove the old one, ``kill -HUP`` again — after that reload the old token is
refused (401) everywhere. A token kept in an environment variable cannot change under a running
process (its environment is fixed at start): keep tokens you rotate in files.

What a reload does not change, and says so in the log: ``auth.enabled`` and the cluster secret (peers
must agree on it; rotate it with a rolling restart). A reload that fails — the file no longer
parses, a token file is missing or too short — changes nothing: the node keeps the tokens it has and
logs an ERROR naming the field and the file, so a typo never locks every client out.
Each attempt is counted in ``raftstate_auth_reloads_total{outcome}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import Counter

from raftstate.node.config import load_config
from raftstate.node.errors import ConfigError
from raftstate.node.metrics import NodeMetrics
from raftstate.node.security.auth import Authenticator
from raftstate.node.security.config import ResolvedAuth, resolve_auth

__all__ = ["TokenReloader"]

log = logging.getLogger("raftstate.node")


class TokenReloader:
    def __init__(
        self,
        config_path: Path,
        node_id: str,
        auth: ResolvedAuth,
        authenticator: Authenticator,
        metrics: NodeMetrics,
    ) -> None:
        self._path = config_path
        self._node_id = node_id
        self._secret = auth.cluster_secret
        self._enabled = auth.enabled
        self._authenticator = authenticator
        self.reloads = Counter(
            "raftstate_auth_reloads",
            "Token reloads (SIGHUP) by outcome: ok, or failed (the old tokens stay)",
            ["outcome"],
            registry=metrics.registry,
        )
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome=outcome)

    def reload(self) -> bool:
        """Read the cluster file's tokens again and use them; False (nothing changed) on an error."""
        try:
            auth = resolve_auth(load_config(self._path).auth, self._path)
        except (ConfigError, OSError) as exc:
            self.reloads.labels(outcome="failed").inc()
            log.error("node %s: token reload failed, keeping the current tokens: %s", self._node_id, exc)
            return False
        if auth.enabled != self._enabled:
            self.reloads.labels(outcome="failed").inc()
            log.error(
                "node %s: token reload refused: %s now says auth.enabled: %s; switching auth on or off "
                "needs a restart of every node. Keeping the current tokens",
                self._node_id,
                self._path,
                str(auth.enabled).lower(),
            )
            return False
        if auth.cluster_secret != self._secret:
            log.warning(
                "node %s: the cluster secret changed in %s; it is NOT reloaded (peers must agree on it): "
                "rotate it with a rolling restart",
                self._node_id,
                self._path,
            )
        self._authenticator.replace_tokens(auth)
        self.reloads.labels(outcome="ok").inc()
        log.info(
            "node %s reloaded %d tokens from %s: %s",
            self._node_id,
            len(auth.tokens),
            self._path,
            ", ".join(f"{name} ({role.name.lower()})" for name, role, _ in auth.tokens) or "none",
        )
        return True
