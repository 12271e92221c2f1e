"""TEST-ONLY: dial peers at overridden addresses (node/test_hooks.py, the peer-dial-map hook).

Given a JSON file such as ``{"n2": "127.0.0.1:41873", "n3": "127.0.0.1:41874"}`` (the hook is off
in production: the transport then has no DialMap), this node dials peer ``n2`` at the address
given there instead of its configured one; peers the file does not name are dialled as configured.
The file is read at every dial (dials are rare: start-up and reconnects), so a chaos run can point
each directed link i→j at a proxy it controls and cut or heal exactly i's outbound Raft traffic to j
(``node/chaos/proxy.py``). Only outbound Raft streams use it; client traffic and the addresses the
node advertises (``not_leader`` answers) are untouched. A missing or bad file means "no override",
with one warning until it is valid again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from raftstate.node.config import parse_address

__all__ = ["DialMap"]

log = logging.getLogger("raftstate.node")


class DialMap:
    """Where to dial each peer: the override from the map file, else the configured address."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._warned = False

    def address(self, peer_id: str, configured: str) -> str:
        if self.path is None:
            return configured
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object of peer id -> host:port")
            override = doc.get(peer_id)
            if override is None:
                return configured
            if not isinstance(override, str):
                raise ValueError(f"address of {peer_id!r} must be a string, got {override!r}")
            parse_address(override)
        except (OSError, ValueError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("peer dial map %s unusable (%s): dialling configured addresses", self.path, exc)
            return configured
        self._warned = False
        return override
