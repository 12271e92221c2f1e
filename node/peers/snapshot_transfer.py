"""Snapshot files to a lagging follower: one HTTP request per transfer, streamed, checksummed.

A follower the leader's log no longer reaches gets the leader's state as a FILE (a consistent copy
of the store, possibly hundreds of MB). It never travels on the peer WebSocket stream: one frame of
that size would exceed ``max_peer_frame_bytes`` and hold every heartbeat behind it. Instead::

    leader                                                   follower
    SnapshotSender.send(address, msg, path)
      sha256 and size of the file (a thread)
      POST /raft/v1/snapshot on a new connection ──────────▶ SnapshotReceiver
        handshake headers (handshake.py: node, cluster,        the same check as the Raft stream,
        target, proof), X-Raftstate-Snapshot-Size/-Sha256,     at "Expect: 100-continue": a refused
        Expect: 100-continue                                   transfer sends no byte of its body
      body: u32 big-endian length | the InstallSnapshot
        message (wire.encode_one; its data a small
        descriptor) | the file's bytes, read chunk by   ────▶  the message: an InstallSnapshot from
        chunk in a thread, at most max_bytes_per_s             that peer to this node; the file:
                                                               hashed and written chunk by chunk in
                                                               a thread to staging_dir/incoming-
                                                               <index>-<term>.<random>.tmp
                                                               size and sha256 as announced, else
                                                               400 and the file is deleted; fsync,
                                                               rename to incoming-<index>-<term>
                                                               .snapfile, fsync the directory,
                                                  ◀──── 200  on_snapshot(msg, path): the file is
                                                               the callback's from then on

Refusals answer a status and the reason in ``X-Raftstate-Reject``: the handshake's (400, 401, 403,
421), 409 while another transfer is being received (one at a time), 413 for a file over
``max_snapshot_bytes`` (before any of it is sent) or a message over 1 MiB, 400 for a malformed
message or a file that is not what its headers say, 408 for a sender that stalls longer than
``chunk_timeout_s``, 500 if this node cannot store the file or its callback fails. A sender that
goes away mid-body leaves no file behind. Files named ``incoming-*`` in the staging dir when the
receiver is created are leftovers of a crash (or of a callback that did not take its file away)
and are deleted.

The sender raises :class:`SnapshotTransferFailed` (a remote fault) naming the peer, its address and
how much was sent; a file that cannot be read, or changes while being sent, is the caller's and
raises as it is (OSError, ValueError).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import ssl
import struct
import time
import types
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import hdrs, web

from raftstate.client import protocol
from raftstate.node.config import parse_address
from raftstate.node.errors import RemoteFault
from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.bound_dial import peer_connector
from raftstate.node.peers.handshake import NODE_HEADER, REJECT_HEADER, PeerGate, handshake_headers
from raftstate.node.peers.peer_auth import PeerAuth
from raftstate.node.peers.wire import FrameError, decode_one, encode_one
from raftstate.node.security.log_fields import printable
from raftstate.node.storage.data_dir import fsync_fd, publish, write_all
from raftstate.raft.messages import InstallSnapshot

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SHA256_HEADER",
    "SIZE_HEADER",
    "SNAPSHOT_PATH",
    "SnapshotReceiver",
    "SnapshotSender",
    "SnapshotTransferFailed",
    "TransferOptions",
    "file_digest",
]

log = logging.getLogger(__name__)

#: the route: its row of the endpoint table
SNAPSHOT_PATH: Final = protocol.RAFT_SNAPSHOT.path
SIZE_HEADER: Final = "X-Raftstate-Snapshot-Size"  #: the file's size in bytes (decimal)
SHA256_HEADER: Final = "X-Raftstate-Snapshot-Sha256"  #: the file's SHA-256 (64 lowercase hex digits)
#: the largest InstallSnapshot message before the file (its data is a descriptor, not the state)
MAX_MESSAGE_BYTES: Final = 1 << 20
_PREFIX = struct.Struct(">I")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ANSWER_BYTES = 4096  # read no more of an answer than this (it is a line of text)


@dataclass(frozen=True, slots=True)
class TransferOptions:
    #: the file is read (sender) and written (receiver) in pieces of this size, each in a thread
    chunk_bytes: int = 1 << 20
    #: the longest any one step may take: connecting and being accepted, reading and writing one
    #: chunk (sender); the message, and each piece of the file to arrive (receiver). Beyond it the
    #: link counts as stuck and the transfer fails.
    chunk_timeout_s: float = 30.0
    #: after the last byte: the receiver's fsync of the whole file, its rename and the callback
    answer_timeout_s: float = 120.0
    #: the sender's rate cap, so a catch-up cannot saturate a small link; None: as fast as it goes
    max_bytes_per_s: int | None = None
    #: the receiver refuses (413) a larger file, before any of it is sent
    max_snapshot_bytes: int = 64 << 30

    def __post_init__(self) -> None:
        assert self.chunk_bytes > 0 and self.max_snapshot_bytes >= 0
        assert self.chunk_timeout_s > 0 and self.answer_timeout_s > 0
        assert self.max_bytes_per_s is None or self.max_bytes_per_s > 0


class SnapshotTransferFailed(RemoteFault):
    """A peer refused a snapshot file, or the link failed or stalled while sending it."""

    def __init__(
        self, peer: str, address: str, reason: str, detail: str, *, sent: int, size: int, status: int | None
    ) -> None:
        what = f"HTTP {status}: {detail}" if status is not None else detail
        super().__init__(
            f"snapshot transfer to peer {peer} at {address} failed after {sent} of {size} file bytes: {what}"
        )
        self.peer = peer
        self.address = address
        self.reason = reason  #: the metric's outcome: refused, timeout, connection
        self.detail = detail  #: the receiver's reason (its reject header), or what went wrong
        self.sent = sent  #: file bytes written to the connection (not necessarily received)
        self.size = size
        self.status = status  #: the receiver's answer; None if there was none


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of the file at ``path``. Blocking: call it in a thread."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")  # reads in 256 KiB pieces, GIL released
        return f.tell(), digest.hexdigest()


# --------------------------------------------------------------------------- sending


class _Progress:
    """One outgoing transfer, shared by the task that sends it and aiohttp's task writing its body."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0  # file bytes handed to the connection
        self.phase = "connecting"  # what a timeout interrupted
        self.limit_s = 0.0  # the timeout of that phase
        self.local_error: Exception | None = None  # the file failed us: not the peer's fault
        self.deadline: asyncio.Timeout | None = None  # None once the request is over

    def step(self, phase: str, limit_s: float) -> None:
        """Start a step: the transfer fails unless it ends within ``limit_s``."""
        self.phase, self.limit_s = phase, limit_s
        if self.deadline is not None:
            self.deadline.reschedule(asyncio.get_running_loop().time() + limit_s)


