"""Snapshot files over real aiohttp servers on 127.0.0.1: a SnapshotSender posting to a
SnapshotReceiver (node/peers/snapshot_transfer.py), with and without the peer proof.

Each test checks one promise: the file arrives byte-identical and is handed over once; every
refusal leaves no file and says why; one transfer at a time; the sender holds a chunk, not the
file; and the event loop keeps its beat while a large file goes across.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_transport import eventually

from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers import snapshot_transfer
from raftstate.node.peers.handshake import CLUSTER_HEADER, NODE_HEADER, REJECT_HEADER, TARGET_HEADER
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.peers.snapshot_transfer import (
    SHA256_HEADER,
    SIZE_HEADER,
    SNAPSHOT_PATH,
    SnapshotReceiver,
    SnapshotSender,
    SnapshotTransferFailed,
    TransferOptions,
)
from raftstate.node.peers.wire import encode_one
from raftstate.raft.messages import Heartbeat, InstallSnapshot, Membership, Message, SnapshotMeta

CLUSTER = "test-cluster"
SECRET = b"s" * 32
MEMBERS = frozenset({"n1", "n2", "n3"})
MiB = 1 << 20


def snapshot_msg(src: str = "n1", dst: str = "n2", index: int = 120, term: int = 2) -> InstallSnapshot:
    meta = SnapshotMeta(index, term, Membership(MEMBERS, addresses=(("n1", "a:1"), ("n2", "b:2"))), 1_700)
    return InstallSnapshot(term=3, src=src, dst=dst, meta=meta, data=b'{"file": "state.sqlite"}')


def auth(node_id: str, secret: bytes = SECRET, cluster: str = CLUSTER) -> PeerAuth:
    return PeerAuth(secret, cluster, node_id, members=lambda: MEMBERS)


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Follower:
    """A receiving node: a SnapshotReceiver on its own aiohttp server. Its callback takes each file
    away from the staging dir (as the state machine will) and records it."""

    receiver: SnapshotReceiver
    address: str
    staging: Path
    taken: Path
    metrics: NodeMetrics
    got: list[tuple[InstallSnapshot, Path]] = field(default_factory=list)

    def on_snapshot(self, msg: InstallSnapshot, path: Path) -> None:
        kept = self.taken / f"{len(self.got)}-{path.name}"
        path.rename(kept)
        self.got.append((msg, kept))

    def staged(self) -> list[str]:
        return sorted(p.name for p in self.staging.iterdir())


Serve = Callable[..., Any]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(node_id="n2", **receiver kwargs)``: a Follower listening on 127.0.0.1."""
    runners: list[web.AppRunner] = []

    async def start(node_id: str = "n2", **kw: Any) -> Follower:
        staging = tmp_path / f"{node_id}-staging-{len(runners)}"
        taken = tmp_path / f"{node_id}-taken-{len(runners)}"
        taken.mkdir()
        metrics = NodeMetrics(node_id, CLUSTER)
        follower: Follower | None = None

        def on_snapshot(msg: InstallSnapshot, path: Path) -> None:
            assert follower is not None
            follower.on_snapshot(msg, path)

        receiver = SnapshotReceiver(node_id, CLUSTER, staging, on_snapshot, metrics=metrics, **kw)
        app = web.Application()
        receiver.install(app)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        follower = Follower(receiver, f"127.0.0.1:{port}", staging, taken, metrics)
        return follower

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


def sender(node_id: str = "n1", **kw: Any) -> SnapshotSender:
    kw.setdefault("metrics", NodeMetrics(node_id, CLUSTER))
    return SnapshotSender(node_id, str(kw.pop("cluster_id", CLUSTER)), **kw)


