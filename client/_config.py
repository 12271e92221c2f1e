"""Endpoints from a cluster file (cluster.yaml), read without importing the server.

Only ``nodes[*].address`` matters to a client; the node validates the rest of the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from raftstate.client.errors import InvalidRequest


def endpoints_from_config(path: str | os.PathLike[str]) -> list[str]:
    """``["http://host:port", ...]`` for every node of the cluster file at ``path``."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(
            f"{p}: cannot read the cluster file ({exc.strerror or exc}); check the path"
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{p}: not valid YAML ({exc})") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise InvalidRequest(f"{p}: nodes: expected a non-empty list of {{id, address, data_dir}}")
    out: list[str] = []
    for i, node in enumerate(nodes):
        address = node.get("address") if isinstance(node, dict) else None
        if not isinstance(address, str) or ":" not in address or "://" in address:
            raise InvalidRequest(f'{p}: nodes[{i}].address: expected "host:port", got {address!r}')
        out.append(f"http://{address}")
    return out
