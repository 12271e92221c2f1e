"""A 3-node cluster with auth on, as real processes: tokens and roles through the client library and
the CLI, forged peers speaking the wire protocol, a node of another cluster, and the count limits.

Every attack is counted in ATTACKS (printed at the end with -s) for docs/security.md.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from raftstate.client import AsyncClient, AuthError, LimitExceeded
from raftstate.node.ops.local_cluster import HttpError, LocalCluster, free_ports, http, wait_until
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.peers.transport import CLUSTER_HEADER, NODE_HEADER, STREAM_PATH, TARGET_HEADER
from raftstate.node.peers.wire import encode_frame, encode_one
from raftstate.raft.messages import AppendEntries, Message, RequestVote

pytestmark = pytest.mark.cluster

SECRET = "cluster-secret-" + "x" * 24
TOKENS = {
    "admin": "admin-token-0123456789",
    "write": "write-token-0123456789",
    "read": "read-token-0123456789",
}
ENV = {"T_SECRET": SECRET, **{f"T_{r.upper()}": t for r, t in TOKENS.items()}}
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "T_SECRET"},
    "tokens": [{"name": f"{r}-token", "role": r, "env": f"T_{r.upper()}"} for r in TOKENS],
}
LIMITS = {"max_sessions": 8, "max_locks": 3, "max_keys_per_page": 50}

#: attack -> outcomes seen, e.g. {"forged RequestVote, no proof": Counter({"refused 401": 1})}
ATTACKS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        tmp_path_factory.mktemp("secure"), settings=LIMITS, auth=AUTH, env=ENV, token=TOKENS["admin"]
    ).running(leader_timeout=30) as c:
        yield c
        print("\nattacks:", {k: dict(v) for k, v in ATTACKS.items()})


def endpoints(c: LocalCluster) -> list[str]:
    return [c.url(n, "") for n in c.ids]


def terms(c: LocalCluster) -> dict[str, int]:
    return {n: c.status(n)["term"] for n in c.ids}


# --------------------------------------------------------------------------- tokens and roles


async def test_roles_through_the_client_library(cluster: LocalCluster) -> None:
    async with AsyncClient(endpoints(cluster), token=TOKENS["write"], timeout=20) as w:
        await w.set("jobs:1", {"done": 3})
        assert await w.get("jobs:1") == {"done": 3}
    async with AsyncClient(endpoints(cluster), token=TOKENS["read"], timeout=20) as r:
        assert await r.get("jobs:1") == {"done": 3}
        with pytest.raises(AuthError) as err:
            await r.set("jobs:1", {"done": 0})
        assert err.value.code == "forbidden" and "needs role write" in str(err.value)
        ATTACKS["write with a read token"][f"refused 403 {err.value.code}"] += 1
    for token in (None, "guessed-token-000000"):
        async with AsyncClient(endpoints(cluster), token=token, timeout=20) as anon:
            with pytest.raises(AuthError) as err:
                await anon.get("jobs:1")
            assert err.value.code == "unauthorized"
            ATTACKS["read without a valid token" if token is None else "read with a guessed token"][
                "refused 401 unauthorized"
            ] += 1
    async with AsyncClient(endpoints(cluster), token=TOKENS["admin"], timeout=20) as a:
        assert await a.get("jobs:1") == {"done": 3}, "admin includes read"
    leader = cluster.wait_leader()
    with pytest.raises(HttpError) as herr:
        http("POST", cluster.url(leader, "/v1/leader/transfer"), {}, token=TOKENS["write"])
    assert herr.value.status == 403
    ATTACKS["leader transfer with a write token"]["refused 403 forbidden"] += 1
    assert http("GET", cluster.url(leader, "/health"))["ok"] is True, "/health stays open"
    for path in ("/status", "/metrics"):
        with pytest.raises(HttpError) as herr:
            http("GET", cluster.url(leader, path))
        assert herr.value.status == 401
    metrics = http_text(cluster.url(leader, "/metrics"), TOKENS["read"])
    assert 'raftstate_auth_failures_total{reason="weak_role"}' in metrics


def http_text(url: str, token: str) -> str:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


def test_status_and_client_cli_take_a_token(cluster: LocalCluster) -> None:
    cmd = [sys.executable, "-m", "raftstate.node"]
    cfg = str(cluster.config)
    out = subprocess.run([*cmd, "status", "--config", cfg], capture_output=True, text=True, timeout=60)
    assert "HTTP 401 (pass --token or set RAFTSTATE_TOKEN)" in out.stdout
    out = subprocess.run(
        [*cmd, "status", "--config", cfg, "--token", TOKENS["read"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "leader" in out.stdout, out.stdout + out.stderr
    env = {**__import__("os").environ, "RAFTSTATE_TOKEN": TOKENS["write"]}
    out = subprocess.run(
        [*cmd, "set", "cli:k", "7", "--config", cfg], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run([*cmd, "get", "cli:k", "--config", cfg], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "AuthError" in out.stderr and "carries no token" in out.stderr


# --------------------------------------------------------------------------- forged peers


async def dial(
    c: LocalCluster, target: str, headers: dict[str, str]
) -> aiohttp.ClientWebSocketResponse | int:
    """Open a raw peer stream; the WebSocket, or the HTTP status that refused it."""
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(f"http://{c.addr[target]}{STREAM_PATH}", headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        return exc.status
    ws._raftstate_session = session  # type: ignore[attr-defined]
    return ws


async def close(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.close()
    await ws._raftstate_session.close()  # type: ignore[attr-defined]


def base_headers(c: LocalCluster, sender: str, target: str, cluster_id: str = "test") -> dict[str, str]:
    return {NODE_HEADER: sender, CLUSTER_HEADER: cluster_id, TARGET_HEADER: target}


def forged_messages(sender: str, target: str, term: int) -> list[Message]:
    """What a forger would send: a vote grab and a fake leader overwriting the log."""
    return [
        RequestVote(term + 100, sender, target, last_log_index=10**6, last_log_term=term + 99),
        AppendEntries(term + 100, sender, target, prev_index=0, prev_term=0, entries=(), commit=0),
    ]


async def test_forged_peers_never_reach_the_core(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    target = next(n for n in cluster.ids if n != leader)
    member = leader  # a forger claims to be the leader
    before = terms(cluster)
    attempts: list[tuple[str, dict[str, str], str, int]] = []
    # 1. no proof at all
    attempts.append(("forged peer, no proof", base_headers(cluster, member, target), member, 401))
    # 2. a proof made with a guessed secret
    wrong = PeerAuth(b"guessed-secret-0000000000", "test", member, members=set)
    attempts.append(
        (
            "forged peer, wrong secret",
            {**base_headers(cluster, member, target), **wrong.sign(target)},
            member,
            401,
        )
    )
    # 3. a secret holder that is not a member (e.g. a removed or never-added node)
    rogue = PeerAuth(SECRET.encode(), "test", "n9", members=set)
    attempts.append(
        (
            "secret holder, not a member",
            {**base_headers(cluster, "n9", target), **rogue.sign(target)},
            "n9",
            403,
        )
    )
    # 4. a proof for another receiver, and one claiming another sender
    honest = PeerAuth(SECRET.encode(), "test", member, members=set)
    other = next(n for n in cluster.ids if n not in (leader, target))
    attempts.append(
        (
            "proof made for another node",
            {**base_headers(cluster, member, target), **honest.sign(other)},
            member,
            401,
        )
    )
    # 5. same secret, another cluster id
    foreign = PeerAuth(SECRET.encode(), "other-cluster", member, members=set)
    attempts.append(
        (
            "other cluster id, same secret",
            {**base_headers(cluster, member, target, "other-cluster"), **foreign.sign(target)},
            member,
            403,
        )
    )
    for what, headers, _sender, want in attempts:
        got = await dial(cluster, target, headers)
        if not isinstance(got, int):
            await close(got)
        assert got == want, f"{what}: expected HTTP {want}, got {got!r}"
        ATTACKS[what][f"refused {want}"] += 1
    # 6. a replayed handshake: capture one that worked once, send it again
    captured = {**base_headers(cluster, member, target), **honest.sign(target)}
    ws = await dial(cluster, target, captured)
    assert not isinstance(ws, int), "the genuine handshake opens a stream"
    await close(ws)
    replay = await dial(cluster, target, captured)
    assert replay == 401
    ATTACKS["replayed handshake"]["refused 401"] += 1
    # Nothing reached any core: no term moved (a forged vote at term+100 would have).
    await asyncio.sleep(1.0)
    assert terms(cluster) == before
    st = cluster.status(target)
    assert st["leader"] == leader
    metrics = http_text(cluster.url(target, "/metrics"), TOKENS["read"])
    for reason in ("missing_proof", "bad_proof", "not_member", "replayed_proof"):
        assert f'raftstate_peer_handshakes_refused_total{{reason="{reason}"}}' in metrics, reason


def test_a_node_of_another_cluster_is_refused_even_with_the_secret(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A real node process whose cluster file names our nodes' addresses, with cluster_id 'other'
    and even our secret: its streams are refused by name and our terms never move."""
    leader = cluster.wait_leader()
    before = terms(cluster)
    (port,) = free_ports(1)
    doc: dict[str, Any] = {
        "cluster_id": "other",
        "nodes": [{"id": "x1", "address": f"127.0.0.1:{port}", "data_dir": "./x1"}]
        + [{"id": n, "address": cluster.addr[n], "data_dir": f"./{n}"} for n in cluster.ids],
        "auth": AUTH,
        "settings": {"election_timeout_ms": 200, "heartbeat_ms": 50},
    }
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = tmp_path / "x1.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raftstate.node", "node", "--config", str(cfg), "--id", "x1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**__import__("os").environ, **ENV},
        )
    try:
        wait_until(lambda: "cluster_id mismatch" in log.read_text(), 30, "the foreign node to be refused")
        time.sleep(2.0)  # it keeps campaigning meanwhile
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert terms(cluster) == before and cluster.wait_leader() == leader
    refused = sum(
        float(line.rsplit(" ", 1)[1])
        for n in cluster.ids
        for line in http_text(cluster.url(n, "/metrics"), TOKENS["read"]).splitlines()
        if line.startswith('raftstate_peer_handshakes_refused_total{reason="wrong_cluster"}')
    )
    assert refused >= 1
    ATTACKS["node process of another cluster (same secret)"][f"refused 403 x{int(refused)}"] += 1


