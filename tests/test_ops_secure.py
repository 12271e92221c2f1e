"""Day-2 operations on a cluster with auth AND TLS on, as real processes: ``raftstate member
list/add/remove`` and ``snapshot save`` with an admin token over https, refused (401/403, with what
to do) without one or with a weaker token; a node joining with ``--join ... --config FILE`` (peer
proof for /v1/members, https); the wiped-voter check still asks its peers; ``/v1/members`` refuses
a proof made without the cluster secret."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftstate.node.cli import main as raftstate
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, free_ports, http, wait_until
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.peers.transport import CLUSTER_HEADER, NODE_HEADER
from raftstate.node.security.node_access import MEMBERS_RECEIVER

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
SECRET = "ops-secure-secret-0123456789"
TOKENS = {"admin": "ops-admin-token-0123456789", "write": "ops-write-token-0123456789"}
ENV = {"T_SECRET": SECRET, "T_ADMIN": TOKENS["admin"], "T_WRITE": TOKENS["write"]}
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "T_SECRET"},
    "tokens": [
        {"name": "ops", "role": "admin", "env": "T_ADMIN"},
        {"name": "workers", "role": "write", "env": "T_WRITE"},
    ],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("ops-secure")
    certs = root / "certs"
    make_certs = [sys.executable, str(REPO / "scripts" / "make_certs.py"), "--out", str(certs)]
    subprocess.run(
        [*make_certs, "--host", "127.0.0.1", "n1", "n2", "n3", "n4"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # Per-node files, n4 included although it is not under nodes: (it joins later).
    ids = ("n1", "n2", "n3", "n4")
    tls = {
        "ca": str(certs / "ca.pem"),
        "cert": {n: str(certs / f"{n}.pem") for n in ids},
        "key": {n: str(certs / f"{n}.key") for n in ids},
    }
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    c = LocalCluster(root, auth=AUTH, tls=tls, env=ENV, token=TOKENS["admin"], context=ctx)
    with c.running(leader_timeout=40):
        yield c


def ops(
    c: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str, token: str | None
) -> tuple[int, str]:
    """A `raftstate` operator command against ``c`` (its cluster file: https and the CA from tls:)."""
    capsys.readouterr()
    args = [*argv, "--config", str(c.config)]
    rc = raftstate([*args, "--token", token] if token is not None else args)
    out = capsys.readouterr()
    return rc, out.out + out.err


def roles(c: LocalCluster) -> dict[str, str]:
    doc: dict[str, Any] = c.request("GET", c.wait_leader(), "/v1/members")
    return {r["id"]: r["role"] for r in doc["members"]}


def test_member_commands_need_an_admin_token(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    monkeypatch.delenv("RAFTSTATE_TOKEN", raising=False)
    rc, out = ops(c, capsys, "member", "list", token=TOKENS["admin"])
    assert rc == 0 and "n1" in out and "voter" in out, out
    rc, out = ops(c, capsys, "member", "list", token=None)
    assert rc == 1 and "HTTP 401" in out and "--token or RAFTSTATE_TOKEN" in out, out
    # a write token may read the member list (read role), but not change it
    rc, out = ops(c, capsys, "member", "list", token=TOKENS["write"])
    assert rc == 0, out
    rc, out = ops(c, capsys, "member", "add", "--id", "n9", "--address", "127.0.0.1:1", token=TOKENS["write"])
    assert rc == 1 and "HTTP 403" in out and "needs role admin" in out, out
    rc, out = ops(c, capsys, "member", "remove", "--id", "n3", token=None)
    assert rc == 1 and "HTTP 401" in out, out
    rc, out = ops(c, capsys, "leader", "transfer", token=TOKENS["write"])
    assert rc == 1 and "HTTP 403" in out, out
    assert roles(c) == {"n1": "voter", "n2": "voter", "n3": "voter"}
    # the token may also come from the environment, as for `raftstate status`
    monkeypatch.setenv("RAFTSTATE_TOKEN", TOKENS["admin"])
    rc, out = ops(c, capsys, "member", "list", token=None)
    assert rc == 0, out


def test_snapshot_save_needs_an_admin_token(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    monkeypatch.delenv("RAFTSTATE_TOKEN", raising=False)
    c.put("backup:k", {"v": 1})
    rc, out = ops(c, capsys, "snapshot", "save", str(tmp_path / "b.snap"), token=TOKENS["write"])
    assert rc == 1 and "HTTP 403" in out and not (tmp_path / "b.snap").exists(), out
    rc, out = ops(c, capsys, "snapshot", "save", str(tmp_path / "b.snap"), token=None)
    assert rc == 1 and "HTTP 401" in out, out
    rc, out = ops(c, capsys, "snapshot", "save", str(tmp_path / "b.snap"), token=TOKENS["admin"])
    assert rc == 0 and "checksum OK" in out, out


def test_members_view_needs_a_token_or_the_cluster_secret(cluster: LocalCluster) -> None:
    c = cluster
    url = c.url("n1", "/v1/members")

    def proof(secret: str, cluster_id: str = "test", receiver: str = MEMBERS_RECEIVER) -> dict[str, str]:
        signer = PeerAuth(secret.encode(), cluster_id, "n7", members=frozenset)
        return {**signer.sign(receiver), NODE_HEADER: "n7", CLUSTER_HEADER: cluster_id}

    assert http("GET", url, context=c.context, headers=proof(SECRET))["cluster_id"] == "test"
    refused = [
        proof("not-the-cluster-secret-0000"),  # no secret
        proof(SECRET, cluster_id="other"),  # another cluster's claim
        proof(SECRET, receiver="n1"),  # a Raft stream handshake proof, replayed here
        {},
    ]
    for headers in refused:
        with pytest.raises(HttpError) as err:
            http("GET", url, context=c.context, headers=headers)
        assert err.value.status == 401 and err.value.code == "unauthorized"


def start_joiner(c: LocalCluster, nid: str, member: str, *extra: str) -> subprocess.Popen[bytes]:
    c.addr.setdefault(nid, f"127.0.0.1:{free_ports(1)[0]}")
    return c.join(nid, member, c.root / "data" / f"{nid}-joined", None, *extra)


def test_join_add_and_remove_with_auth_and_tls(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    monkeypatch.delenv("RAFTSTATE_TOKEN", raising=False)
    # Without the cluster file the joiner cannot even ask: it refuses to start and says what to pass.
    p = start_joiner(c, "n4", "n2")
    assert p.wait(timeout=60) == 2
    assert "pass --config" in c.log_text("n4"), c.log_text("n4")
    # With it: peer proof for /v1/members over https, then it waits to be added.
    start_joiner(c, "n4", "n2", "--config", str(c.config))
    rc, out = ops(c, capsys, "member", "add", "--id", "n4", "--address", c.addr["n4"], token=None)
    assert rc == 1 and "HTTP 401" in out, out
    rc, out = ops(c, capsys, "member", "add", "--id", "n4", "--address", c.addr["n4"], token=TOKENS["admin"])
    assert rc == 0 and "promoted to voter" in out, out + c.log_text("n4")
    wait_until(lambda: c.status("n4")["role"] in ("follower", "leader"), 60, "n4 to follow")
    c.put("joined:k", {"v": 4})
    wait_until(
        lambda: (c.get("joined:k", nid="n4", stale=True) or {}).get("value") == {"v": 4}, 60, "n4 to apply"
    )
    rc, out = ops(c, capsys, "member", "remove", "--id", "n4", token=TOKENS["write"])
    assert rc == 1 and "HTTP 403" in out, out
    rc, out = ops(c, capsys, "member", "remove", "--id", "n4", token=TOKENS["admin"])
    assert rc == 0 and "n4 removed" in out, out
    c.kill("n4")
    assert "n4" not in roles(c)


def test_wiped_voter_check_asks_its_peers_with_the_cluster_secret(cluster: LocalCluster) -> None:
    """With auth on the check still learns that the peers heard from n3, and refuses."""
    c = cluster
    c.kill("n3")
    shutil.rmtree(c.root / "data" / "n3")
    c.start("n3")
    assert c.procs["n3"].wait(timeout=60) == 2
    assert "has heard from voter n3 before" in c.log_text("n3"), c.log_text("n3")
