"""Any node answers (issue 19, item 1; node/api/forward.py) on real node processes: a write and a
linearizable read sent with plain HTTP to a follower succeed — before, during and after a leader
change (kill -9 of the leader, a leader transfer) — and ``X-Raftstate-Forward: never`` still gets
today's 421 naming the leader."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest

from raftstate.client import protocol as p
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http, wait_until

pytestmark = pytest.mark.cluster

NO_FORWARD = {p.FORWARD_HEADER: "never"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("forwarding"))
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


@pytest.fixture
def healthy(cluster: LocalCluster) -> LocalCluster:
    for nid in cluster.ids:
        if not cluster.alive(nid):
            cluster.start(nid)
    cluster.wait_leader()
    return cluster


def follower_knowing_leader(c: LocalCluster) -> tuple[str, str]:
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader and c.alive(n))
    wait_until(lambda: c.status(follower)["leader"] == leader, 10, f"{follower} to know the leader")
    return leader, follower


def forwards(c: LocalCluster, nid: str, outcome: str) -> float:
    with urllib.request.urlopen(c.url(nid, p.METRICS.path), timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf'^raftstate_forwards_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_follower_forwards_writes_and_linearizable_reads(healthy: LocalCluster) -> None:
    c = healthy
    leader, follower = follower_knowing_leader(c)
    before = forwards(c, follower, "relayed")
    put = http("PUT", c.url(follower, "/v1/kv/fw:a"), {"value": {"n": 1}})
    assert put["version"] >= 1
    inc = http("POST", c.url(follower, "/v1/kv/fw:n/increment"), {"by": 5})
    assert inc["value"] >= 5
    got = http("GET", c.url(follower, "/v1/kv/fw:a"))  # linearizable: the leader answers it
    assert got["value"] == {"n": 1} and got["version"] == put["version"]
    # The leader's refusal is relayed as it is (status and code), not turned into another error.
    with pytest.raises(HttpError) as err:
        http("GET", c.url(follower, "/v1/kv/fw:missing"))
    assert err.value.status == 404 and err.value.code == p.NOT_FOUND
    assert forwards(c, follower, "relayed") >= before + 4
    assert forwards(c, leader, "relayed") == 0  # the leader answers itself


def test_forward_never_keeps_the_421(healthy: LocalCluster) -> None:
    c = healthy
    leader, follower = follower_knowing_leader(c)
    for method, path, body in [("PUT", "/v1/kv/fw:b", {"value": 1}), ("GET", "/v1/kv/fw:b", None)]:
        with pytest.raises(HttpError) as err:
            http(method, c.url(follower, path), body, headers=NO_FORWARD)
        assert err.value.status == 421 and err.value.code == p.NOT_LEADER
        assert err.value.body["error"]["leader_address"] == c.addr[leader]


def test_forwarding_through_a_leader_kill(healthy: LocalCluster) -> None:
    """kill -9 the leader, then at once write and read through a surviving follower: the follower
    waits (within the request's deadline) for the new leader and forwards to it, or serves the
    request itself if it won. Then again after the change has settled."""
    c = healthy
    old, follower = follower_knowing_leader(c)
    http("PUT", c.url(follower, "/v1/kv/fw:kill"), {"value": "before"})
    c.kill(old)
    # During the election: one request each, no client-side retry (the node's own deadline is 5 s).
    put = http("PUT", c.url(follower, "/v1/kv/fw:kill"), {"value": "during"}, timeout=10)
    got = http("GET", c.url(follower, "/v1/kv/fw:kill"), timeout=10)
    assert got["value"] == "during" and got["version"] == put["version"]
    new = c.wait_leader(among=[n for n in c.ids if n != old])
    assert new != old
    # After: through whichever survivor follows now, and through the restarted old leader.
    c.start(old)
    wait_until(lambda: c.status(old)["leader"] == new, 20, f"{old} to rejoin as a follower")
    for nid in c.ids:
        v = http("POST", c.url(nid, "/v1/kv/fw:after/increment"), {}, timeout=10)["value"]
        assert http("GET", c.url(nid, "/v1/kv/fw:after"), timeout=10)["value"] == v


def test_forwarding_through_a_leader_transfer(healthy: LocalCluster) -> None:
    c = healthy
    old, follower = follower_knowing_leader(c)
    target = next(n for n in c.ids if n not in (old, follower))
    moved = http("POST", c.url(old, p.LEADER_TRANSFER.path), {"to": target}, timeout=10)
    assert moved["leader"] == target
    # The old leader is a follower now: it forwards to the new one.
    for nid in (old, follower):
        put = http("PUT", c.url(nid, f"/v1/kv/fw:moved:{nid}"), {"value": nid}, timeout=10)
        got = http("GET", c.url(nid, f"/v1/kv/fw:moved:{nid}"), timeout=10)
        assert (got["value"], got["version"]) == (nid, put["version"])