# --------------------------------------------------------------------------- limits


def test_count_limits_hold_under_concurrency_and_replicas_agree(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()

    async def acquire_many(n: int) -> list[tuple[int, str]]:
        url = cluster.url(leader, "/v1/locks/{}/acquire")
        headers = {"Authorization": f"Bearer {TOKENS['write']}"}
        async with aiohttp.ClientSession(headers=headers) as s:

            async def one(i: int) -> tuple[int, str]:
                async with s.post(url.format(f"L{i}"), json={"owner": f"w{i}", "ttl": 60}) as r:
                    body = await r.json()
                    return r.status, body.get("error", {}).get("code", "ok")

            return await asyncio.gather(*(one(i) for i in range(n)))

    outcomes = asyncio.run(acquire_many(12))
    # A write token fills the writers' share: max_locks less the admin reserve (node/state/quotas.py).
    assert sum(code == "ok" for _, code in outcomes) == LIMITS["max_locks"] - 1, outcomes
    assert {(s, c) for s, c in outcomes if c != "ok"} == {(429, "too_many_locks")}
    ATTACKS["12 concurrent lock acquires, max_locks=3"]["10 refused 429 too_many_locks"] += 1
    # Sessions: open until refused; the refusal comes exactly at the limit.
    opened = cluster.status(leader)["state"]["sessions"]
    while opened < LIMITS["max_sessions"]:
        cluster.request("POST", leader, "/v1/sessions", {})
        opened += 1
    with pytest.raises(HttpError) as err:
        cluster.request("POST", leader, "/v1/sessions", {})
    assert (err.value.status, err.value.code) == (429, "too_many_sessions")
    assert "the limit is 8 (settings.max_sessions)" in err.value.body["error"]["message"]
    with pytest.raises(HttpError) as err:
        cluster.request("GET", leader, "/v1/keys?limit=51")
    assert (err.value.code, err.value.body["error"]["limit"]) == ("page_too_large", 50)
    # The apply-time check is deterministic: every replica holds the same state.
    idx = cluster.request("PUT", leader, "/v1/kv/barrier", {"value": 1})["version"]

    def digests() -> set[str] | None:
        docs = [cluster.request("GET", n, "/status?digest=1")["state_digest"] for n in cluster.ids]
        if any(d["applied_index"] < idx for d in docs) or len({d["applied_index"] for d in docs}) > 1:
            return None
        return {d["sha256"] for d in docs}

    assert len(wait_until(digests, 20, "replicas at one index")) == 1


async def test_the_client_reports_a_count_limit(cluster: LocalCluster) -> None:
    async with AsyncClient(endpoints(cluster), token=TOKENS["write"], timeout=20) as w:
        with pytest.raises((LimitExceeded, AuthError)) as err:
            await w.acquire_lock("one-too-many", ttl=30)
        assert err.value.code in ("too_many_locks", "too_many_sessions")


async def test_control_without_auth_the_same_forgery_takes_over_the_term(tmp_path: Path) -> None:
    """The attack above is real: against a node with auth off, one forged frame from a process that
    is no member at all moves the node's term by 100 (and it would follow a fake leader's log)."""
    with LocalCluster(tmp_path, n=1) as c:
        c.start()
        leader = c.wait_leader(timeout=30)
        term = c.status(leader)["term"]
        ws = await dial(c, leader, base_headers(c, "n2", leader))
        assert not isinstance(ws, int), "auth off: anyone may open a peer stream"
        try:
            await ws.send_bytes(encode_frame(encode_one(m) for m in forged_messages("n2", leader, term)[1:]))
            moved = wait_until(lambda: c.status(leader)["term"] >= term + 100, 20, "the forged term")
        finally:
            await close(ws)
        assert moved
        ATTACKS["control: forged AppendEntries, auth off"]["accepted: term +100"] += 1
