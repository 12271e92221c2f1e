"""Endpoints from a cluster file (cluster.yaml), read without importing the server.

A client needs ``nodes[*].address``, and from ``tls:`` only that the nodes speak https and the CA
to trust (``tls.ca``); its token comes from the environment (RAFTSTATE_TOKEN), never from the file.
The node validates the rest of the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import yaml

from raftstate.client.errors import InvalidRequest

#: the environment variable a client reads its token from (CLI and ``from_config``)
TOKEN_ENV: Final = "RAFTSTATE_TOKEN"


def client_args(path: str | os.PathLike[str], kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Endpoints and client keyword arguments for the cluster file at ``path``: ``ca`` from
    ``tls.ca`` and ``token`` from $RAFTSTATE_TOKEN (or ``token_env``), unless ``kwargs`` gives them."""
    kw = dict(kwargs)
    token_env = kw.pop("token_env", TOKEN_ENV)
    doc = _read(Path(path))
    tls = doc.get("tls")
    if isinstance(tls, dict) and "ca" not in kw and isinstance(tls.get("ca"), str):
        kw["ca"] = os.path.normpath(Path(os.path.abspath(path)).parent / os.path.expanduser(tls["ca"]))
    if "token" not in kw and os.environ.get(token_env):
        kw["token"] = os.environ[token_env]
    return endpoints_from_config(path, https=isinstance(tls, dict)), kw


def _read(p: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(
            f"{p}: cannot read the cluster file ({exc.strerror or exc}); check the path"
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{p}: not valid YAML ({exc})") from None
    return doc if isinstance(doc, dict) else {}


def endpoints_from_config(path: str | os.PathLike[str], *, https: bool = False) -> list[str]:
    """``["http://host:port", ...]`` (https with ``https``) for every node of the cluster file."""
    p = Path(path)
    doc = _read(p)
    nodes = doc.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise InvalidRequest(f"{p}: nodes: expected a non-empty list of {{id, address, data_dir}}")
    out: list[str] = []
    for i, node in enumerate(nodes):
        address = node.get("address") if isinstance(node, dict) else None
        if not isinstance(address, str) or ":" not in address or "://" in address:
            raise InvalidRequest(f'{p}: nodes[{i}].address: expected "host:port", got {address!r}')
        out.append(f"{'https' if https else 'http'}://{address}")
    return out