class SnapshotSender:
    """Sends snapshot files to peers, each on a connection of its own. Several sends may run at
    once (to different peers); nothing needs closing."""

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        *,
        peer_auth: PeerAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        metrics: NodeMetrics | None = None,
        options: TransferOptions | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._peer_auth = peer_auth  # signs each request (node/peers/peer_auth.py); None: auth off
        self._ssl = ssl_context  # verifies the peer's certificate and presents ours; None: plain
        self._metrics = metrics or NodeMetrics(node_id, cluster_id)
        self.options = options or TransferOptions()

    async def send(self, address: str, msg: InstallSnapshot, path: Path) -> None:
        """Send ``msg`` and the file at ``path`` to ``msg.dst`` at ``address`` (host:port); return
        once the peer has it durably (and has handed it to its callback). The file must not change
        until this returns. Raises :class:`SnapshotTransferFailed` if the peer refuses it or the
        link fails or stalls; OSError/ValueError if the file cannot be read or changes."""
        assert isinstance(msg, InstallSnapshot), (
            f"a snapshot transfer carries an InstallSnapshot, not {msg!r}"
        )
        assert msg.src == self.node_id, f"sender of {self.node_id} asked to send a message from {msg.src}"
        parse_address(address)  # ValueError saying what is wrong with it
        encoded = encode_one(msg)
        if len(encoded) > MAX_MESSAGE_BYTES:
            raise ValueError(
                f"InstallSnapshot message of {len(encoded)} bytes; at most {MAX_MESSAGE_BYTES}: its data "
                "is a descriptor of the file, not the state"
            )
        size, sha256 = await asyncio.to_thread(file_digest, path)
        headers = {
            **handshake_headers(self.node_id, self.cluster_id, msg.dst, self._peer_auth),
            SIZE_HEADER: str(size),
            SHA256_HEADER: sha256,
            hdrs.CONTENT_TYPE: "application/octet-stream",
        }
        progress = _Progress(size)
        started = time.perf_counter()
        try:
            await self._post(address, msg.dst, headers, _PREFIX.pack(len(encoded)) + encoded, path, progress)
        except SnapshotTransferFailed as exc:
            self._metrics.snapshot_transfers_total.labels(direction="send", outcome=exc.reason).inc()
            raise
        except Exception:
            self._metrics.snapshot_transfers_total.labels(direction="send", outcome="local_file").inc()
            raise
        elapsed = time.perf_counter() - started
        self._metrics.snapshot_transfers_total.labels(direction="send", outcome="ok").inc()
        self._metrics.snapshot_transfer_seconds.labels(direction="send").observe(elapsed)
        log.info(
            "sent snapshot %d/%d (%d bytes) to %s at %s in %.1fs",
            msg.meta.index,
            msg.meta.term,
            size,
            msg.dst,
            address,
            elapsed,
        )

    async def _post(
        self,
        address: str,
        peer: str,
        headers: Mapping[str, str],
        head: bytes,
        path: Path,
        progress: _Progress,
    ) -> None:
        o = self.options
        url = f"{'https' if self._ssl else 'http'}://{address}{SNAPSHOT_PATH}"

        def failed(reason: str, detail: str, status: int | None = None) -> SnapshotTransferFailed:
            return SnapshotTransferFailed(
                peer, address, reason, detail, sent=progress.sent, size=progress.size, status=status
            )

        body = self._body(peer, head, path, progress)
        try:
            # A connection of its own (closed after): never the peer stream, never a pooled one.
            async with (
                aiohttp.ClientSession(
                    connector=peer_connector(self._peer_auth, force_close=True, limit=1),
                    timeout=aiohttp.ClientTimeout(total=None),  # progress.deadline bounds each step
                ) as session,
                asyncio.timeout(None) as progress.deadline,
            ):
                progress.step("connecting", o.chunk_timeout_s)
                async with session.post(
                    url,
                    data=body,
                    headers=headers,
                    expect100=True,  # a refusal comes before the body, not after it
                    ssl=self._ssl if self._ssl is not None else True,
                ) as resp:
                    status = resp.status
                    answer = await resp.content.read(_ANSWER_BYTES)
                    why = resp.headers.get(REJECT_HEADER) or answer.decode("utf-8", "replace").strip()
        except TimeoutError:
            if progress.local_error is not None:
                raise progress.local_error from None
            raise failed("timeout", f"{progress.phase} took longer than {progress.limit_s:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            if progress.local_error is not None:
                raise progress.local_error from None
            raise failed("connection", str(exc) or type(exc).__name__) from exc
        finally:
            progress.deadline = None
            assert isinstance(body, types.AsyncGeneratorType)
            if not body.ag_running:  # else aiohttp's cancelled writer task is still unwinding it
                await body.aclose()  # the file is closed now, not whenever the loop collects it
        if progress.local_error is not None:
            raise progress.local_error
        if status != 200:
            raise failed("refused", why or "no reason given", status)

    async def _body(
        self, peer: str, head: bytes, path: Path, progress: _Progress
    ) -> AsyncGenerator[bytes, None]:
        """The request body. aiohttp asks for it only once the receiver accepted the request (100
        Continue), and asks for the next piece only once the last one is written: at most one
        chunk of the file is in memory."""
        o = self.options
        loop = asyncio.get_running_loop()
        sent_bytes = self._metrics.snapshot_transfer_sent_bytes_total.labels(peer=peer)
        progress.step("sending", o.chunk_timeout_s)
        yield head
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except Exception as exc:
            progress.local_error = exc  # aiohttp would report it as a connection error
            raise
        try:
            started = loop.time()
            while progress.sent < progress.size:
                progress.step("sending", o.chunk_timeout_s)  # reading this chunk and writing it
                try:
                    chunk = await asyncio.to_thread(f.read, min(o.chunk_bytes, progress.size - progress.sent))
                    if not chunk:
                        raise ValueError(
                            f"{path} ended at byte {progress.sent} while being sent; it had {progress.size} "
                            "bytes when hashed: a snapshot file must not change until send() returns"
                        )
                except Exception as exc:
                    progress.local_error = exc
                    raise
                # aiohttp writes it before it asks for the next piece: no exception of the
                # connection's is ever raised here, they end aiohttp's loop over this generator
                yield chunk
                progress.sent += len(chunk)
                sent_bytes.inc(len(chunk))
                if o.max_bytes_per_s is not None:
                    ahead_s = progress.sent / o.max_bytes_per_s - (loop.time() - started)
                    if ahead_s > 0:
                        progress.step("sending", ahead_s + o.chunk_timeout_s)
                        await asyncio.sleep(ahead_s)
        finally:
            f.close()
        progress.step("waiting for the answer", o.answer_timeout_s)


# --------------------------------------------------------------------------- receiving


class _Refused(RemoteFault):
    """A transfer this receiver refuses: its status, the metric's outcome and the reason."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


@dataclass(frozen=True, slots=True)
class _Offer:
    """What an admitted request announces."""

    peer: str
    size: int
    sha256: str


class _StagedFile:
    """The file being received. Every method blocks: they run, in order, on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256()
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, data: bytearray) -> None:
        assert self._fd is not None
        self.sha256.update(data)  # releases the GIL for large buffers
        write_all(self._fd, data)

    def publish(self, final: Path) -> None:
        """fsync, close, rename to ``final``, fsync the directory."""
        assert self._fd is not None
        fsync_fd(self._fd, None)
        os.close(self._fd)
        self._fd = None
        publish(self.path, final, None)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


