"""The cluster file: one YAML document that every node of a cluster reads.

:func:`load_config` parses and validates the whole file before anything starts, so a typo fails
fast with ONE message naming the file, the field path and the fix::

    cluster.yaml: nodes[1].address: "127.0.0.1:7001" is already used by nodes[0] (n1);
    give every node its own host:port

Validation is pure: it reads the one file and never touches a data directory (creating or locking
those is the storage layer's job, at start-up of the one node that owns it).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import yaml

from raftstate.node.errors import ConfigError  # re-exported: the cluster file's error
from raftstate.node.security.config import AuthConfig, TlsConfig, parse_auth, parse_tls
from raftstate.raft.settings import RaftSettings

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "NodeConfig",
    "Settings",
    "load_config",
    "parse_address",
]

DEFAULT_CLUSTER_ID = "raftstate"

# Node and cluster ids travel in HTTP headers, URLs, metric labels and file names: keep them plain.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID_RULE = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True, slots=True)
class Settings:
    """Tunables shared by every node. All are positive integers; names carry their unit."""

    tick_ms: int = 50  #: one tick of the core's logical clock
    heartbeat_ms: int = 100  #: a multiple of tick_ms, less than election_timeout_ms
    election_timeout_ms: int = 500  #: base; a follower waits a random time in [e, 2e)
    snapshot_threshold: int = 10_000  #: entries applied since the last snapshot before taking a new one
    #: SQLite page cache of the state store (MiB): the node's memory for state, whatever the key count
    state_cache_mb: int = 64
    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    max_request_bytes: int = 4 << 20  #: >= max_key_bytes + max_value_bytes
    session_idle_timeout_s: int = (
        3600  #: a client session expires after this long without a write (cluster time)
    )
    #: outcomes one session may hold that its client has not acknowledged (exactly-once writes)
    max_session_results: int = 1000
    max_entries_per_msg: int = 256
    max_inflight_msgs: int = 64
    #: largest WebSocket frame between peers. A node's state store travels to a lagging follower as
    #: a file in chunks on a connection of its own (node/peers/snapshot_transfer.py), not in a frame;
    #: only a state held in memory (tests, tools) is shipped in one InstallSnapshot message.
    max_peer_frame_bytes: int = 256 << 20
    # Abuse limits (docs/security.md): refused before anything is proposed, each with its own code.
    max_keys_per_page: int = 1000  #: largest ``limit`` of GET /v1/keys
    max_sessions: int = 100_000  #: open client sessions, cluster-wide (also enforced at apply)
    max_locks: int = 100_000  #: held locks, cluster-wide (also enforced at apply)
    max_client_connections: int = 1000  #: open HTTP connections per node; beyond it new ones are closed
    client_body_timeout_s: int = 10  #: a request body must arrive within this (slow clients)
    # Watch (docs/watch.md): what one poll may ask, and the history each node keeps for it.
    watch_max_events: int = 1000  #: largest ``limit`` of one watch answer (larger asks are reduced)
    watch_max_wait_s: int = 60  #: longest ``timeout`` of one watch poll (larger asks are reduced)
    #: history kept for watches that resume or start back in time; the oldest whole revisions go first
    watch_history_events: int = 100_000
    watch_history_bytes: int = 64 << 20  #: keys + event bodies (values as written) of the kept history
    watch_history_age_s: int = 3600  #: cluster time an event is kept at most

    @property
    def heartbeat_ticks(self) -> int:
        assert self.heartbeat_ms % self.tick_ms == 0, "validated by load_config"
        return self.heartbeat_ms // self.tick_ms

    @property
    def election_ticks(self) -> int:
        assert self.election_timeout_ms % self.tick_ms == 0, "validated by load_config"
        return self.election_timeout_ms // self.tick_ms

    @property
    def raft_settings(self) -> RaftSettings:
        """The core's view of these settings (it counts in ticks, never in milliseconds)."""
        return RaftSettings(
            heartbeat_ticks=self.heartbeat_ticks,
            election_ticks=self.election_ticks,
            max_entries_per_msg=self.max_entries_per_msg,
            max_inflight_msgs=self.max_inflight_msgs,
        )


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    address: str  #: "host:port" that peers and clients connect to; the node listens on it too
    data_dir: Path  #: absolute (relative paths in the file resolve against the file's directory)

    @property
    def host(self) -> str:
        return parse_address(self.address)[0]

    @property
    def port(self) -> int:
        return parse_address(self.address)[1]


