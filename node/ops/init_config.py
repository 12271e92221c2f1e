"""``raftstate init [PATH] [--auth]``: write a commented cluster file, so a pip install can start.

Without ``--auth`` the file turns auth off explicitly (fine on 127.0.0.1). With ``--auth`` it also
writes generated secrets — the cluster secret and an admin, a write and a read token — one per file
under ``secrets/`` next to the cluster file (the directory mode 0700, each file 0600, created with
that mode: never readable by others, not even for a moment), and the file refers to them by path.
Nothing is overwritten: an existing file is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from raftstate.node.errors import ConfigError

__all__ = ["InitResult", "write_cluster_file"]

#: the token files ``--auth`` writes: (file name, role), the first is what an operator uses
TOKEN_FILES = (("admin.token", "admin"), ("write.token", "write"), ("read.token", "read"))
SECRET_FILE = "cluster_secret"


@dataclass(frozen=True, slots=True)
class InitResult:
    config: Path
    secrets_dir: Path | None  #: with --auth: where the secrets are
    addresses: list[str]


def write_cluster_file(
    path: Path, *, auth: bool = False, nodes: int = 3, host: str = "127.0.0.1", base_port: int = 7001
) -> InitResult:
    if path.exists():
        raise ConfigError(f"{path} already exists; pass another PATH, or remove it first")
    if not 1 <= nodes <= 9:
        raise ConfigError(f"--nodes {nodes}: a cluster has 1 to 9 nodes here (3 or 5 tolerate failures)")
    path.parent.mkdir(parents=True, exist_ok=True)
    addresses = [f"{host}:{base_port + i}" for i in range(nodes)]
    secrets_dir = path.parent / "secrets" if auth else None
    if secrets_dir is not None:
        _write_secrets(secrets_dir)
    text = _render(addresses, f"local-{secrets.token_hex(3)}", auth)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return InitResult(path, secrets_dir, addresses)


def _write_secrets(directory: Path) -> None:
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    names = [SECRET_FILE, *(name for name, _ in TOKEN_FILES)]
    taken = [n for n in names if (directory / n).exists()]
    if taken:
        raise ConfigError(f"{directory}: {', '.join(taken)} already exist; remove them or init elsewhere")
    for name in names:
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(24) + "\n")


def _render(addresses: list[str], cluster_id: str, auth: bool) -> str:
    node_lines = "\n".join(
        f'  - {{id: n{i + 1}, address: "{a}", data_dir: ./data/n{i + 1}}}' for i, a in enumerate(addresses)
    )
    if auth:
        auth_block = f"""\
# Auth is ON. Secrets live in files next to this one (secrets/, mode 0600), never in this file.
# Clients and tools: RAFTSTATE_TOKEN=$(cat secrets/admin.token) raftstate status
auth:
  enabled: true
  cluster_secret: {{file: ./secrets/{SECRET_FILE}}}   # peers prove membership with it
  tokens:
""" + "".join(f"    - {{name: {role}, role: {role}, file: ./secrets/{name}}}\n" for name, role in TOKEN_FILES)
    else:
        auth_block = """\
# Auth is OFF, explicitly (every node logs a warning): fine on 127.0.0.1, not on a network.
# `raftstate init --auth` writes a file with generated tokens instead (README "Securing a cluster").
auth: {enabled: false}
"""
    return f"""\
# A raftstate cluster, written by `raftstate init`. Every node reads this same file:
#   raftstate cluster up --config THIS_FILE                  every node as a child process
#   raftstate node --config THIS_FILE --id n1                one node (n2, n3 ...) in the foreground
# Relative paths (data_dir, secrets) resolve against this file's directory.
cluster_id: {cluster_id}            # nodes refuse peers whose cluster_id differs
nodes:                              # id, host:port for peers and clients, data dir (one per node)
{node_lines}
{auth_block}settings:                           # all optional; these are the defaults
  tick_ms: 50
  heartbeat_ms: 100                 # a multiple of tick_ms, well below election_timeout_ms
  election_timeout_ms: 500          # base; a follower waits a random time in [e, 2e)
  snapshot_threshold: 10000         # entries applied since the last snapshot before taking a new one
  state_cache_mb: 64                # SQLite page cache of the state store (MiB): memory for state
  session_idle_timeout_s: 3600      # a client session expires after this long without a write
  max_sessions: 100000              # open client sessions, cluster-wide
  max_locks: 100000                 # held locks, cluster-wide
# Every setting, with its meaning: the README's configuration table.
"""