class SnapshotReceiver:
    """The ``POST /raft/v1/snapshot`` handler: receives one snapshot file at a time into
    ``staging_dir`` and hands it to ``on_snapshot(msg, path)``, which is called on the event loop
    (it must not block) and owns the file from then on: it moves or deletes it (``incoming-*``
    files left in ``staging_dir`` are deleted when a receiver is next created)."""

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        staging_dir: Path,
        on_snapshot: Callable[[InstallSnapshot, Path], None],
        *,
        metrics: NodeMetrics | None = None,
        peer_auth: PeerAuth | None = None,
        require_peer_cert: bool = False,
        options: TransferOptions | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.staging_dir = staging_dir
        self.on_snapshot = on_snapshot
        self.options = options or TransferOptions()
        self._metrics = metrics or NodeMetrics(node_id, cluster_id)
        self._gate = PeerGate(
            node_id,
            cluster_id,
            metrics=self._metrics,
            peer_auth=peer_auth,
            require_peer_cert=require_peer_cert,
            what="snapshot transfer",
            logger=log,
        )
        self._active: str | None = None  # the peer whose transfer is being received
        staging_dir.mkdir(parents=True, exist_ok=True)
        for stale in sorted(staging_dir.glob("incoming-*")):
            log.info("deleting %s: left over from an earlier snapshot transfer", stale)
            stale.unlink(missing_ok=True)

    @property
    def receiving_from(self) -> str | None:
        """The peer whose transfer is being received, or None."""
        return self._active

    def install(self, app: web.Application) -> None:
        app.router.add_post(SNAPSHOT_PATH, self.handle, expect_handler=self._expect)

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse the request before its body is sent, or let it go on
        (its handler then checks it for real: this look ahead leaves its proof unspent)."""
        admitted = self._admit(request, spend=False)
        if isinstance(admitted, web.Response):
            return admitted
        expect = request.headers.get(hdrs.EXPECT, "")
        if request.version != aiohttp.HttpVersion11 or expect.lower() != "100-continue":
            return self._failed(request, _Refused(417, "bad_request", f"cannot meet 'Expect: {expect}'"))
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        admitted = self._admit(request, spend=True)
        if isinstance(admitted, web.Response):
            return admitted
        self._active = admitted.peer
        try:
            return await self._receive(request, admitted)
        except _Refused as refused:
            return self._failed(request, refused)
        except OSError as exc:  # this node's disk (the peer's connection errors are _Refused)
            log.error("cannot store a snapshot from %s in %s: %s", admitted.peer, self.staging_dir, exc)
            why = f"node {self.node_id} cannot store the file: {exc}"
            return self._failed(request, _Refused(500, "io_error", why))
        finally:
            self._active = None

    def _admit(self, request: web.Request, *, spend: bool) -> _Offer | web.Response:
        """What the request announces, or the answer that refuses it. ``spend``: see PeerGate.check."""
        refusal = self._gate.check(request, spend=spend)
        if refusal is not None:
            self._metrics.snapshot_transfers_total.labels(direction="receive", outcome="refused").inc()
            return self._gate.refuse(request, refusal)
        peer = request.headers.get(NODE_HEADER, "")
        size_text = request.headers.get(SIZE_HEADER, "")
        sha256 = request.headers.get(SHA256_HEADER, "")
        if not (size_text.isascii() and size_text.isdigit() and len(size_text) <= 20):
            return self._failed(request, _Refused(400, "bad_request", f"{SIZE_HEADER} must be a byte count"))
        if not _SHA256_HEX.fullmatch(sha256):
            return self._failed(
                request, _Refused(400, "bad_request", f"{SHA256_HEADER} must be 64 lowercase hex digits")
            )
        size = int(size_text)
        limit = self.options.max_snapshot_bytes
        if size > limit:
            return self._failed(
                request,
                _Refused(
                    413,
                    "too_large",
                    f"a snapshot file of {size} bytes is over this node's limit of {limit} bytes",
                ),
            )
        if self._active is not None:
            return self._failed(
                request,
                _Refused(
                    409,
                    "busy",
                    f"node {self.node_id} is receiving a snapshot from {self._active}; one at a time",
                ),
            )
        return _Offer(peer, size, sha256)

    async def _receive(self, request: web.Request, offer: _Offer) -> web.Response:
        started = time.perf_counter()
        msg = await self._read_message(request, offer.peer)
        m = msg.meta
        staged = _StagedFile(self.staging_dir / f"incoming-{m.index}-{m.term}.{secrets.token_hex(4)}.tmp")
        final = self.staging_dir / f"incoming-{m.index}-{m.term}.snapfile"
        loop = asyncio.get_running_loop()
        # One worker thread owns the file: its writes, and its deletion, run in order — a handler
        # cancelled mid-write never closes the file under a write still running.
        io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"snapshot-from-{offer.peer}")
        published = False
        try:
            await loop.run_in_executor(io, staged.open)
            await self._read_file(request, offer, staged, io)
            await loop.run_in_executor(io, staged.publish, final)
            published = True
        finally:
            discarded = None if published else loop.run_in_executor(io, staged.discard)  # after any write
            io.shutdown(wait=False)  # the thread ends once what is queued has run
            if discarded is not None:
                await discarded
        elapsed = time.perf_counter() - started
        try:
            self.on_snapshot(msg, final)
        except Exception:
            log.exception("on_snapshot failed for snapshot %d/%d from %s", m.index, m.term, offer.peer)
            final.unlink(missing_ok=True)
            raise _Refused(
                500, "callback_failed", f"node {self.node_id} failed to take the snapshot"
            ) from None
        self._metrics.snapshot_transfers_total.labels(direction="receive", outcome="ok").inc()
        self._metrics.snapshot_transfer_seconds.labels(direction="receive").observe(elapsed)
        log.info(
            "received snapshot %d/%d (%d bytes) from %s in %.1fs",
            m.index,
            m.term,
            offer.size,
            offer.peer,
            elapsed,
        )
        return web.Response(text="ok\n")

    async def _read_message(self, request: web.Request, peer: str) -> InstallSnapshot:
        """The length-prefixed InstallSnapshot before the file: from ``peer``, to this node."""
        content = request.content
        timeout_s = self.options.chunk_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                (length,) = _PREFIX.unpack(await content.readexactly(_PREFIX.size))
                if length > MAX_MESSAGE_BYTES:
                    raise _Refused(
                        413,
                        "bad_message",
                        f"the message before the file is {length} bytes; at most {MAX_MESSAGE_BYTES}",
                    )
                msg = decode_one(await content.readexactly(length))
        except FrameError as exc:
            raise _Refused(400, "bad_message", f"the message before the file is malformed: {exc}") from None
        except (asyncio.IncompleteReadError, ConnectionError, aiohttp.ClientError) as exc:
            raise _Refused(400, "disconnected", f"the body ended before the file: {_describe(exc)}") from None
        except TimeoutError:
            raise _Refused(408, "timeout", f"the message before the file took over {timeout_s:g}s") from None
        if not isinstance(msg, InstallSnapshot):
            raise _Refused(400, "bad_message", f"expected an InstallSnapshot, got {type(msg).__name__}")
        if msg.src != peer or msg.dst != self.node_id:
            raise _Refused(
                400,
                "bad_message",
                f"an InstallSnapshot from {msg.src} to {msg.dst} sent by {peer} to {self.node_id}",
            )
        return msg

    async def _read_file(
        self, request: web.Request, offer: _Offer, staged: _StagedFile, io: ThreadPoolExecutor
    ) -> None:
        """The rest of the body into ``staged``, a chunk at a time; it must be the announced file."""
        loop = asyncio.get_running_loop()
        received = self._metrics.snapshot_transfer_received_bytes_total.labels(peer=offer.peer)
        chunk_bytes, timeout_s = self.options.chunk_bytes, self.options.chunk_timeout_s
        got = 0
        buf = bytearray()
        try:
            while True:
                # A sender that stalls (or died without closing: a half-open connection) must not
                # hold the one transfer slot for good.
                async with asyncio.timeout(timeout_s):
                    data = await request.content.readany()
                if not data:
                    break
                got += len(data)
                received.inc(len(data))
                if got > offer.size:
                    raise _Refused(
                        400, "size_mismatch", f"the file is longer than the {offer.size} bytes announced"
                    )
                buf += data
                if len(buf) >= chunk_bytes:
                    await loop.run_in_executor(io, staged.write, buf)
                    buf = bytearray()
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise _Refused(
                400, "disconnected", f"the body broke off after {got} of {offer.size} bytes: {_describe(exc)}"
            ) from None
        except TimeoutError:
            raise _Refused(
                408, "timeout", f"no byte of the file for {timeout_s:g}s after {got} of {offer.size} bytes"
            ) from None
        if buf:
            await loop.run_in_executor(io, staged.write, buf)
        if got != offer.size:
            raise _Refused(400, "size_mismatch", f"the file has {got} bytes; {offer.size} were announced")
        if staged.sha256.hexdigest() != offer.sha256:
            raise _Refused(400, "bad_checksum", f"the file's SHA-256 is not the announced {offer.sha256}")

    def _failed(self, request: web.Request, refused: _Refused) -> web.Response:
        self._metrics.snapshot_transfers_total.labels(direction="receive", outcome=refused.outcome).inc()
        peer = request.headers.get(NODE_HEADER, "") or "?"
        level = logging.INFO if refused.outcome == "busy" else logging.WARNING
        log.log(level, "refused a snapshot transfer from %s: %s", printable(peer), printable(refused.message))
        return web.Response(
            status=refused.status, text=refused.message + "\n", headers={REJECT_HEADER: refused.message}
        )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
