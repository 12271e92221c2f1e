"""A TLS cluster end to end, as real processes with certificates from scripts/make_certs.py: peers
verify each other, the client verifies the nodes against a custom CA, and whoever does not hold the
right certificates is refused."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from raftstate.client import AsyncClient, ConnectFailed, Unavailable
from raftstate.node.ops.local_cluster import LocalCluster, wait_until
from raftstate.node.peers.bound_dial import peer_connector
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.peers.transport import CLUSTER_HEADER, NODE_HEADER, STREAM_PATH, TARGET_HEADER

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
SECRET = "tls-cluster-secret-0123456789"
TOKEN = "tls-admin-token-0123456789"
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "T_SECRET"},
    "tokens": [{"name": "ops", "role": "admin", "env": "T_ADMIN"}],
}
ENV = {"T_SECRET": SECRET, "T_ADMIN": TOKEN}


def make_certs(out: Path, *nodes: str) -> None:
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_certs.py"),
            "--out",
            str(out),
            "--host",
            "127.0.0.1",
            *nodes,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_certs(d / "good", "n1", "n2", "n3")
    make_certs(d / "evil", "n1")  # same names, another CA
    return d


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[LocalCluster]:
    good = certs / "good"
    tls = {
        "ca": str(good / "ca.pem"),
        "cert": {n: str(good / f"{n}.pem") for n in ("n1", "n2", "n3")},
        "key": {n: str(good / f"{n}.key") for n in ("n1", "n2", "n3")},
    }
    ctx = ssl.create_default_context(cafile=str(good / "ca.pem"))
    with LocalCluster(
        tmp_path_factory.mktemp("tls"), auth=AUTH, tls=tls, env=ENV, token=TOKEN, context=ctx
    ).running(leader_timeout=40) as c:
        yield c


def endpoints(c: LocalCluster) -> list[str]:
    return [c.url(n, "") for n in c.ids]


async def test_a_client_that_trusts_the_ca_works_end_to_end(cluster: LocalCluster, certs: Path) -> None:
    assert all(e.startswith("https://") for e in endpoints(cluster))
    async with AsyncClient(endpoints(cluster), token=TOKEN, ca=certs / "good" / "ca.pem", timeout=30) as c:
        await c.set("tls:k", {"v": 1})
        assert await c.get("tls:k") == {"v": 1}
        async with c.lock("tls:lock", ttl=5) as lock:
            assert lock.token > 0
    # from_config finds https and the CA in the cluster file, and the token in RAFTSTATE_TOKEN
    os.environ["RAFTSTATE_TOKEN"] = TOKEN
    try:
        async with AsyncClient.from_config(cluster.config, timeout=30) as c:
            assert await c.get("tls:k") == {"v": 1}
    finally:
        del os.environ["RAFTSTATE_TOKEN"]
    # every node's outbound streams are up over TLS (a stream may be redialling under load: wait)
    for n in cluster.ids:
        wait_until(
            lambda n=n: all(p["connected"] for p in cluster.status(n)["peers"].values()), 20, f"{n} peers"
        )


async def test_a_client_that_does_not_trust_the_ca_is_refused(cluster: LocalCluster, certs: Path) -> None:
    for ca in (None, certs / "evil" / "ca.pem"):  # system CAs, or another CA
        async with AsyncClient(endpoints(cluster), token=TOKEN, ca=ca, timeout=3) as c:
            with pytest.raises(Unavailable) as err:
                await c.get("tls:k")
            assert isinstance(err.value.cause, ConnectFailed)
            assert "TLS certificate is not trusted" in str(err.value.cause)
    async with AsyncClient(
        [e.replace("https", "http") for e in endpoints(cluster)], token=TOKEN, timeout=3
    ) as c:
        with pytest.raises(Unavailable):  # plain HTTP to a TLS port gets nowhere
            await c.get("tls:k")


async def test_peers_without_a_certificate_of_the_ca_are_refused(cluster: LocalCluster, certs: Path) -> None:
    leader = cluster.wait_leader()
    target = next(n for n in cluster.ids if n != leader)
    proof = PeerAuth(SECRET.encode(), "test", leader, members=set)
    url = f"https://{cluster.addr[target]}{STREAM_PATH}"

    async def dial(ctx: ssl.SSLContext) -> int | str:
        headers = {NODE_HEADER: leader, CLUSTER_HEADER: "test", TARGET_HEADER: target, **proof.sign(target)}
        # The proof bound to this TLS connection, as a node's own dialer does (node/peers/bound_dial.py).
        async with aiohttp.ClientSession(connector=peer_connector(proof)) as s:
            try:
                ws = await s.ws_connect(url, headers=headers, ssl=ctx)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            except aiohttp.ClientError as exc:
                return type(exc).__name__
            await ws.close()
            return 101

    trusting = ssl.create_default_context(cafile=str(certs / "good" / "ca.pem"))
    assert await dial(trusting) == 403, "even with the secret, a peer must show a certificate of the CA"
    evil = ssl.create_default_context(cafile=str(certs / "good" / "ca.pem"))
    evil.load_cert_chain(str(certs / "evil" / "n1.pem"), str(certs / "evil" / "n1.key"))
    got = await dial(evil)
    print("certificate of another CA:", got)
    assert isinstance(got, str), "a certificate of another CA fails the TLS handshake itself"
    good = ssl.create_default_context(cafile=str(certs / "good" / "ca.pem"))
    good.load_cert_chain(str(certs / "good" / f"{leader}.pem"), str(certs / "good" / f"{leader}.key"))
    assert await dial(good) == 101, "the right certificate and proof open a stream"


def test_status_cli_over_tls(cluster: LocalCluster) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raftstate.node", "status", "--config", str(cluster.config), "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "leader" in out.stdout, out.stdout + out.stderr
