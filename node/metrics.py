"""Prometheus metrics of one node, in a registry of its own.

Not the global registry: tests and the simulator run several nodes in one process, and each must
render only its own numbers. Every metric is named ``raftstate_*`` and carries its unit in the name.
Beside them: the process (CPU, memory, open files) and Python GC collectors (``process_*``,
``python_gc_*``: GC pauses are a known cause of missed heartbeats), and no ``*_created`` series
(a timestamp per counter and histogram child that dashboards never use: ~40 % of the lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from raftstate.raft.ready import Role

__all__ = ["NodeMetrics"]

# fsync on SSDs is ~0.1-2 ms, on spinning or cloud disks 5-50 ms, and a sick disk stalls for a second.
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A request waits for a quorum fsync round trip: sub-millisecond reads up to multi-second elections.
REQUEST_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNAPSHOT_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A snapshot file to a lagging follower: megabytes in well under a second on a LAN, hundreds of MB
# over a rate-capped or slow link in minutes.
TRANSFER_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class NodeMetrics:
    """Typed handles to every metric of a node; the node layer updates them, ``/metrics`` renders them."""

    #: The classic text format, served as /metrics's Content-Type. Newer prometheus_client names "1.0.0"
    #: its latest, which only matters for UTF-8 metric names; ours are plain, and every Prometheus
    #: version accepts 0.0.4.
    CONTENT_TYPE: ClassVar[str] = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, node_id: str = "", cluster_id: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info{version, implementation}
        if GC_COLLECTOR is not None:  # python_gc_collections_total etc.; CPython only
            GCCollector(registry=r)
        info = Gauge(
            "raftstate_node_info",
            "Constant 1, labelled with who this node is",
            ["node_id", "cluster_id"],
            registry=r,
        )
        info.labels(node_id=node_id, cluster_id=cluster_id).set(1)

        # consensus
        self.proposals_total = Counter(
            "raftstate_proposals", "Commands proposed to the core on this node", registry=r
        )
        self.committed_index = Gauge(
            "raftstate_committed_index", "Highest log index known committed", registry=r
        )
        self.applied_index = Gauge(
            "raftstate_applied_index", "Highest log index applied to the state machine", registry=r
        )
        # invariant: applied <= committed, so this is never negative
        self.apply_lag = Gauge("raftstate_apply_lag_entries", "committed_index - applied_index", registry=r)
        self.elections_total = Counter(
            "raftstate_elections", "Elections this node started (as candidate)", registry=r
        )
        self.leader_changes_total = Counter(
            "raftstate_leader_changes", "Times the known leader changed", registry=r
        )
        self.term = Gauge("raftstate_term", "Current Raft term", registry=r)
        self.role = Gauge(
            "raftstate_role", "1 for the role this node is in, 0 for the others", ["role"], registry=r
        )
        for role in Role:
            self.role.labels(role=role.value).set(0)  # export every role so dashboards see zeros, not gaps

        # storage
        self.fsync_seconds = Histogram(
            "raftstate_fsync_seconds", "Duration of one log/state fsync", buckets=FSYNC_BUCKETS_S, registry=r
        )
        self.snapshot_seconds = Histogram(
            "raftstate_snapshot_seconds",
            "Duration of a snapshot: a state store checkpoint, or installing a received state",
            buckets=SNAPSHOT_BUCKETS_S,
            registry=r,
        )
        self.state_store_bytes = Gauge(
            "raftstate_state_store_bytes", "Size of the state store on disk (database file + WAL)", registry=r
        )
        self.state_keys = Gauge(
            "raftstate_state_keys", "Keys stored (live or expired but not swept yet)", registry=r
        )

        # client API
        self.requests_total = Counter(
            "raftstate_requests", "Client requests by operation and outcome", ["op", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "raftstate_request_seconds",
            "Client request latency by operation",
            ["op"],
            buckets=REQUEST_BUCKETS_S,
            registry=r,
        )

        # peer transport
        self.peer_messages_sent_total = Counter(
            "raftstate_peer_messages_sent", "Raft messages written to a peer's stream", ["peer"], registry=r
        )
        self.peer_messages_dropped_total = Counter(
            "raftstate_peer_messages_dropped",
            "Raft messages dropped before sending (queue full, too big, unknown peer)",
            ["peer"],
            registry=r,
        )
        self.peer_frames_rejected_total = Counter(
            "raftstate_peer_frames_rejected",
            "Inbound peer frames dropped as malformed or misaddressed",
            registry=r,
        )
        self.peer_handshakes_refused_total = Counter(
            "raftstate_peer_handshakes_refused",
            "Inbound peer streams refused before upgrading (bad proof, replay, not a member, other cluster)",
            ["reason"],
            registry=r,
        )

        # snapshot files (node/peers/snapshot_transfer.py)
        self.snapshot_transfer_sent_bytes_total = Counter(
            "raftstate_snapshot_transfer_sent_bytes",
            "Snapshot file bytes written to a peer (of transfers that failed too)",
            ["peer"],
            registry=r,
        )
        self.snapshot_transfer_received_bytes_total = Counter(
            "raftstate_snapshot_transfer_received_bytes",
            "Snapshot file bytes received from a peer (of transfers that failed too)",
            ["peer"],
            registry=r,
        )
        self.snapshot_transfers_total = Counter(
            "raftstate_snapshot_transfers",
            "Snapshot file transfers by direction (send, receive) and outcome (ok, or why it failed)",
            ["direction", "outcome"],
            registry=r,
        )
        self.snapshot_transfer_seconds = Histogram(
            "raftstate_snapshot_transfer_seconds",
            "Duration of a completed snapshot file transfer, by direction (send, receive)",
            ["direction"],
            buckets=TRANSFER_BUCKETS_S,
            registry=r,
        )

    # Helpers for the updates where getting it right takes more than one call.

    def set_role(self, role: Role) -> None:
        for r in Role:
            self.role.labels(role=r.value).set(1 if r is role else 0)

    def set_indexes(self, *, committed: int, applied: int) -> None:
        assert 0 <= applied <= committed, f"applied {applied} must not pass committed {committed}"
        self.committed_index.set(committed)
        self.applied_index.set(applied)
        self.apply_lag.set(committed - applied)

    def observe_request(self, op: str, status: str, seconds: float) -> None:
        self.requests_total.labels(op=op, status=status).inc()
        self.request_seconds.labels(op=op).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry (serve with :attr:`CONTENT_TYPE`),
        without ``*_created`` samples."""
        out: bytes = generate_latest(_WithoutCreated(self.registry))
        return out


class _WithoutCreated:
    """A view of a registry whose counters, histograms and summaries drop their ``_created`` sample.
    (prometheus_client's switch for that, ``disable_created_metrics``, is process-wide.)"""

    _TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if metric.type in self._TYPES:
                created = metric.name + "_created"
                metric.samples = [s for s in metric.samples if s.name != created]
            yield metric
