"""Slowloris against the leader of a real 3-node cluster: many connections, headers and bodies sent
a byte at a time, more connections than the node admits. Measured while it runs: no election (every
node's term unchanged, same leader) and a well-behaved client's writes still succeed."""

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
ATTACK_S = 6.0
BYTE_EVERY_S = 0.25
RECONNECT_S = 0.2


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("slow"), settings=GUARDS).running(leader_timeout=30) as c:
        yield c


async def attacker(
    host: str, port: int, mode: str, stop: asyncio.Event, seen: collections.Counter[str]
) -> None:
    """Keep one slow connection open at all times; count how the server ended each one."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            seen["connect refused"] += 1
            await asyncio.sleep(0.1)
            continue
        if mode == "headers":  # never finishes the request line and headers
            trickle = b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 1000
        else:  # complete headers, then a 1 MB body one byte at a time
            writer.write(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: 1000000\r\n\r\n")
            trickle = b'{"value": "' + b"a" * 1000
        outcome = "still open when the attack stopped"
        try:
            for i in range(len(trickle)):
                if stop.is_set():
                    break
                writer.write(trickle[i : i + 1])
                await writer.drain()
                try:
                    first = await asyncio.wait_for(reader.read(64), BYTE_EVERY_S)
                except TimeoutError:
                    continue
                outcome = first.split(b"\r\n", 1)[0].decode(errors="replace") if first else "closed by server"
                break
        except (ConnectionError, OSError):
            outcome = "reset by server"
        finally:
            writer.close()
        seen[outcome] += 1
        await asyncio.sleep(RECONNECT_S)  # a real slowloris holds sockets; it does not spin


async def writer_client(c: LocalCluster, stop: asyncio.Event, latencies: list[float]) -> None:
    async with AsyncClient([c.url(n, "") for n in c.ids], timeout=20) as client:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            await client.set(f"good:{i}", i)
            latencies.append(time.monotonic() - t0)
            i += 1
            await asyncio.sleep(0.05)


def test_slowloris_does_not_cause_an_election_and_writes_go_on(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()

    def settled() -> dict[str, int] | None:
        sts = {n: cluster.status(n) for n in cluster.ids}
        ok = all(st["leader"] == leader for st in sts.values())
        return {n: st["term"] for n, st in sts.items()} if ok else None

    before = wait_until(settled, 20, "every node to follow the leader")
    host, port = cluster.addr[leader].split(":")
    seen: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []

    async def run() -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(attacker(host, int(port), mode, stop, seen))
            for mode in ("headers", "body")
            for _ in range(60)  # 120 slow connections against a cap of 48
        ]
        tasks.append(asyncio.create_task(writer_client(cluster, stop, latencies)))
        await asyncio.sleep(ATTACK_S)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    after = {n: cluster.status(n)["term"] for n in cluster.ids}
    print(f"\nslowloris outcomes: {dict(seen)}")
    print(
        f"writes during the attack: {len(latencies)}, max {max(latencies):.3f}s, "
        f"median {sorted(latencies)[len(latencies) // 2]:.3f}s"
    )
    assert after == before, f"an election happened during the attack: {before} -> {after}"
    assert cluster.wait_leader() == leader
    assert len(latencies) >= 10, "a well-behaved client kept writing"
    assert any(k.startswith("HTTP/1.1 408") or k in ("closed by server", "reset by server") for k in seen), (
        seen
    )
    with urllib.request.urlopen(cluster.url(leader, "/metrics"), timeout=10) as resp:
        text = resp.read().decode()
    refused = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("raftstate_http_connections_refused_total{")
    }
    print(f"guards on the leader: {refused}")
    assert refused["evicted"] + refused["too_many"] + refused["slow_headers"] > 100, refused
