"""Quotas on a 3-node cluster with auth on, as real processes (issue 18, item 4).

The issue's attack: with ``max_locks: 5``, one write token took five locks with a 10-year ttl, and
every further acquire — an admin's too — was refused. Here the same requests are refused for their
ttl, writers fill at most their share (per token, and the cluster's limit less the admin reserve),
the admin still acquires, the admin force-releases a lock with the CLI (an AUDIT line in the
leader's log), and the replicas hold identical state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from raftstate.client import AsyncClient, InvalidRequest
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, http, wait_until

pytestmark = pytest.mark.cluster

SECRET = "quota-secret-" + "x" * 24
TOKENS = {
    "admin": "admin-quota-0123456789",
    "write": "write-quota-0123456789",
    "write2": "write2-quota-012345678",
    "write3": "write3-quota-012345678",
}
ROLES = {"admin": "admin", "write": "write", "write2": "write", "write3": "write"}
ENV = {"Q_SECRET": SECRET, **{f"Q_{n.upper()}": t for n, t in TOKENS.items()}}
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "Q_SECRET"},
    "tokens": [{"name": f"{n}-token", "role": ROLES[n], "env": f"Q_{n.upper()}"} for n in TOKENS],
}
SETTINGS = {
    "max_locks": 5,
    "max_sessions": 6,
    "max_lock_ttl_s": 3600,
    "max_locks_per_token": 3,
    "max_sessions_per_token": 2,
}
TEN_YEARS_S = 10 * 365 * 86_400


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        tmp_path_factory.mktemp("quotas"), settings=SETTINGS, auth=AUTH, env=ENV, token=TOKENS["admin"]
    ).running(leader_timeout=30) as c:
        yield c


def call(c: LocalCluster, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    leader = c.wait_leader()
    try:
        return 200, http(method, c.url(leader, path), body, timeout=10, token=TOKENS[who])
    except HttpError as exc:
        return exc.status, exc.body["error"]


def acquire(c: LocalCluster, who: str, name: str, ttl: float) -> tuple[int, Any]:
    return call(c, who, "POST", f"/v1/locks/{name}/acquire", {"owner": f"{who}-worker", "ttl": ttl})


async def test_over_the_stream_the_token_name_travels_too(cluster: LocalCluster) -> None:
    """The client library speaks /v1/stream: its operations carry their connection's token name
    and its quotas (this test runs first; it leaves one session of write3's open)."""
    endpoints = [cluster.url(n, "") for n in cluster.ids]
    async with AsyncClient(endpoints, token=TOKENS["write3"], timeout=20) as w:
        with pytest.raises(InvalidRequest, match=r"settings\.max_lock_ttl_s"):
            await w.acquire_lock("s-forever", ttl=TEN_YEARS_S)
        await w.acquire_lock("s1", ttl=600)
    status, body = call(cluster, "admin", "POST", "/v1/locks/s1/force-release", {})
    assert (status, body["released"], body["caller"]) == (200, True, "write3-token")


def test_the_issues_attack_is_refused_and_an_admin_still_acquires(cluster: LocalCluster) -> None:
    for i in range(5):
        status, err = acquire(cluster, "write", f"forever{i}", TEN_YEARS_S)
        assert (status, err["code"]) == (400, "invalid_request"), err
        assert "longer than the longest lease, 3600 s (settings.max_lock_ttl_s)" in err["message"]
    # Within the cap: three for one write token (its quota), one for the other (the writers' share
    # of max_locks: 5 is 4), then the admin's reserve.
    got = [acquire(cluster, "write", f"w{i}", 600)[0] for i in range(4)]
    assert got == [200, 200, 200, 429]
    status, err = acquire(cluster, "write", "w9", 600)
    assert err["code"] == "too_many_locks" and "token 'write-token' holds 3 locks" in err["message"]
    got = [acquire(cluster, "write2", f"x{i}", 600)[0] for i in range(2)]
    assert got == [200, 429]
    status, body = acquire(cluster, "admin", "admin-fix", 600)
    assert status == 200, body
    # A write token may not force-release; the admin may, with the CLI, and the leader audits it.
    status, err = call(cluster, "write", "POST", "/v1/locks/w0/force-release", {})
    assert (status, err["code"]) == (403, "forbidden")
    leader = cluster.wait_leader()
    out = subprocess.run(
        [sys.executable, "-m", "raftstate.node", "force-release", "w0", "--config", str(cluster.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RAFTSTATE_TOKEN": TOKENS["admin"]},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lock 'w0' released; it was held by 'write-worker'" in out.stdout
    wait_until(
        lambda: (
            "AUDIT: token 'admin-token' from 127.0.0.1 force-released lock 'w0' held by owner "
            "'write-worker'" in cluster.log_text(leader)
        ),
        10,
        "the audit line",
    )
    # 'write-token' is under its quota again, but the writers' share (4 of 5) is full: the admin's
    # lock counts. Once the admin lets go of it, the writer acquires.
    status, err = acquire(cluster, "write", "w4", 600)
    assert err["code"] == "too_many_locks" and "4 locks are held, the limit is 4" in err["message"]
    released = call(cluster, "admin", "POST", "/v1/locks/admin-fix/release", {"token": body["token"]})
    assert released == (200, {"released": True})
    assert acquire(cluster, "write", "w4", 600)[0] == 200
    # Sessions: two per write token; the admin opens past the writers' share.
    got = [call(cluster, "write", "POST", "/v1/sessions", {})[0] for _ in range(3)]
    assert got == [200, 200, 429]
    got = [call(cluster, "write2", "POST", "/v1/sessions", {})[0] for _ in range(2)]
    assert got == [200, 200]
    # 4 open here, plus write3's from the stream test if its client did not close it (clients close
    # their sessions now): fill to the writers' share of max_sessions, 6 is 5...
    n = cluster.status(leader)["state"]["sessions"]
    assert n in (4, 5), n
    if n == 4:
        assert call(cluster, "write3", "POST", "/v1/sessions", {})[0] == 200
    status, err = call(cluster, "write3", "POST", "/v1/sessions", {})
    assert (status, err["code"], err["limit"]) == (429, "too_many_sessions", 5), err
    assert call(cluster, "admin", "POST", "/v1/sessions", {})[0] == 200  # ...the admin may fill all 6
    status, err = call(cluster, "admin", "POST", "/v1/sessions", {})
    assert (status, err["code"]) == (429, "too_many_sessions")
    # Every replica decided the same: one digest at one applied index.
    index = cluster.request("PUT", leader, "/v1/kv/barrier", {"value": 1})["version"]

    def digests() -> set[str] | None:
        docs = [cluster.request("GET", n, "/status?digest=1")["state_digest"] for n in cluster.ids]
        if any(d["applied_index"] < index for d in docs) or len({d["applied_index"] for d in docs}) > 1:
            return None
        return {d["sha256"] for d in docs}

    assert len(wait_until(digests, 20, "replicas at one index")) == 1
