"""The crafted ``/v1/stream`` frames of issue 18, sent to a real node, with what came back measured.

Shared by ``scripts/attack_stream.py`` (prints the table of docs/security.md) and the regression
test (tests/test_hardening_cluster.py). Each attack runs on its own WebSocket with a token (a read
token is enough for all of them) while a thread polls the leader's ``/health`` every 10 ms on a
keep-alive connection: the slowest of those answers bounds how long the leader's event loop
stalled (a stall delays every answer, heartbeats included).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack

from raftstate.client import protocol as p

__all__ = ["ATTACKS", "AttackResult", "HealthProbe", "run_attack"]


@dataclass
class AttackResult:
    name: str
    frames_back: int = 0
    bytes_back: int = 0
    largest_frame: int = 0
    answers: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str = ""  #: the message of the first refusal, if any
    closed: str = ""  #: how the connection ended, if it did ("" = still open)
    seconds: float = 0.0  #: from the first byte sent to the last answer (or the close)
    health_max_ms: float = 0.0  #: the slowest /health answer on the leader meanwhile
    terms_moved: bool = False  #: did any node's term change during this attack


class HealthProbe:
    """GET /health on one node every ``every_s`` from a separate PROCESS (so the attacking client's
    own work on answers cannot delay the probe): :attr:`slowest_ms`, settable to reset it."""

    def __init__(self, address: str, every_s: float = 0.01) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._slowest = ctx.Value("d", 0.0)
        self._failures = ctx.Value("i", 0)
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_probe, args=(address, every_s, self._slowest, self._failures, self._stop), daemon=True
        )

    @property
    def slowest_ms(self) -> float:
        return float(self._slowest.value)

    @slowest_ms.setter
    def slowest_ms(self, value: float) -> None:
        self._slowest.value = value

    @property
    def failures(self) -> int:
        return int(self._failures.value)

    def __enter__(self) -> HealthProbe:
        self._proc.start()
        deadline = time.monotonic() + 30
        while self.slowest_ms == 0.0 and time.monotonic() < deadline:  # the first answer came
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


def _probe(address: str, every_s: float, slowest: Any, failures: Any, stop: Any) -> None:
    host, port = address.rsplit(":", 1)
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", p.HEALTH.path)
            conn.getresponse().read()
            ms = (time.perf_counter() - t0) * 1000
            if ms > slowest.value:
                slowest.value = ms
        except (OSError, http.client.HTTPException):
            failures.value += 1
            conn = None
        stop.wait(every_s)


def junk_frame() -> bytes:
    """One ~100 KB frame of 100,000 items that are not requests (each a msgpack nil)."""
    n = 100_000
    return b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n


def stale_gets_frame(key: str, count: int = 200) -> bytes:
    """``count`` stale reads of ``key`` in one frame (the issue's: of a 256 KB value)."""
    reqs = [
        {"id": i, "op": p.KV_GET.name, "name": key, "query": {"consistency": "stale"}} for i in range(count)
    ]
    frame: bytes = msgpack.packb(reqs, use_bin_type=True)
    return frame


def empty_maps_frame(size: int) -> bytes:
    """A frame of ``size`` bytes: an array of empty maps (each one byte, ~64 bytes once decoded)."""
    n = size - 5
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


@dataclass(frozen=True)
class Attack:
    name: str
    frames: Callable[[str], list[bytes]]  #: (key of the big value) -> frames to send
    read: bool = True  #: False: never read the answers (a client that does not read)


ATTACKS: tuple[Attack, ...] = (
    Attack("100,000 junk items in one 100 KB frame", lambda key: [junk_frame()]),
    Attack("200 stale gets of a 256 KB value in one frame", lambda key: [stale_gets_frame(key)]),
    Attack("a 4 MiB frame of empty maps", lambda key: [empty_maps_frame((4 << 20) - 64)]),
    Attack(
        "10 x 200 stale gets of a 256 KB value, never read",
        lambda key: [stale_gets_frame(key)] * 10,
        read=False,
    ),
)


async def run_attack(
    url: str, token: str, attack: Attack, key: str, *, quiet_s: float = 2.0, max_s: float = 30.0
) -> AttackResult:
    """Send ``attack``'s frames on a new stream to ``url`` (http://host:port) and collect the answers
    until none came for ``quiet_s`` (or the node closed the stream, or ``max_s`` passed)."""
    if not attack.read:
        return await _never_read(url, token, attack, key, max_s)
    result = AttackResult(attack.name)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url + p.STREAM.path, headers=headers, max_msg_size=0, autoping=True)
        t0 = time.perf_counter()
        for frame in attack.frames(key):
            await ws.send_bytes(frame)
        await _collect(ws, result, t0, quiet_s, max_s)
        await ws.close()
    return result


