"""Seed the data dirs of a NEW cluster from a backup file, and describe a backup file.

``restore(backup, config)`` replays the backup (its snapshot plus entries: node/ops/backup_state.py)
into the state at the backup's index, then writes, for every node of ``config``: the data dir's
meta (new cluster id), that state as an installed snapshot at the backup's index and term (the membership in
its metadata is the new config's nodes, all voters), a hard state at that term, and the bootstrap
record. Started, the nodes elect a leader and carry on from the backup's index:

- same data: keys with versions, counters, locks with their tokens and holders, sessions with their
  remembered outcomes (exactly-once retries keep working against the restored cluster);
- cluster time continues from the backup's ``time_ms``: the log's last stamp is that time, and the
  leader stamps ``max(its clock, last stamp)``, so cluster time never goes backwards. TTLs and lock
  leases are absolute cluster times: a lease that ran out while the cluster was down is expired.
- a new cluster id is required: a restored node can then never exchange messages with a node of
  the old cluster (the transport refuses a different cluster id).
"""

from __future__ import annotations

from pathlib import Path

from raftstate.node.config import ClusterConfig
from raftstate.node.ops.backup_file import BackupError, BackupHeader, read_backup
from raftstate.node.ops.backup_state import SnapshotMovedOn, decode_payload, rebuild_state
from raftstate.node.peers.bootstrap import BootstrapRecord, config_membership, write_record
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.storage.store import DiskStorage
from raftstate.raft import HardState, SnapshotMeta
from raftstate.raft.ready import SnapshotToInstall

__all__ = ["describe", "restore"]


def restore(backup: Path, config: ClusterConfig) -> list[str]:
    """Seed every node's data dir of ``config``; returns one line per node. Raises BackupError."""
    header, data = read_backup(backup)
    state = check_state(backup, header, data).snapshot()
    if header.cluster_id == config.cluster_id:
        raise BackupError(
            f"{config.path}: cluster_id {config.cluster_id!r} is the backed-up cluster's; give the "
            "restored cluster a new cluster_id so its nodes can never mix with the old cluster's"
        )
    for n in config.nodes:
        if n.data_dir.exists() and any(n.data_dir.iterdir()):
            raise BackupError(
                f"{config.path}: {n.id}'s data dir {n.data_dir} is not empty; restore seeds new data "
                "dirs only: move it away (or point data_dir elsewhere) and run restore again"
            )
    membership = config_membership(config)
    meta = SnapshotMeta(header.index, header.term, membership, header.time_ms)
    lines = []
    for n in config.nodes:
        n.data_dir.mkdir(parents=True, exist_ok=True)
        with DiskStorage(n.data_dir, node_id=n.id, cluster_id=config.cluster_id) as storage:
            storage.load()
            storage.save(HardState(header.term, None, header.index), [], SnapshotToInstall(meta, state))
        write_record(
            n.data_dir, BootstrapRecord(n.id, config.cluster_id, n.address, membership, settings=None)
        )
        lines.append(f"{n.id}: seeded {n.data_dir} at index {header.index}, term {header.term}")
    return lines


def check_state(path: Path, header: BackupHeader, data: bytes) -> KVStateMachine:
    """The state the backup stands for: its snapshot plus its entries, replayed (a checksum proves
    integrity, not that this version can read it)."""
    try:
        base_index, snapshot, entries = decode_payload(data)
        if base_index != header.base_index:
            raise ValueError(f"the data starts at {base_index}, the header says {header.base_index}")
        sm = rebuild_state(base_index, snapshot, entries, header.index)
    except (ValueError, KeyError, TypeError, AssertionError, SnapshotMovedOn) as exc:
        raise BackupError(f"{path}: the state section does not decode ({exc})") from exc
    return sm


def describe(path: Path) -> tuple[BackupHeader, dict[str, int]]:
    """Verify ``path`` and count what it holds (decoded, not taken from the header)."""
    header, data = read_backup(path)
    sm = check_state(path, header, data)
    counts = {"keys": len(sm.keys), "locks": len(sm.locks), "sessions": len(sm.sessions)}
    return header, counts
