"""Issue 18, item 2: the slowloris of tests/test_slow_clients.py repeated with a FIRST COMPLETE
REQUEST on every connection. Before, the guard stopped watching a connection after its first
request and aiohttp kept it for its keep-alive default (3630 s): a complete ``GET /health`` then a
partial request held the slot indefinitely. Measured here against the leader of a real 3-node
cluster: no election (every term unchanged, same leader), a well-behaved client's writes go on, and
the held connections are closed by the keep-alive timeout or evicted."""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request
from collections.abc import Iterator

import pytest

from raftstate.client import AsyncClient
from raftstate.node.ops.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster

GUARDS = {"max_client_connections": 48, "client_body_timeout_s": 2}
ATTACK_S = 8.0
BYTE_EVERY_S = 0.25
RECONNECT_S = 0.2


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("keepalive"), settings=GUARDS).running(leader_timeout=30) as c:
        yield c


async def attacker(host: str, port: int, stop: asyncio.Event, seen: collections.Counter[str]) -> None:
    """Keep one connection open at all times: a complete GET /health, then a request that never
    finishes, a byte every BYTE_EVERY_S. Count how the server ended each one (and how long it
    held)."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            seen["connect refused"] += 1
            await asyncio.sleep(0.1)
            continue
        outcome = "still open when the attack stopped"
        t0 = time.monotonic()
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if not head.startswith(b"HTTP/1.1 200"):
                outcome = head.split(b"\r\n", 1)[0].decode(errors="replace")
                raise ConnectionError
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            trickle = b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
            for i in range(len(trickle)):
                if stop.is_set():
                    break
                writer.write(trickle[i : i + 1])
                await writer.drain()
                try:
                    first = await asyncio.wait_for(reader.read(64), BYTE_EVERY_S)
                except TimeoutError:
                    continue
                outcome = (
                    "closed by server" if not first else first.split(b"\r\n", 1)[0].decode(errors="replace")
                )
                break
        except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
            if outcome == "still open when the attack stopped":
                outcome = "reset by server"
        finally:
            writer.close()
        seen[outcome] += 1
        if outcome in ("closed by server", "reset by server"):
            seen["held_s_max_x10"] = max(seen["held_s_max_x10"], round((time.monotonic() - t0) * 10))
        await asyncio.sleep(RECONNECT_S)


async def writer_client(c: LocalCluster, stop: asyncio.Event, latencies: list[float]) -> None:
    async with AsyncClient([c.url(n, "") for n in c.ids], timeout=20) as client:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            await client.set(f"good:{i}", i)
            latencies.append(time.monotonic() - t0)
            i += 1
            await asyncio.sleep(0.05)


def test_slowloris_after_a_complete_request_causes_no_election_and_writes_go_on(
    cluster: LocalCluster,
) -> None:
    leader = cluster.wait_leader()

    def settled() -> dict[str, int] | None:
        sts = {n: cluster.status(n) for n in cluster.ids}
        return (
            {n: st["term"] for n, st in sts.items()}
            if all(st["leader"] == leader for st in sts.values())
            else None
        )

    before = wait_until(settled, 20, "every node to follow the leader")
    host, port = cluster.addr[leader].split(":")
    seen: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []

    async def run() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(attacker(host, int(port), stop, seen)) for _ in range(120)]
        tasks.append(asyncio.create_task(writer_client(cluster, stop, latencies)))
        await asyncio.sleep(ATTACK_S)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    after = {n: cluster.status(n)["term"] for n in cluster.ids}
    print(f"\nkeep-alive slowloris outcomes: {dict(seen)}")
    print(
        f"writes during the attack: {len(latencies)}, max {max(latencies):.3f}s, "
        f"median {sorted(latencies)[len(latencies) // 2]:.3f}s"
    )
    assert after == before, f"an election happened during the attack: {before} -> {after}"
    assert cluster.wait_leader() == leader
    assert len(latencies) >= 10, "a well-behaved client kept writing"
    ended = seen["closed by server"] + seen["reset by server"]
    assert ended >= 120, f"the held connections were closed or evicted, not kept: {dict(seen)}"
    # none held past the keep-alive timeout (client_body_timeout_s) by much
    assert seen["held_s_max_x10"] <= (GUARDS["client_body_timeout_s"] + 3) * 10, dict(seen)
    with urllib.request.urlopen(cluster.url(leader, "/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    refused = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("raftstate_http_connections_refused_total{")
    }
    print(f"guards on the leader: {refused}")
