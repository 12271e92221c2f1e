"""Endpoints from a cluster file (cluster.yaml), read without importing the server.

A client needs ``nodes[*].address``, and from ``tls:`` only that the nodes speak https and the CA
to trust (``tls.ca``); its token comes from the environment (RAFTSTATE_TOKEN), never from the file.
The node validates the rest of the file itself.

:func:`read_cluster_file` is THE reader of the file's YAML, for the node too (node/config.py
``load_config``): one strict parse (duplicate keys refused, no arbitrary objects) and one
one-line message per problem naming the file, the line and column, and the fix — raised as the
caller's own error type (``InvalidRequest`` here, ``ConfigError`` in the node).
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


def read_cluster_file(
    path: str | os.PathLike[str], error: Callable[[str], Exception] = InvalidRequest
) -> Any:
    """The parsed YAML document of the cluster file at ``path`` (None when empty). Raises
    ``error(message)``: one line naming the file and, for bad YAML, the line, column and fix."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"{p}: cannot read the cluster file ({reason}); check the path and permissions") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        fix = "keep one of them" if isinstance(exc, _DuplicateKey) else "fix the YAML there"
        raise error(f"{p}: {where}: {exc.problem}; {fix}") from None
    except yaml.YAMLError as exc:
        raise error(f"{p}: not valid YAML ({exc}); fix the syntax") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain PyYAML keeps the last one silently)."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """Raised inside the YAML loader (so a yaml error first); read_cluster_file answers it."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise _DuplicateKey(
                None,
                None,
                f"key {yaml_repr(key)} appears twice (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    mapping: dict[Any, Any] = loader.construct_mapping(node)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_repr(value: object) -> str:
    """A value as a user would type it in the file: strings in double quotes, YAML spellings for
    the rest (node/config.py's messages show values this way too)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read(p: Path) -> dict[str, Any]:
    doc = read_cluster_file(p)
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
