"""The ``auth:`` and ``tls:`` sections of the cluster file, and reading the secrets they point to.

Secrets never sit in the file itself: every token and the cluster secret is a *reference*, either
``{env: NAME}`` (an environment variable) or ``{file: path}`` (a file holding it; relative paths
resolve against the cluster file's directory). :func:`load_config` checks only the shape, so an
operator running ``raftstate status`` needs none of the node's secrets; :func:`resolve_auth` reads
them when a node starts and fails with a :class:`ConfigError` naming the variable or file::

    auth:
      enabled: true
      cluster_secret: {env: RAFTSTATE_CLUSTER_SECRET}
      tokens:
        - {name: ops, role: admin, env: RAFTSTATE_ADMIN_TOKEN}
        - {name: workers, role: write, file: ./secrets/workers.token}
      open: [metrics]            # optional: serve /metrics (and/or status) without a token
    tls:                         # optional
      cert: ./certs/n1.pem       # one cert for all nodes (SANs) or {node id}: per-node files
      key: ./certs/n1.key
      ca: ./certs/ca.pem

Auth is off only with an explicit ``auth: {enabled: false}``; a missing section is an error.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from raftstate.client import protocol as p
from raftstate.node.errors import ConfigError

__all__ = [
    "MIN_SECRET_CHARS",
    "TLS_ANY_NODE",
    "AuthConfig",
    "ResolvedAuth",
    "Role",
    "SecretRef",
    "TlsConfig",
    "TokenConfig",
    "parse_auth",
    "parse_tls",
    "resolve_auth",
]

#: key of ``parse_tls``'s result for the files every node uses (not a valid node id)
TLS_ANY_NODE = "*"

#: shortest token or cluster secret accepted: 16 characters (e.g. ``openssl rand -hex 16`` gives 32)
MIN_SECRET_CHARS = 16

Fail = Callable[[str, str, str], NoReturn]


class Role(enum.IntEnum):
    """What a token may do; a higher role includes every lower one (admin ⊇ write ⊇ read)."""

    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: ``kind`` is "env" or "file"; ``where`` the variable name or the path."""

    kind: str
    where: str
    field: str  #: the config path that named it, for error messages (e.g. "auth.tokens[1]")

    def describe(self) -> str:
        return f"environment variable {self.where}" if self.kind == "env" else f"file {self.where}"


@dataclass(frozen=True, slots=True)
class TokenConfig:
    name: str  #: shown in logs and metrics instead of the token
    role: Role
    secret: SecretRef


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool
    cluster_secret: SecretRef | None = None  #: required when enabled
    tokens: tuple[TokenConfig, ...] = ()
    #: operations endpoints served without a token: any of "metrics", "status"
    open_endpoints: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ResolvedAuth:
    """The secrets, read. Never logged or rendered (repr hides them)."""

    enabled: bool
    cluster_secret: bytes
    tokens: tuple[tuple[str, Role, bytes], ...]  #: (name, role, token bytes)
    open_endpoints: frozenset[str]

    def __repr__(self) -> str:
        return f"ResolvedAuth(enabled={self.enabled}, tokens={[n for n, _, _ in self.tokens]})"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path


#: endpoints auth.open may make public: the rows marked ``openable`` in client/protocol.py
_OPENABLE = tuple(sorted(ep.name for ep in p.ENDPOINTS if ep.openable))
_AUTH_KEYS = ("enabled", "cluster_secret", "tokens", "open")
_TOKEN_KEYS = ("name", "role", "env", "file")
_TLS_KEYS = ("cert", "key", "ca")
_ROLES = {r.name.lower(): r for r in Role}


def parse_auth(raw: object, base_dir: Path, fail: Fail) -> AuthConfig:
    if raw is None:
        fail(
            "auth",
            "the section is missing; a node never runs without authentication by accident",
            "add 'auth: {enabled: false}' to run open (a warning is logged), or configure tokens and "
            "a cluster_secret (README: Securing a cluster)",
        )
    if not isinstance(raw, dict):
        fail("auth", f"expected a mapping, got {type(raw).__name__}", "write auth: {enabled: true, ...}")
    _known(raw, "auth.", _AUTH_KEYS, fail)
    enabled = raw.get("enabled")
    if not isinstance(enabled, bool):
        fail("auth.enabled", f"expected true or false, got {enabled!r}", "say enabled: true or false")
    open_raw = raw.get("open", [])
    if not isinstance(open_raw, list) or any(o not in _OPENABLE for o in open_raw):
        fail("auth.open", f"{open_raw!r} is not a list of {', '.join(_OPENABLE)}", "e.g. open: [metrics]")
    if not enabled:
        return AuthConfig(False, open_endpoints=frozenset(_OPENABLE))
    if "cluster_secret" not in raw:
        fail(
            "auth.cluster_secret",
            "required when auth is enabled (peers prove membership with it)",
            "add cluster_secret: {env: RAFTSTATE_CLUSTER_SECRET} and set that variable on every node",
        )
    secret = _ref(raw["cluster_secret"], "auth.cluster_secret", base_dir, fail)
    tokens_raw = raw.get("tokens")
    if not isinstance(tokens_raw, list) or not tokens_raw:
        fail(
            "auth.tokens",
            "expected a non-empty list of tokens",
            "add e.g. - {name: ops, role: admin, env: RAFTSTATE_ADMIN_TOKEN}",
        )
    tokens: list[TokenConfig] = []
    for i, t in enumerate(tokens_raw):
        at = f"auth.tokens[{i}]"
        if not isinstance(t, dict):
            fail(at, f"expected a mapping, got {type(t).__name__}", "write {name, role, env|file}")
        _known(t, f"{at}.", _TOKEN_KEYS, fail)
        name = t.get("name")
        if not isinstance(name, str) or not name:
            fail(f"{at}.name", "required: a non-empty name", "name it (shown in logs instead of the token)")
        if any(name == o.name for o in tokens):
            fail(f"{at}.name", f"{name!r} is used twice", "give every token its own name")
        role = _ROLES.get(str(t.get("role")))
        if role is None:
            fail(f"{at}.role", f"{t.get('role')!r} is not a role", f"use one of {', '.join(_ROLES)}")
        ref = {k: v for k, v in t.items() if k in ("env", "file")}
        tokens.append(TokenConfig(name, role, _ref(ref, at, base_dir, fail)))
    return AuthConfig(True, secret, tuple(tokens), frozenset(open_raw))


