"""How the operator commands (``raftstate status``, ``raftstate cluster up``) reach a node's /status:
over https when the cluster file has ``tls:`` (trusting its CA), with the token of --token or
$RAFTSTATE_TOKEN when auth is on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from raftstate.client import protocol as p
from raftstate.node.config import ClusterConfig
from raftstate.node.security.node_access import NodeAccess

__all__ = ["StatusFetcher"]


class StatusFetcher:
    def __init__(self, config: ClusterConfig | None, token: str | None = None, ca: str | None = None) -> None:
        """``config`` None: nodes named by URL or host:port (``--endpoints``), trust from ``ca``."""
        self.access = NodeAccess.for_operator(config, token, ca)
        #: why the last fetch was refused (e.g. "401 unauthorized"), for the status table
        self.refusals: dict[str, str] = {}

    def url(self, address: str, path: str = "") -> str:
        return self.access.url(address, path)

    def fetch(self, address: str, timeout: float) -> dict[str, Any] | None:
        """The node's /status document, or None (down, or refused: see :attr:`refusals`)."""
        req = urllib.request.Request(self.url(address, p.STATUS.path), headers=self.access.headers())
        self.refusals.pop(address, None)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.access.ssl_context) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except urllib.error.HTTPError as exc:
            hint = " (pass --token or set RAFTSTATE_TOKEN)" if exc.code in (401, 403) else ""
            self.refusals[address] = f"HTTP {exc.code}{hint}"
            return None
        except (urllib.error.URLError, OSError, ValueError):
            return None
