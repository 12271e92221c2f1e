"""Each node's metrics live in their own registry and render as valid Prometheus text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftstate.node.metrics import NodeMetrics
from raftstate.raft.ready import Role


def samples(m: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_render_parses_and_carries_every_metric() -> None:
    m = NodeMetrics("n1", "test")
    m.proposals_total.inc()
    m.set_indexes(committed=10, applied=7)
    m.fsync_seconds.observe(0.0004)
    m.elections_total.inc()
    m.leader_changes_total.inc()
    m.term.set(3)
    m.set_role(Role.LEADER)
    m.observe_request("put", "ok", 0.002)
    m.peer_messages_sent_total.labels(peer="n2").inc(5)
    m.peer_messages_dropped_total.labels(peer="n2").inc()
    m.peer_frames_rejected_total.inc()
    m.snapshot_seconds.observe(0.3)

    s = samples(m)
    assert s[("raftstate_node_info", (("cluster_id", "test"), ("node_id", "n1")))] == 1
    assert s[("raftstate_proposals_total", ())] == 1
    assert s[("raftstate_committed_index", ())] == 10
    assert s[("raftstate_applied_index", ())] == 7
    assert s[("raftstate_apply_lag_entries", ())] == 3
    assert s[("raftstate_fsync_seconds_bucket", (("le", "0.0005"),))] == 1
    assert s[("raftstate_fsync_seconds_bucket", (("le", "0.00025"),))] == 0
    assert s[("raftstate_elections_total", ())] == 1
    assert s[("raftstate_leader_changes_total", ())] == 1
    assert s[("raftstate_term", ())] == 3
    assert s[("raftstate_role", (("role", "leader"),))] == 1
    assert s[("raftstate_role", (("role", "follower"),))] == 0
    assert s[("raftstate_requests_total", (("op", "put"), ("status", "ok")))] == 1
    assert s[("raftstate_request_seconds_count", (("op", "put"),))] == 1
    assert s[("raftstate_peer_messages_sent_total", (("peer", "n2"),))] == 5
    assert s[("raftstate_peer_messages_dropped_total", (("peer", "n2"),))] == 1
    assert s[("raftstate_peer_frames_rejected_total", ())] == 1
    assert s[("raftstate_snapshot_seconds_count", ())] == 1
    assert NodeMetrics.CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_role_switch_leaves_exactly_one_role_set() -> None:
    m = NodeMetrics()
    m.set_role(Role.CANDIDATE)
    m.set_role(Role.FOLLOWER)
    roles = {dict(k[1])["role"]: v for k, v in samples(m).items() if k[0] == "raftstate_role"}
    assert roles == {r.value: (1.0 if r is Role.FOLLOWER else 0.0) for r in Role}


def test_nodes_in_one_process_do_not_share_numbers() -> None:
    a, b = NodeMetrics("a"), NodeMetrics("b")
    a.proposals_total.inc(4)
    assert samples(b)[("raftstate_proposals_total", ())] == 0


def test_applied_never_passes_committed() -> None:
    with pytest.raises(AssertionError):
        NodeMetrics().set_indexes(committed=3, applied=4)