def value(m: NodeMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def transfers(m: NodeMetrics, direction: str, outcome: str) -> float:
    """raftstate_snapshot_transfers_total{direction, outcome}"""
    return value(m, "raftstate_snapshot_transfers_total", direction=direction, outcome=outcome)


# --------------------------------------------------------------------------- a file goes across


async def test_a_20_mb_file_arrives_byte_identical_and_is_handed_over_once(
    serve: Serve, tmp_path: Path
) -> None:
    n2 = await serve("n2", peer_auth=auth("n2"))
    src = random_file(tmp_path / "state.sqlite", 20 * MiB)
    s = sender("n1", peer_auth=auth("n1"))
    msg = snapshot_msg()
    await s.send(n2.address, msg, src)
    assert len(n2.got) == 1
    got_msg, got_path = n2.got[0]
    assert got_msg == msg and got_msg.data == msg.data
    assert got_path.name.endswith("incoming-120-2.snapfile")
    assert got_path.stat().st_size == 20 * MiB and sha256_of(got_path) == sha256_of(src)
    assert n2.staged() == [], "nothing left behind in the staging dir"
    assert src.exists(), "the sender's file stays the caller's"
    sm, rm = s._metrics, n2.metrics
    assert value(sm, "raftstate_snapshot_transfer_sent_bytes_total", peer="n2") == 20 * MiB
    assert value(rm, "raftstate_snapshot_transfer_received_bytes_total", peer="n1") == 20 * MiB
    assert transfers(sm, "send", "ok") == 1
    assert transfers(rm, "receive", "ok") == 1
    assert value(sm, "raftstate_snapshot_transfer_seconds_count", direction="send") == 1
    assert value(rm, "raftstate_snapshot_transfer_seconds_count", direction="receive") == 1
    # the receiver serves the next one (an empty file, too)
    await s.send(n2.address, snapshot_msg(index=130), random_file(tmp_path / "empty", 0))
    assert len(n2.got) == 2 and n2.got[1][1].stat().st_size == 0


async def test_the_rate_cap_holds_the_sender_back(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2")
    src = random_file(tmp_path / "f", 2 * MiB)
    s = sender(options=TransferOptions(chunk_bytes=256 << 10, max_bytes_per_s=8 * MiB))
    t0 = time.monotonic()
    await s.send(n2.address, snapshot_msg(), src)
    assert time.monotonic() - t0 >= 0.2, "2 MiB at 8 MiB/s takes a quarter of a second"
    assert len(n2.got) == 1


def test_stale_incoming_files_are_deleted_when_the_receiver_is_created(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("incoming-5-1.abcd.tmp", "incoming-7-2.snapfile", "keep.me"):
        (staging / name).write_bytes(b"x")
    SnapshotReceiver("n2", CLUSTER, staging, lambda m, p: None)
    assert sorted(p.name for p in staging.iterdir()) == ["keep.me"]
    SnapshotReceiver("n2", CLUSTER, tmp_path / "new" / "staging", lambda m, p: None)
    assert (tmp_path / "new" / "staging").is_dir()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("wrong cluster", 403, "cluster_id mismatch"),
        ("wrong target", 421, "this address is node 'n2', not 'n3'"),
        ("bad proof", 401, "does not match this cluster's secret"),
        ("missing proof", 401, "no X-Raftstate-Proof header"),
        ("not a member", 403, "not a member"),
    ],
)
async def test_a_refused_handshake_sends_nothing_and_leaves_no_file(
    serve: Serve, tmp_path: Path, case: str, status: int, reason: str
) -> None:
    # (with auth on, a proof made for n3 is refused at n2 before its target is looked at)
    n2 = await serve("n2", peer_auth=None if case == "wrong target" else auth("n2"))
    src = random_file(tmp_path / "f", 3 * MiB)
    s, msg = {
        "wrong cluster": (sender(peer_auth=auth("n1", cluster="other"), cluster_id="other"), snapshot_msg()),
        "wrong target": (sender(), snapshot_msg(dst="n3")),
        "bad proof": (sender(peer_auth=auth("n1", secret=b"g" * 32)), snapshot_msg()),
        "missing proof": (sender(), snapshot_msg()),
        "not a member": (sender("n9", peer_auth=auth("n9")), snapshot_msg(src="n9")),
    }[case]
    with pytest.raises(SnapshotTransferFailed) as err:
        await s.send(n2.address, msg, src)
    assert err.value.status == status and reason in err.value.detail, err.value
    assert err.value.sent == 0, "refused at 'Expect: 100-continue', before any of the file was sent"
    assert n2.got == [] and n2.staged() == []
    assert transfers(n2.metrics, "receive", "refused") == 1


async def test_a_peer_without_a_certificate_is_refused_when_tls_requires_one(
    serve: Serve, tmp_path: Path
) -> None:
    n2 = await serve("n2", require_peer_cert=True)
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender().send(n2.address, snapshot_msg(), random_file(tmp_path / "f", 1000))
    assert err.value.status == 403 and "no client certificate" in err.value.detail
    assert n2.got == [] and n2.staged() == []


async def test_send_raises_the_named_error_on_a_refused_transfer(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2", peer_auth=auth("n2"))
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender().send(n2.address, snapshot_msg(), random_file(tmp_path / "f", 1000))
    e = err.value
    assert str(e) == (
        f"snapshot transfer to peer n2 at {n2.address} failed after 0 of 1000 file bytes: HTTP 401: "
        "no X-Raftstate-Proof header; this cluster requires auth"
    )
    assert (e.peer, e.address, e.reason, e.sent, e.size, e.status) == (
        "n2",
        n2.address,
        "refused",
        0,
        1000,
        401,
    )
    assert isinstance(e, snapshot_transfer.RemoteFault)


async def test_a_file_whose_checksum_is_not_the_announced_one_is_refused_and_deleted(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n2 = await serve("n2")
    src = random_file(tmp_path / "f", 3 * MiB)
    size, _ = snapshot_transfer.file_digest(src)
    monkeypatch.setattr(snapshot_transfer, "file_digest", lambda path: (size, "0" * 64))
    s = sender()
    with pytest.raises(SnapshotTransferFailed) as err:
        await s.send(n2.address, snapshot_msg(), src)
    assert err.value.status == 400 and err.value.sent == size
    assert f"the file's SHA-256 is not the announced {'0' * 64}" in err.value.detail
    assert n2.got == [] and n2.staged() == []
    assert transfers(n2.metrics, "receive", "bad_checksum") == 1
    assert transfers(s._metrics, "send", "refused") == 1


@pytest.mark.parametrize(("announced", "sent"), [(3 * MiB, 2 * MiB), (MiB, 2 * MiB)])
async def test_a_file_whose_size_is_not_the_announced_one_is_refused_and_deleted(
    serve: Serve, announced: int, sent: int
) -> None:
    n2 = await serve("n2")
    pieces = [framed(snapshot_msg()), *(os.urandom(MiB // 2) for _ in range(sent // (MiB // 2)))]
    answer = await raw_post(n2.address, peer_headers(size=announced), pieces, finish=True)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    want = b"longer than the" if sent > announced else b"the file has %d bytes; %d were" % (sent, announced)
    assert want in answer
    assert n2.got == [] and n2.staged() == []
    assert transfers(n2.metrics, "receive", "size_mismatch") == 1


async def test_a_file_that_shrinks_while_being_sent_is_the_callers_error(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n2 = await serve("n2")
    src = random_file(tmp_path / "f", 3 * MiB)
    size, digest = snapshot_transfer.file_digest(src)
    monkeypatch.setattr(snapshot_transfer, "file_digest", lambda path: (size + 1, digest))
    s = sender()
    with pytest.raises(ValueError, match=f"ended at byte {size} while being sent; it had {size + 1} bytes"):
        await s.send(n2.address, snapshot_msg(), src)
    await eventually(lambda: n2.receiver.receiving_from is None and n2.staged() == [])
    assert n2.got == []
    assert transfers(s._metrics, "send", "local_file") == 1


async def test_a_file_over_the_limit_is_refused_before_it_is_sent(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2", options=TransferOptions(max_snapshot_bytes=1 * MiB))
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender().send(n2.address, snapshot_msg(), random_file(tmp_path / "f", 2 * MiB))
    assert err.value.status == 413 and err.value.sent == 0
    assert f"of {2 * MiB} bytes is over this node's limit of {MiB} bytes" in err.value.detail
    assert n2.got == [] and n2.staged() == []


async def test_a_second_concurrent_transfer_is_refused_with_409(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2")
    big = random_file(tmp_path / "big", 4 * MiB)
    slow = sender("n1", options=TransferOptions(chunk_bytes=256 << 10, max_bytes_per_s=8 * MiB))
    first = asyncio.create_task(slow.send(n2.address, snapshot_msg(), big))
    await eventually(lambda: n2.receiver.receiving_from == "n1")
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender("n3").send(n2.address, snapshot_msg(src="n3"), random_file(tmp_path / "small", 1000))
    assert err.value.status == 409 and err.value.sent == 0
    assert "is receiving a snapshot from n1; one at a time" in err.value.detail
    await first
    assert [m.src for m, _ in n2.got] == ["n1"] and sha256_of(n2.got[0][1]) == sha256_of(big)
    assert n2.receiver.receiving_from is None


# --------------------------------------------------------------------------- a broken body


async def raw_post(address: str, headers: dict[str, str], pieces: list[bytes], *, finish: bool) -> bytes:
    """POST to the snapshot route over a bare socket, chunked; ``finish=False`` hangs up mid-body."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [f"POST {SNAPSHOT_PATH} HTTP/1.1", f"Host: {address}", "Transfer-Encoding: chunked"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    for piece in pieces:
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    answer = b""
    if finish:
        writer.write(b"0\r\n\r\n")
        answer = await reader.read(4096)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return answer


def peer_headers(src: str = "n1", size: int = 0, sha256: str = "0" * 64) -> dict[str, str]:
    return {
        NODE_HEADER: src,
        CLUSTER_HEADER: CLUSTER,
        TARGET_HEADER: "n2",
        SIZE_HEADER: str(size),
        SHA256_HEADER: sha256,
    }


def framed(msg: Message) -> bytes:
    data = encode_one(msg)
    return struct.pack(">I", len(data)) + data


async def test_a_sender_that_hangs_up_mid_body_leaves_no_file(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2")
    pieces = [framed(snapshot_msg()), *(os.urandom(MiB) for _ in range(3))]
    await raw_post(n2.address, peer_headers(size=10 * MiB), pieces, finish=False)
    await eventually(lambda: transfers(n2.metrics, "receive", "disconnected") == 1)
    assert n2.receiver.receiving_from is None and n2.staged() == [] and n2.got == []
    # and the receiver takes the next transfer
    src = random_file(tmp_path / "f", 2 * MiB)
    await sender().send(n2.address, snapshot_msg(), src)
    assert len(n2.got) == 1 and sha256_of(n2.got[0][1]) == sha256_of(src)


@pytest.mark.parametrize("stall_in", ["message", "file"])
async def test_a_sender_that_stalls_is_timed_out_and_frees_the_slot(serve: Serve, stall_in: str) -> None:
    """A sender that stops sending but keeps its connection (a half-open one: it lost power) must
    not hold the one transfer slot for good."""
    n2 = await serve("n2", options=TransferOptions(chunk_timeout_s=0.3))
    pieces = [framed(snapshot_msg())[:3]] if stall_in == "message" else [framed(snapshot_msg()), b"x" * 1000]
    host, port = n2.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"POST {SNAPSHOT_PATH} HTTP/1.1", f"Host: {n2.address}", "Transfer-Encoding: chunked"]
        head += [f"{k}: {v}" for k, v in peer_headers(size=MiB).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await eventually(lambda: n2.receiver.receiving_from == "n1")
        answer = await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert (
        b"the message before the file took over 0.3s"
        if stall_in == "message"
        else b"no byte of the file for 0.3s after 1000"
    ) in answer
    assert n2.receiver.receiving_from is None and n2.staged() == [] and n2.got == []
    assert transfers(n2.metrics, "receive", "timeout") == 1


async def test_a_sender_task_cancelled_mid_body_leaves_no_file(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2")
    src = random_file(tmp_path / "f", 4 * MiB)
    s = sender(options=TransferOptions(chunk_bytes=256 << 10, max_bytes_per_s=8 * MiB))
    task = asyncio.create_task(s.send(n2.address, snapshot_msg(), src))
    await eventually(
        lambda: value(s._metrics, "raftstate_snapshot_transfer_sent_bytes_total", peer="n2") > MiB
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: n2.receiver.receiving_from is None and n2.staged() == [])
    assert n2.got == []


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (struct.pack(">I", MiB + 1), 413, "the message before the file is 1048577 bytes; at most 1048576"),
        (struct.pack(">I", 3) + b"\xc1\xc1\xc1", 400, "the message before the file is malformed"),
        (framed(Heartbeat(1, "n1", "n2", 0, 0)), 400, "expected an InstallSnapshot, got Heartbeat"),
        (framed(snapshot_msg(src="n3")), 400, "an InstallSnapshot from n3 to n2 sent by n1 to n2"),
        (framed(snapshot_msg(dst="n3")), 400, "an InstallSnapshot from n1 to n3 sent by n1 to n2"),
        (struct.pack(">I", 100) + b"short", 400, "the body ended before the file"),
    ],
)
async def test_a_bad_message_before_the_file_is_refused(
    serve: Serve, body: bytes, status: int, reason: str
) -> None:
    """Without Expect (a plain client): the handshake is checked by the handler instead."""
    n2 = await serve("n2", peer_auth=auth("n2"))
    headers = {**peer_headers(), **auth("n1").sign("n2")}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{n2.address}{SNAPSHOT_PATH}", data=body, headers=headers) as resp:
            assert resp.status == status
            assert reason in resp.headers[REJECT_HEADER]
    assert n2.got == [] and n2.staged() == []


async def test_a_request_without_expect_is_authenticated_by_the_handler(serve: Serve) -> None:
    n2 = await serve("n2", peer_auth=auth("n2"))
    answer = await raw_post(n2.address, peer_headers(), [framed(snapshot_msg())], finish=True)
    assert answer.startswith(b"HTTP/1.1 401") and b"no X-Raftstate-Proof header" in answer
    proof = auth("n1").sign("n2")
    answer = await raw_post(n2.address, {**peer_headers(sha256=hashlib.sha256().hexdigest()), **proof},
                            [framed(snapshot_msg())], finish=True)  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert len(n2.got) == 1 and n2.got[0][1].stat().st_size == 0
    # the proof is spent: replaying the same headers is refused
    answer = await raw_post(n2.address, {**peer_headers(), **proof}, [framed(snapshot_msg())], finish=True)
    assert answer.startswith(b"HTTP/1.1 401") and b"already used" in answer


@pytest.mark.parametrize("expect", ["", "something-else", "100-continue"])
async def test_any_expect_header_is_checked_like_none(serve: Serve, expect: str) -> None:
    """Refused at the Expect answer or by the handler: never let through for having one."""
    n2 = await serve("n2", peer_auth=auth("n2"))
    headers = {**peer_headers(sha256=hashlib.sha256().hexdigest()), "Expect": expect}
    answer = await raw_post(n2.address, headers, [framed(snapshot_msg())], finish=True)
    assert answer.startswith(b"HTTP/1.1 401") and b"no X-Raftstate-Proof header" in answer, answer
    assert n2.got == [] and n2.staged() == []


async def test_a_callback_that_fails_gets_a_500_and_its_file_is_deleted(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2")

    def broken(msg: InstallSnapshot, path: Path) -> None:
        raise RuntimeError("the state machine is not ready")

    n2.receiver.on_snapshot = broken
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender().send(n2.address, snapshot_msg(), random_file(tmp_path / "f", MiB))
    assert err.value.status == 500 and "node n2 failed to take the snapshot" in err.value.detail
    assert n2.staged() == []
    assert transfers(n2.metrics, "receive", "callback_failed") == 1


async def test_a_disk_that_fails_the_receiver_gets_a_500_and_no_file(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n2 = await serve("n2")

    def full(self: Any, data: bytearray) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_transfer._StagedFile, "write", full)
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender().send(n2.address, snapshot_msg(), random_file(tmp_path / "f", 3 * MiB))
    assert err.value.status == 500 and "node n2 cannot store the file" in err.value.detail
    assert n2.staged() == [] and n2.got == [] and n2.receiver.receiving_from is None
    assert transfers(n2.metrics, "receive", "io_error") == 1


@pytest.mark.parametrize("bad", [{SIZE_HEADER: "-1"}, {SIZE_HEADER: ""}, {SHA256_HEADER: "ABC"}])
async def test_a_request_without_a_usable_size_or_checksum_is_refused(
    serve: Serve, bad: dict[str, str]
) -> None:
    n2 = await serve("n2")
    answer = await raw_post(n2.address, {**peer_headers(), **bad}, [framed(snapshot_msg())], finish=True)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert n2.staged() == []


# --------------------------------------------------------------------------- the sender's link


async def test_a_peer_that_never_answers_times_out(tmp_path: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    s = sender(options=TransferOptions(chunk_timeout_s=0.3))
    try:
        t0 = time.monotonic()
        with pytest.raises(SnapshotTransferFailed) as err:
            await s.send(address, snapshot_msg(), random_file(tmp_path / "f", 1000))
        assert 0.3 <= time.monotonic() - t0 < 3
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert err.value.reason == "timeout" and err.value.status is None
    assert (
        f"to peer n2 at {address} failed after 0 of 1000 file bytes: connecting took longer than 0.3s"
        in str(err.value)
    )
    assert transfers(s._metrics, "send", "timeout") == 1


async def test_a_peer_that_is_down_is_a_connection_failure(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(SnapshotTransferFailed) as err:
        await sender().send(f"127.0.0.1:{port}", snapshot_msg(), random_file(tmp_path / "f", 10))
    assert err.value.reason == "connection" and err.value.status is None and err.value.sent == 0


async def test_a_file_that_cannot_be_read_is_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await sender().send("127.0.0.1:9", snapshot_msg(), tmp_path / "missing")


# --------------------------------------------------------------------------- memory and liveness


class SpyFile:
    """A file that records the size of every read() asked of it."""

    def __init__(self, f: Any, reads: list[int]) -> None:
        self._f, self._reads = f, reads

    def read(self, n: int = -1) -> bytes:
        self._reads.append(n)
        data: bytes = self._f.read(n)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> SpyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class SpyPath(type(Path())):  # type: ignore[misc]
    reads: list[int]

    def open(self, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        return SpyFile(super().open(*args, **kw), self.reads)


async def test_the_sender_reads_the_file_a_chunk_at_a_time(serve: Serve, tmp_path: Path) -> None:
    n2 = await serve("n2")
    src = SpyPath(random_file(tmp_path / "f", 5 * MiB + 123))
    src.reads = []
    await sender(options=TransferOptions(chunk_bytes=MiB)).send(n2.address, snapshot_msg(), src)
    assert src.reads == [MiB] * 5 + [123], "read() never asks for more than a chunk (the hash uses readinto)"
    assert sha256_of(n2.got[0][1]) == sha256_of(src)


async def test_the_sender_holds_a_chunk_of_the_file_not_the_file(serve: Serve, tmp_path: Path) -> None:
    """Peak Python memory while a 50 MB file goes across (both ends in this process) stays a few
    chunks (about 6 MiB with 1 MiB chunks): the file is never read whole, on either side."""
    n2 = await serve("n2")
    src = random_file(tmp_path / "f", 50 * MiB)
    s = sender(options=TransferOptions(chunk_bytes=MiB))
    tracemalloc.start()
    try:
        await s.send(n2.address, snapshot_msg(), src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(n2.got) == 1 and sha256_of(n2.got[0][1]) == sha256_of(src)
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB for a 50 MiB file"


async def test_the_event_loop_keeps_its_beat_during_a_100_mb_transfer(serve: Serve, tmp_path: Path) -> None:
    """A heartbeat timer on the loop that both ends run on is never late by more than 200 ms."""
    n2 = await serve("n2")
    src = random_file(tmp_path / "f", 100 * MiB)
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.05)
            lags.append(loop.time() - t0 - 0.05)

    tick = asyncio.create_task(ticker())
    try:
        await sender().send(n2.address, snapshot_msg(), src)
    finally:
        done.set()
        await tick
    assert len(n2.got) == 1 and n2.got[0][1].stat().st_size == 100 * MiB
    assert len(lags) >= 3, "the transfer took long enough to measure"
    assert max(lags) < 0.2, f"the loop was late by {max(lags) * 1000:.0f} ms"
