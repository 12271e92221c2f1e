"""The bootstrap record: what a node's data dir remembers about how it first joined its cluster.

``<data_dir>/bootstrap.json`` is written once, at the first start, and never changes::

    {"format": 1, "node_id", "cluster_id", "address", "membership": [voters, learners, addresses],
     "settings": {...} | null}

Why: the Raft core starts from a *bootstrap membership* that the log and snapshots then override
(config entries carry the whole resulting membership). If that starting point were re-read from
cluster.yaml at every start, editing the file before the first membership change would silently
give one node a different idea of the cluster than the others. So cluster.yaml (or the member asked
by ``--join``) is read only once; afterwards this record, then the log/snapshot, are the truth.

A joined node has no entry in any cluster.yaml: its record also keeps its own address and the
cluster's settings, so ``raftstate node --data-dir DIR`` (or the same ``--join`` command) restarts it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from raftstate.node.config import ClusterConfig, ConfigError, NodeConfig, Settings
from raftstate.node.storage.data_dir import atomic_write
from raftstate.raft import Membership

__all__ = ["BootstrapRecord", "read_record", "resolve_bootstrap", "write_record"]

log = logging.getLogger("raftstate.node")

FILE_NAME = "bootstrap.json"
_FORMAT = 1


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapRecord:
    node_id: str
    cluster_id: str
    address: str
    membership: Membership
    settings: Settings | None  #: kept for joined nodes (they have no cluster.yaml)

    def to_json(self) -> bytes:
        body = {
            "format": _FORMAT,
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "address": self.address,
            "membership": self.membership.to_wire(),
            "settings": dataclasses.asdict(self.settings) if self.settings else None,
        }
        return json.dumps(body, indent=1).encode() + b"\n"

    def cluster_config(self, data_dir: Path) -> ClusterConfig:
        """A one-node ClusterConfig for a joined node (its peers come from the membership)."""
        if self.settings is None:
            raise ConfigError(f"{data_dir / FILE_NAME}: has no settings; start this node with --config")
        return ClusterConfig(
            path=data_dir / FILE_NAME,
            cluster_id=self.cluster_id,
            nodes=(NodeConfig(self.node_id, self.address, data_dir.resolve()),),
            settings=self.settings,
        )


def settings_from_wire(raw: dict[str, Any]) -> Settings:
    """Settings as sent by ``GET /v1/members`` (unknown fields from a newer node are ignored)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {k: v if isinstance(v, bool) else int(v) for k, v in raw.items() if k in known}
    return Settings(**values)


def read_record(data_dir: Path) -> BootstrapRecord | None:
    path = data_dir / FILE_NAME
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_bytes())
        if doc["format"] != _FORMAT:
            raise ValueError(f"unsupported format {doc['format']!r}")
        return BootstrapRecord(
            node_id=str(doc["node_id"]),
            cluster_id=str(doc["cluster_id"]),
            address=str(doc["address"]),
            membership=Membership.from_wire(doc["membership"]),
            settings=settings_from_wire(doc["settings"]) if doc["settings"] else None,
        )
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ConfigError(
            f"{path}: unreadable bootstrap record ({exc}); restore the file from a backup of this "
            "data dir, or replace the node (docs/operations.md, 'Replacing a node')"
        ) from exc


def write_record(data_dir: Path, record: BootstrapRecord) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(data_dir / FILE_NAME, [record.to_json()], None)


def config_membership(config: ClusterConfig) -> Membership:
    return Membership(
        voters=frozenset(n.id for n in config.nodes), addresses=tuple(sorted(config.addresses.items()))
    )


def resolve_bootstrap(
    data_dir: Path, node_id: str, config: ClusterConfig, joining: Membership | None
) -> Membership:
    """The bootstrap membership to start the core from: the data dir's record if there is one
    (written now at the first start, from ``joining`` or else from cluster.yaml)."""
    rec = read_record(data_dir)
    if rec is None:
        membership = joining if joining is not None else config_membership(config)
        me = config.node(node_id)
        write_record(
            data_dir,
            BootstrapRecord(
                node_id, config.cluster_id, me.address, membership, config.settings if joining else None
            ),
        )
        return membership
    if rec.node_id != node_id or rec.cluster_id != config.cluster_id:
        raise ConfigError(
            f"{data_dir / FILE_NAME}: this data dir belongs to node {rec.node_id} of cluster "
            f"{rec.cluster_id}, not {node_id} of {config.cluster_id}; point --data-dir elsewhere"
        )
    if joining is None and rec.settings is None and config_membership(config).voters != rec.membership.voters:
        log.warning(
            "node %s: cluster.yaml lists %s but this cluster bootstrapped with %s; cluster.yaml is only "
            "read at a node's first start (the log decides membership now: see `raftstate member list`)",
            node_id,
            sorted(n.id for n in config.nodes),
            sorted(rec.membership.voters),
        )
    return rec.membership