_AUTH_OFF = AuthConfig(enabled=False)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    path: Path  #: the file this was loaded from, as given (error messages name it)
    cluster_id: str
    nodes: tuple[NodeConfig, ...]  #: non-empty; ids, addresses and data dirs pairwise distinct
    settings: Settings
    auth: AuthConfig = _AUTH_OFF  #: load_config always sets it (explicitly)
    tls: dict[str, TlsConfig] | None = None  #: node id -> TLS files; None: plain HTTP

    def node(self, node_id: str) -> NodeConfig:
        for n in self.nodes:
            if n.id == node_id:
                return n
        known = ", ".join(n.id for n in self.nodes)
        raise ConfigError(
            f"{self.path}: nodes: no node has id {_show(node_id)}; known ids: {known}; "
            f"pass one of those, or add {node_id} under nodes:"
        )

    @property
    def addresses(self) -> dict[str, str]:
        """node id -> "host:port" for every node (what the transport's update_peers takes)."""
        return {n.id: n.address for n in self.nodes}

    def peers_of(self, node_id: str) -> dict[str, str]:
        self.node(node_id)  # raises the helpful error for an unknown id
        return {n.id: n.address for n in self.nodes if n.id != node_id}


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6-host]:port"). Raises ValueError saying what is wrong and how to fix it."""
    if "://" in address:
        raise ValueError("looks like a URL; write only host:port, without the scheme")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        sep, port_s = rest[:1], rest[1:]
    else:
        host, sep, port_s = address.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 host needs brackets, e.g. [::1]:7001")
    if sep != ":" or not host:
        raise ValueError("expected host:port, e.g. 127.0.0.1:7001")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"host {_show(host)} is not a hostname or IP address")
    if host in ("0.0.0.0", "::"):
        raise ValueError("a listen-on-all address is not one peers can connect to; use the node's own IP")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"port {_show(port_s)} is not a number in 1-65535")
    return host, int(port_s)


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and validate a cluster file. Raises :class:`ConfigError` with one actionable message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{p}: cannot read the cluster file ({reason}); check the path and permissions"
        ) from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        fix = "keep one of them" if isinstance(exc, _DuplicateKey) else "fix the YAML there"
        raise ConfigError(f"{p}: {where}: {exc.problem}; {fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc}); fix the syntax") from None
    return _Validator(p).cluster(doc)


# --------------------------------------------------------------------------- parsing


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain PyYAML keeps the last one silently)."""


class _DuplicateKey(yaml.constructor.ConstructorError, ConfigError):
    """Raised inside the YAML loader (so a yaml error first); load_config answers it as ConfigError."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise _DuplicateKey(
                None, None, f"key {_show(key)} appears twice (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    mapping: dict[Any, Any] = loader.construct_mapping(node)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# --------------------------------------------------------------------------- validation

_TOP_KEYS = ("cluster_id", "nodes", "settings", "auth", "tls")
_NODE_KEYS = ("id", "address", "data_dir")
_SETTING_KEYS = tuple(f.name for f in fields(Settings))
_EXAMPLES = {
    "nodes": '[{id: n1, address: "127.0.0.1:7001", data_dir: ./data/n1}, ...]',
    "id": "n1",
    "address": '"127.0.0.1:7001"',
    "data_dir": "./data/n1",
}


