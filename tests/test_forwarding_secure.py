"""Forwarding on a cluster with auth and TLS (issue 19, item 1; node/api/forward.py), real processes:
a follower dials the leader over TLS with its client context, carries the caller's Authorization
as it came (the leader checks it again) and adds no credential of its own — a weak or missing
token is refused as it would be by the leader, and nothing is forwarded for it."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftstate.client import protocol as p
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http, wait_until

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
NODES = ("n1", "n2", "n3")
TOKENS = {
    "admin": "fwd-admin-token-0123456789",
    "write": "fwd-write-token-0123456789",
    "read": "fwd-read-token-0123456789",
}
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "F_SECRET"},
    "tokens": [{"name": role, "role": role, "env": f"F_{role.upper()}"} for role in TOKENS],
}
ENV = {"F_SECRET": "fwd-cluster-secret-0123456789", **{f"F_{r.upper()}": t for r, t in TOKENS.items()}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    certs = tmp_path_factory.mktemp("fwd-certs")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_certs.py"),
            "--out",
            str(certs),
            "--host",
            "127.0.0.1",
            *NODES,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls = {
        "ca": str(certs / "ca.pem"),
        "cert": {n: str(certs / f"{n}.pem") for n in NODES},
        "key": {n: str(certs / f"{n}.key") for n in NODES},
    }
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with LocalCluster(
        tmp_path_factory.mktemp("fwd-secure"), auth=AUTH, tls=tls, env=ENV, token=TOKENS["admin"], context=ctx
    ).running(leader_timeout=40) as c:
        yield c


def follower(c: LocalCluster) -> str:
    leader = c.wait_leader()
    nid = next(n for n in c.ids if n != leader)
    wait_until(lambda: c.status(nid)["leader"] == leader, 10, f"{nid} to know the leader")
    return nid


def relayed(c: LocalCluster, nid: str) -> float:
    req = urllib.request.Request(
        c.url(nid, p.METRICS.path), headers={"Authorization": f"Bearer {TOKENS['read']}"}
    )
    with urllib.request.urlopen(req, timeout=5, context=c.context) as resp:
        text = resp.read().decode()
    m = re.search(r'^raftstate_forwards_total\{outcome="relayed"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_forwarding_over_tls_with_the_callers_token(cluster: LocalCluster) -> None:
    c = cluster
    nid = follower(c)
    before = relayed(c, nid)
    url = c.url(nid, "/v1/kv/fwd:secure")
    put = http("PUT", url, {"value": 1}, token=TOKENS["write"], context=c.context)
    got = http("GET", url, token=TOKENS["read"], context=c.context)  # linearizable: forwarded too
    assert got["version"] == put["version"] and got["value"] == 1
    assert relayed(c, nid) == before + 2


def test_a_weak_or_missing_token_is_refused_and_not_forwarded(cluster: LocalCluster) -> None:
    c = cluster
    nid = follower(c)
    before = relayed(c, nid)
    url = c.url(nid, "/v1/kv/fwd:secure")
    for token, status in ((TOKENS["read"], 403), (None, 401), ("not-a-token-of-this-cluster", 401)):
        with pytest.raises(HttpError) as err:
            http("PUT", url, {"value": 2}, token=token, context=c.context)
        assert err.value.status == status, err.value.body
    assert relayed(c, nid) == before
    assert http("GET", url, token=TOKENS["read"], context=c.context)["value"] != 2