def _masked_frame(payload: bytes) -> bytes:
    """One binary WebSocket frame from a client (masked, as RFC 6455 requires of clients)."""
    n = len(payload)
    head = b"\x82" + (
        bytes([0x80 | n])
        if n < 126
        else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        if n < 1 << 16
        else bytes([0x80 | 127]) + n.to_bytes(8, "big")
    )
    key = os.urandom(4)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


async def _never_read(url: str, token: str, attack: Attack, key: str, max_s: float) -> AttackResult:
    """Send the frames on a raw socket with a small receive buffer and read nothing for ``max_s``;
    then read what is left: a node that cut the connection delivers far fewer answers than asked
    (the node's log names the cut)."""
    result = AttackResult(attack.name)
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    handshake = (
        f"GET {p.STREAM.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    writer.write(handshake.encode())
    status = await reader.readuntil(b"\r\n\r\n")
    if not status.startswith(b"HTTP/1.1 101"):
        result.closed = status.split(b"\r\n", 1)[0].decode(errors="replace")
        writer.close()
        return result
    t0 = time.perf_counter()
    asked = 0
    for frame in attack.frames(key):
        asked += len(msgpack.unpackb(frame))
        writer.write(_masked_frame(frame))
    await writer.drain()
    await asyncio.sleep(max_s)  # read nothing meanwhile
    got = 0
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 5.0):
            got += len(chunk)
    except (TimeoutError, ConnectionError):
        pass
    result.bytes_back = got
    result.seconds = time.perf_counter() - t0
    expected = asked * 256 * 1024  # each answer carries the 256 KB value
    result.closed = (
        f"cut by the node: {got / 2**20:.1f} MiB of ~{expected / 2**20:.0f} MiB of answers came"
        if got < expected // 2
        else "not cut: every answer came"
    )
    writer.close()
    return result


async def _collect(
    ws: aiohttp.ClientWebSocketResponse, result: AttackResult, t0: float, quiet_s: float, max_s: float
) -> None:
    deadline = t0 + max_s
    while time.perf_counter() < deadline:
        try:
            msg = await ws.receive(timeout=quiet_s)
        except TimeoutError:
            break
        if msg.type != aiohttp.WSMsgType.BINARY:
            result.closed = f"{msg.type.name} {ws.close_code or ''}".strip()
            break
        result.frames_back += 1
        result.bytes_back += len(msg.data)
        result.largest_frame = max(result.largest_frame, len(msg.data))
        for _rid, status, body in msgpack.unpackb(msg.data, raw=False, strict_map_key=False):
            result.answers += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status != 200 and not result.first_error and isinstance(body, dict):
                result.first_error = str(body.get("error", {}).get("message", ""))[:100]
        result.seconds = time.perf_counter() - t0


async def _terms_or_none(terms: Callable[[], dict[str, int]]) -> dict[str, int] | None:
    try:
        return await asyncio.to_thread(terms)
    except TimeoutError:  # a node does not answer /status
        return None


async def run_all(
    url: str,
    token: str,
    key: str,
    probe: HealthProbe,
    terms: Callable[[], dict[str, int]],
    pause_s: float = 1.0,
    only: Collection[int] | None = None,
) -> list[AttackResult]:
    """Every attack of :data:`ATTACKS` in turn, each with the probe's slowest answer during it and
    whether ``terms()`` (every node's term) moved."""
    out = []
    for i, attack in enumerate(ATTACKS):
        if only is not None and i not in only:
            continue
        before = await _terms_or_none(terms)
        probe.slowest_ms = 0.0
        res = await run_attack(url, token, attack, key)
        res.health_max_ms = probe.slowest_ms
        await asyncio.sleep(pause_s)
        after = await _terms_or_none(terms)
        res.terms_moved = after is None or after != before
        if after is None:
            res.closed = (res.closed + "; " if res.closed else "") + "status unanswered afterwards"
        out.append(res)
    return out
