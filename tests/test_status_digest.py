"""``GET /status?digest=1`` (issue 18, item 3): admin only, computed off the event loop over a
pinned view of the state store, cached per applied index.

Before the fix a read token (or no token, where ``auth.open`` lists status) could ask for a digest,
and each request hashed the whole state; these tests run a real one-node server in-process (its
store a real SQLite file) with auth on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from test_transport import free_port

from raftstate.node.config import ClusterConfig, NodeConfig, Settings
from raftstate.node.security.config import AuthConfig, Role, SecretRef, TokenConfig
from raftstate.node.server import NodeServer
from raftstate.node.test_hooks import TestHooks
from raftstate.raft import Role as RaftRole

TOKENS = {"reader": "r" * 32, "writer": "w" * 32, "ops": "a" * 32}
ROLES = {"reader": Role.READ, "writer": Role.WRITE, "ops": Role.ADMIN}
SECRET = "s" * 32


def _config(tmp_path: Path, *, open_status: bool = False) -> ClusterConfig:
    node = NodeConfig("n1", f"127.0.0.1:{free_port()}", tmp_path / "n1")
    auth = AuthConfig(
        True,
        SecretRef("env", "DIGEST_T_SECRET", "auth.cluster_secret"),
        tuple(
            TokenConfig(name, ROLES[name], SecretRef("env", f"DIGEST_T_{name.upper()}", f"auth.tokens[{i}]"))
            for i, name in enumerate(TOKENS)
        ),
        frozenset({"status"}) if open_status else frozenset(),
    )
    return ClusterConfig(tmp_path / "cluster.yaml", "digest-test", (node,), Settings(), auth=auth)


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_T_SECRET", SECRET)
    for name, token in TOKENS.items():
        monkeypatch.setenv(f"DIGEST_T_{name.upper()}", token)


async def _leader(tmp_path: Path, *, open_status: bool = False) -> NodeServer:
    server = NodeServer(_config(tmp_path, open_status=open_status), "n1", hooks=TestHooks())
    await server.start()
    assert server.driver is not None
    deadline = time.monotonic() + 10
    while server.driver.raft.role != RaftRole.LEADER:
        assert time.monotonic() < deadline, "a one-node cluster elected no leader"
        await asyncio.sleep(0.02)
    return server


async def _status(server: NodeServer, token: str | None, query: str = "?digest=1") -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://{server.node.address}/status{query}", headers=headers) as r,
    ):
        return r.status, await r.json()


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize("open_status", [False, True])
async def test_only_an_admin_token_gets_a_digest(tmp_path: Path, open_status: bool) -> None:
    server = await _leader(tmp_path, open_status=open_status)
    try:
        for name in ("reader", "writer"):
            status, body = await _status(server, TOKENS[name])
            assert status == 403, body
            assert body["error"]["code"] == "forbidden"
            assert "needs role admin" in body["error"]["message"] and f"{name!r}" in body["error"]["message"]
            status, body = await _status(server, TOKENS[name], query="")
            assert status == 200 and "state_digest" not in body  # the status itself is still theirs
        status, body = await _status(server, None)
        assert status == 401, body  # no token: even where status is open, a digest is not
        status, body = await _status(server, TOKENS["ops"])
        assert status == 200 and len(body["state_digest"]["sha256"]) == 64
    finally:
        await server.stop()


@pytest.mark.usefixtures("secrets_env")
async def test_a_digest_of_200k_keys_never_stalls_the_loop_and_is_cached_per_index(tmp_path: Path) -> None:
    server = await _leader(tmp_path)
    assert server.driver is not None
    sm = server.driver.sm
    try:
        # 200k keys straight into the store (setup, not what is measured).
        sm.tables.begin()
        sm.keys.restore([[f"job:{i:07d}", {"state": "done", "i": i}, 1, None] for i in range(200_000)])
        sm.flush()
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - t0 - 0.005)

        tick = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        (s1, b1), (s2, b2) = await asyncio.gather(
            _status(server, TOKENS["ops"]), _status(server, TOKENS["ops"])
        )
        took = time.perf_counter() - t0
        stop.set()
        await tick
        assert s1 == s2 == 200 and b1["state_digest"] == b2["state_digest"]
        worst = max(lags)
        print(f"digest of 200k keys: {took * 1000:.0f} ms; worst loop lag {worst * 1000:.1f} ms")
        # Off the loop: the loop kept turning while the whole state was hashed. A generous bound
        # (the election timeout is 500 ms; on the loop this digest blocks it for its whole length).
        assert worst < 0.2, f"loop stalled {worst * 1000:.0f} ms during a {took * 1000:.0f} ms digest"
        assert len(lags) > 5
        # Cached per applied index: the same index answers at once, without a new computation.
        t1 = time.perf_counter()
        s3, b3 = await _status(server, TOKENS["ops"])
        assert s3 == 200 and b3["state_digest"] == b1["state_digest"]
        assert time.perf_counter() - t1 < took
    finally:
        await server.stop()