class _Validator:
    """Walks the parsed document; every check ends in :meth:`fail` with the field path and the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base_dir = Path(os.path.abspath(path)).parent

    def fail(self, field: str, problem: str, fix: str) -> NoReturn:
        raise ConfigError(f"{self.path}: {field}: {problem}; {fix}")

    def cluster(self, doc: object) -> ClusterConfig:
        if doc is None:
            raise ConfigError(f"{self.path}: the file is empty; it needs at least a nodes: list")
        if not isinstance(doc, dict):
            raise ConfigError(
                f"{self.path}: the top level is {_got(doc)}, expected a mapping with cluster_id, nodes, "
                "settings; see the cluster.yaml at the repository root"
            )
        self.keys(doc, "", _TOP_KEYS, required=("nodes",))
        cluster_id = doc.get("cluster_id", DEFAULT_CLUSTER_ID)
        self.ident(cluster_id, "cluster_id")
        nodes = self.nodes(doc["nodes"])
        settings = self.settings(doc.get("settings", {}))
        tls = parse_tls(doc.get("tls"), self.base_dir, tuple(n.id for n in nodes), self.fail)
        auth = parse_auth(doc.get("auth"), self.base_dir, self.fail)
        return ClusterConfig(self.path, cluster_id, nodes, settings, auth, tls or None)

    def keys(self, m: dict[Any, Any], at: str, known: tuple[str, ...], required: tuple[str, ...]) -> None:
        # Unknown keys first: a misspelt "adress" should say so, not report "address" as missing.
        for key in m:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
                self.fail(f"{at}{key}", "unknown key", hint)
        for key in required:
            if key not in m:
                example = f", e.g. {key}: {_EXAMPLES[key]}" if key in _EXAMPLES else ""
                self.fail(f"{at}{key}", "required key is missing", f"add it{example}")

    def ident(self, value: object, at: str) -> str:
        if not isinstance(value, str):
            if isinstance(value, bool):
                fix = "quote it (YAML reads bare yes/no/on/off as booleans)"
            elif isinstance(value, int | float):
                fix = f'quote it: "{value}"'
            else:
                fix = "write a plain name such as n1"
            self.fail(at, f"expected a string, got {_got(value)}", fix)
        if not _ID_RE.fullmatch(value):
            self.fail(at, f"{_show(value)} is not a valid id", _ID_RULE)
        return value

    def nodes(self, value: object) -> tuple[NodeConfig, ...]:
        if not isinstance(value, list):
            self.fail(
                "nodes",
                f"expected a list of nodes, got {_got(value)}",
                "write one '- {id: ..., address: ..., data_dir: ...}' per node",
            )
        if not value:
            self.fail("nodes", "the list is empty", "list at least one node")
        out: list[NodeConfig] = []
        for i, raw in enumerate(value):
            node = self.node(raw, f"nodes[{i}]")
            self.distinct(node, i, out)
            out.append(node)
        return tuple(out)

    def node(self, raw: object, at: str) -> NodeConfig:
        if not isinstance(raw, dict):
            self.fail(
                at,
                f"expected a mapping, got {_got(raw)}",
                'write {id: n1, address: "host:port", data_dir: ./data/n1}',
            )
        self.keys(raw, f"{at}.", _NODE_KEYS, required=_NODE_KEYS)
        node_id = self.ident(raw["id"], f"{at}.id")
        address = raw["address"]
        if not isinstance(address, str):
            self.fail(
                f"{at}.address",
                f"expected a string, got {_got(address)}",
                'write it as "host:port"',
            )
        try:
            parse_address(address)
        except ValueError as exc:
            self.fail(f"{at}.address", f"{_show(address)} is not usable", str(exc))
        data_dir = raw["data_dir"]
        if not isinstance(data_dir, str) or not data_dir.strip():
            self.fail(
                f"{at}.data_dir",
                f"expected a directory path, got {_got(data_dir)}",
                "e.g. data_dir: ./data/n1",
            )
        # Pure path arithmetic (no resolve()): validation must not touch the filesystem.
        resolved = Path(os.path.normpath(self.base_dir / os.path.expanduser(data_dir)))
        return NodeConfig(node_id, address, resolved)

    def distinct(self, node: NodeConfig, i: int, earlier: list[NodeConfig]) -> None:
        host, port = parse_address(node.address)
        for j, other in enumerate(earlier):
            who = f"nodes[{j}] ({other.id})"
            if other.id == node.id:
                self.fail(
                    f"nodes[{i}].id",
                    f"{_show(node.id)} is already used by nodes[{j}]",
                    "give every node its own id",
                )
            o_host, o_port = parse_address(other.address)
            if (o_host.lower(), o_port) == (host.lower(), port):
                self.fail(
                    f"nodes[{i}].address",
                    f"{_show(node.address)} is already used by {who}",
                    "give every node its own host:port",
                )
            if node.data_dir == other.data_dir:
                self.fail(
                    f"nodes[{i}].data_dir",
                    f"{node.data_dir} is already used by {who}",
                    "give every node its own directory",
                )
            inside = node.data_dir.is_relative_to(other.data_dir)
            if inside or other.data_dir.is_relative_to(node.data_dir):
                self.fail(
                    f"nodes[{i}].data_dir",
                    f"{node.data_dir} {'is inside' if inside else 'contains'} {other.data_dir}, "
                    f"the data_dir of {who}",
                    "nodes must not share or nest data directories; use siblings like ./data/n1, ./data/n2",
                )

    def settings(self, raw: object) -> Settings:
        if raw is None:
            raw = {}  # "settings:" with nothing under it means all defaults
        if not isinstance(raw, dict):
            self.fail(
                "settings",
                f"expected a mapping, got {_got(raw)}",
                "write 'key: value' lines under settings:, or remove it",
            )
        self.keys(raw, "settings.", _SETTING_KEYS, required=())
        defaults = Settings()
        for key, value in raw.items():
            fix = f"use e.g. {getattr(defaults, key)}, or remove the key for that default"
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(f"settings.{key}", f"expected a whole number{_unit(key)}, got {_got(value)}", fix)
            if value <= 0:
                self.fail(f"settings.{key}", f"{value} is not positive", fix)
        s = Settings(**raw)
        self.settings_agree(s)
        return s

    def settings_agree(self, s: Settings) -> None:
        """Cross-field rules, as a table: (field, broken?, problem, fix)."""
        rules: list[tuple[str, bool, str, str]] = [
            (
                "settings.heartbeat_ms",
                s.heartbeat_ms >= s.election_timeout_ms,
                f"{s.heartbeat_ms} is not less than election_timeout_ms ({s.election_timeout_ms}), "
                "so followers would time out between heartbeats",
                "make heartbeat_ms a fraction of election_timeout_ms (a fifth to a tenth is usual)",
            ),
            (
                "settings.heartbeat_ms",
                s.heartbeat_ms % s.tick_ms != 0,
                f"{s.heartbeat_ms} is not a multiple of tick_ms ({s.tick_ms}); the core counts whole ticks",
                f"use {_round_to(s.heartbeat_ms, s.tick_ms)} or change tick_ms",
            ),
            (
                "settings.election_timeout_ms",
                s.election_timeout_ms % s.tick_ms != 0,
                f"{s.election_timeout_ms} is not a multiple of tick_ms ({s.tick_ms}); "
                "the core counts whole ticks",
                f"use {_round_to(s.election_timeout_ms, s.tick_ms)} or change tick_ms",
            ),
            (
                "settings.max_request_bytes",
                s.max_request_bytes < s.max_key_bytes + s.max_value_bytes,
                f"{s.max_request_bytes} is less than max_key_bytes + max_value_bytes "
                f"({s.max_key_bytes + s.max_value_bytes}), so a largest allowed write would be refused",
                f"raise it to at least {s.max_key_bytes + s.max_value_bytes} "
                "plus room for the request envelope",
            ),
            (
                "settings.max_session_results",
                s.max_session_results > 1_000_000,
                f"{s.max_session_results} is more outcomes than one session may remember",
                "use at most 1000000 (the default 1000 suits clients that acknowledge as they go)",
            ),
            (
                "settings.max_peer_frame_bytes",
                s.max_peer_frame_bytes < s.max_request_bytes + (1 << 20),
                f"{s.max_peer_frame_bytes} leaves no room to replicate one max_request_bytes "
                f"({s.max_request_bytes}) entry with its batch",
                f"raise it to at least max_request_bytes + 1 MiB ({s.max_request_bytes + (1 << 20)})",
            ),
            *_watch_rules(s),
        ]
        for field, broken, problem, fix in rules:
            if broken:
                self.fail(field, problem, fix)


def _watch_rules(s: Settings) -> list[tuple[str, bool, str, str]]:
    """The watch settings' cross-field rules (docs/watch.md, "Settings")."""
    one_write = s.max_key_bytes + s.max_value_bytes
    return [
        (
            "settings.watch_max_events",
            s.watch_max_events > 100_000,
            f"{s.watch_max_events} events is more than one watch answer may carry (the node builds "
            "the answer in memory)",
            "use at most 100000 (the default 1000 suits clients that poll as they go)",
        ),
        (
            "settings.watch_max_wait_s",
            s.watch_max_wait_s > 3600,
            f"{s.watch_max_wait_s} s is longer than a poll should stay parked (proxies and load "
            "balancers cut idle requests far sooner)",
            "use at most 3600 (the default 60 is well within common idle timeouts)",
        ),
        (
            "settings.watch_history_events",
            s.watch_history_events < s.watch_max_events,
            f"{s.watch_history_events} is less than watch_max_events ({s.watch_max_events}): the node "
            "would keep less history than one answer may carry",
            f"raise it to at least {s.watch_max_events} (the default is 100000)",
        ),
        (
            "settings.watch_history_bytes",
            s.watch_history_bytes < one_write,
            f"{s.watch_history_bytes} cannot hold the event of one largest write (max_key_bytes + "
            f"max_value_bytes = {one_write}): history would be pruned as soon as it is written",
            f"raise it to at least {one_write}; the default 67108864 (64 MiB) holds thousands",
        ),
    ]


# --------------------------------------------------------------------------- message helpers


def _show(value: object) -> str:
    """A value as a user would type it: strings in double quotes, YAML spellings for the rest."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _got(value: object) -> str:
    """What the file holds, for "expected X, got ..." messages."""
    if value is None:
        return "null"
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),  # before int: bool is an int subclass
        (int, "an integer"),
        (float, "a number with a fraction"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
    ]
    for t, kind in kinds:
        if isinstance(value, t):
            return kind if isinstance(value, list | dict) else f"{kind} {_show(value)}"
    return f"a {type(value).__name__}"


def _unit(key: str) -> str:
    for suffix, unit in (("_ms", " of milliseconds"), ("_s", " of seconds"), ("_bytes", " of bytes")):
        if key.endswith(suffix):
            return unit
    return ""


def _round_to(value: int, step: int) -> int:
    return max(step, round(value / step) * step)