def parse_tls(raw: object, base_dir: Path, node_ids: tuple[str, ...], fail: Fail) -> dict[str, TlsConfig]:
    """node id -> its TLS files ({} when the section is absent). ``cert``/``key`` are one path for
    every node, or a mapping node id -> path."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail("tls", f"expected a mapping, got {type(raw).__name__}", "write tls: {cert, key, ca}")
    _known(raw, "tls.", _TLS_KEYS, fail)
    for k in _TLS_KEYS:
        if k not in raw:
            fail(f"tls.{k}", "required key is missing", "give cert, key and ca (scripts/make_certs.py)")
    ca = _path(raw["ca"], "tls.ca", base_dir, fail)
    out: dict[str, TlsConfig] = {}
    # Per-node files may also name nodes not (yet) in nodes:, e.g. one that joins with --join.
    extra = [k for k in raw["cert"] if k not in node_ids] if isinstance(raw["cert"], dict) else []
    for nid in (*node_ids, *extra):
        parts = []
        for k in ("cert", "key"):
            v = raw[k]
            if isinstance(v, dict):
                if nid not in v:
                    fail(f"tls.{k}", f"no entry for node {nid}", f"add {nid}: path, or give one path")
                v = v[nid]
            parts.append(_path(v, f"tls.{k}", base_dir, fail))
        out[nid] = TlsConfig(parts[0], parts[1], ca)
    if not isinstance(raw["cert"], dict) and not isinstance(raw["key"], dict):
        # One pair for every node: also for a node that joins later (node/peers/join.py).
        out[TLS_ANY_NODE] = TlsConfig(
            _path(raw["cert"], "tls.cert", base_dir, fail), _path(raw["key"], "tls.key", base_dir, fail), ca
        )
    return out


def resolve_auth(auth: AuthConfig, config_path: Path, env: Mapping[str, str] | None = None) -> ResolvedAuth:
    """Read every secret. Raises ConfigError naming the variable/file that is missing or too short."""
    environ = os.environ if env is None else env
    if not auth.enabled:
        return ResolvedAuth(False, b"", (), auth.open_endpoints)

    def read(ref: SecretRef) -> bytes:
        if ref.kind == "env":
            value = environ.get(ref.where)
            if value is None:
                raise ConfigError(
                    f"{config_path}: {ref.field}: environment variable {ref.where} is not set; "
                    f"export it on this node (e.g. export {ref.where}=$(openssl rand -hex 32))"
                )
        else:
            try:
                value = Path(ref.where).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise ConfigError(
                    f"{config_path}: {ref.field}: cannot read file {ref.where} ({reason}); "
                    "check the path and its permissions"
                ) from None
        value = value.strip()
        if len(value) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"{config_path}: {ref.field}: the {ref.describe()} holds {len(value)} characters, fewer "
                f"than {MIN_SECRET_CHARS}; use a random secret (e.g. openssl rand -hex 32)"
            )
        return value.encode("utf-8")

    assert auth.cluster_secret is not None, "parse_auth requires it when enabled"
    secret = read(auth.cluster_secret)
    tokens = tuple((t.name, t.role, read(t.secret)) for t in auth.tokens)
    return ResolvedAuth(True, secret, tokens, auth.open_endpoints)


def _known(m: dict[Any, Any], at: str, known: tuple[str, ...], fail: Fail) -> None:
    for key in m:
        if key not in known:
            fail(f"{at}{key}", "unknown key", f"known keys: {', '.join(known)}")


def _ref(raw: object, at: str, base_dir: Path, fail: Fail) -> SecretRef:
    if isinstance(raw, str):
        fail(
            at,
            "a secret written in the file itself",
            "never store secrets in cluster.yaml: write {env: NAME} or {file: path}",
        )
    if not isinstance(raw, dict) or len(raw) != 1 or not ({"env", "file"} & set(raw)):
        fail(at, f"expected {{env: NAME}} or {{file: path}}, got {raw!r}", "give exactly one of env or file")
    kind, where = next(iter(raw.items()))
    if not isinstance(where, str) or not where:
        fail(f"{at}.{kind}", f"expected a non-empty string, got {where!r}", "name the variable or file")
    if kind == "file":
        where = os.path.normpath(base_dir / os.path.expanduser(where))
    return SecretRef(kind, where, at)


def _path(raw: object, at: str, base_dir: Path, fail: Fail) -> Path:
    if not isinstance(raw, str) or not raw:
        fail(at, f"expected a file path, got {raw!r}", "e.g. ./certs/ca.pem")
    return Path(os.path.normpath(base_dir / os.path.expanduser(raw)))
