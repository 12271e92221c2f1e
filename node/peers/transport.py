"""Peer transport: persistent WebSocket streams carrying msgpack frames of Raft messages.

Each node runs one aiohttp server for clients and peers alike. Traffic is one-way per stream:

    n1 ──PeerTransport──▶ ws://n2/raft/v1/stream ──StreamReceiver──▶ on_message(msg) on n2
    n1 ◀──StreamReceiver── ws://n1/raft/v1/stream ◀──PeerTransport── n2

so every node dials one outbound stream per peer and accepts one inbound stream from each.

Raft tolerates lost and late messages (it retries what matters), but a node must never stall: a
slow or dead peer must not hold up the others or the event loop. Hence ``send`` only enqueues; each
peer has its own bounded queue (oldest dropped first, counted) and its own sender task that batches
whatever is queued into one frame per write, and redials with capped, jittered exponential backoff.
Per-peer FIFO order holds within a connection, and across reconnects for what was still queued.

Handshake (handshake.py, shared with the snapshot transfer): the dialer sends its node id, its
cluster id, the id it expects to reach and its proof as headers; the receiver refuses (before
upgrading) a foreign cluster, a wrong target or a bad proof, with a reason header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from raftstate.client import protocol
from raftstate.node.config import parse_address
from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.bound_dial import peer_connector
from raftstate.node.peers.conn_errors import describe_connect_error
from raftstate.node.peers.fault_dial import DialMap
from raftstate.node.peers.handshake import (
    CLUSTER_HEADER,
    NODE_HEADER,
    REJECT_HEADER,
    TARGET_HEADER,
    PeerGate,
    handshake_headers,
    remote_of,
)
from raftstate.node.peers.peer_auth import PeerAuth, PeerRefusal
from raftstate.node.peers.wire import FrameError, decode_frame, encode_one, frame_header
from raftstate.raft.messages import Message

__all__ = [
    "CLUSTER_HEADER",
    "NODE_HEADER",
    "REJECT_HEADER",
    "STREAM_PATH",
    "TARGET_HEADER",
    "PeerStatus",
    "PeerTransport",
    "StreamReceiver",
    "TransportOptions",
]

log = logging.getLogger(__name__)

#: the peer route: its row of the endpoint table
STREAM_PATH = protocol.RAFT_STREAM.path

_FRAME_HEADER_MAX = 5  # msgpack array32 header; bounds the framing overhead of one message


@dataclass(frozen=True, slots=True)
class TransportOptions:
    #: largest frame either side accepts. An InstallSnapshot travels as one message, so this caps the
    #: snapshot size that can be shipped (config: settings.max_peer_frame_bytes).
    max_frame_bytes: int = 256 << 20
    #: a frame is filled up to this many bytes; a single larger message still goes, alone
    batch_bytes: int = 1 << 20
    queue_max_msgs: int = 4096  #: per peer; the oldest message is dropped beyond this
    queue_max_bytes: int = 64 << 20  #: per peer; ditto (one larger message is still kept, alone)
    backoff_min_s: float = 0.05
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 2.0  #: TCP connect + WebSocket handshake
    #: one frame write; beyond it the peer counts as stuck and the stream is redialled
    send_timeout_s: float = 10.0
    #: WebSocket ping interval: finds half-open connections while no Raft traffic flows
    heartbeat_s: float = 5.0
    close_timeout_s: float = 1.0  #: wait for the peer's close frame no longer than this

    def __post_init__(self) -> None:
        assert 0 < self.batch_bytes <= self.max_frame_bytes
        assert self.queue_max_msgs > 0 and self.queue_max_bytes > 0
        assert 0 < self.backoff_min_s <= self.backoff_max_s


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One outbound stream, as /status reports it."""

    address: str
    connected: bool
    last_send_ok: float | None  #: wall-clock time (epoch s) of the last frame written, None if never
    queue_len: int
    queue_bytes: int
    sent: int  #: messages written since start
    dropped: int  #: messages dropped since start (queue full or too large)
    last_error: str | None  #: why the last dial or write failed; None while healthy


# --------------------------------------------------------------------------- outbound


class _Peer:
    """Mutable per-peer state, owned by the event loop thread."""

    def __init__(self, peer_id: str, address: str) -> None:
        self.id = peer_id
        self.address = address
        # invariant: queue_bytes == sum(map(len, queue))
        self.queue: deque[bytes] = deque()
        self.queue_bytes = 0
        self.wake = asyncio.Event()  # set when the queue grows, the link closes or a redial is due
        self.redial = False  # the address changed: drop the current stream and dial the new one
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.last_send_ok: float | None = None
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None

    def take_batch(self, batch_bytes: int) -> tuple[bytes, int]:
        """Pop messages up to ``batch_bytes`` (at least one) and frame them."""
        assert self.queue
        items = [self.queue.popleft()]
        size = len(items[0])
        while self.queue and _FRAME_HEADER_MAX + size + len(self.queue[0]) <= batch_bytes:
            size += len(self.queue[0])
            items.append(self.queue.popleft())
        self.queue_bytes -= size
        assert self.queue_bytes >= 0
        return b"".join([frame_header(len(items)), *items]), len(items)


class PeerTransport:
    """Outbound half: ``send`` enqueues, one sender task per peer writes.

    Create it inside the running loop; call :meth:`start` once and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        peers: Mapping[str, str],
        *,
        metrics: NodeMetrics | None = None,
        options: TransportOptions | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        peer_auth: PeerAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        dial_map: DialMap | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.options = options or TransportOptions()
        self._peer_auth = peer_auth  # signs each handshake (node/peers/peer_auth.py); None: auth off
        self._ssl = ssl_context  # verifies the peer's certificate and presents ours; None: plain
        self._metrics = metrics or NodeMetrics(node_id, cluster_id)
        self._rng = rng or random.Random()  # only spreads redials; seed it for reproducible tests
        self._clock = clock
        self._peers: dict[str, _Peer] = {}
        self._retired: set[asyncio.Task[None]] = set()  # tasks of removed peers, still closing
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._dial_map = dial_map or DialMap(None)  # TEST-ONLY overrides (node/test_hooks.py)
        self.update_peers(peers)

    async def start(self) -> None:
        assert self._session is None, "start() once"
        o = self.options
        self._session = aiohttp.ClientSession(
            # limit=0: every peer holds one connection for good; the default pool cap would starve them
            # peer_connector: the proof is bound to the TLS channel once it is up (bound_dial.py)
            connector=peer_connector(self._peer_auth, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=o.connect_timeout_s),
        )
        for peer in self._peers.values():
            self._spawn(peer)

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for ``msg.dst``. Never blocks; may drop (Raft retries what matters)."""
        assert msg.src == self.node_id, f"transport of {self.node_id} asked to send a message from {msg.src}"
        peer = self._peers.get(msg.dst)
        if peer is None or self._closed:
            # A peer removed by a membership change, or a message racing shutdown.
            self._metrics.peer_messages_dropped_total.labels(peer=msg.dst).inc()
            log.debug("dropping %s for unknown peer %s", type(msg).__name__, msg.dst)
            return
        data = encode_one(msg)
        if len(data) + _FRAME_HEADER_MAX > self.options.max_frame_bytes:
            self._drop(peer, 1)
            log.error(
                "dropping %s of %d bytes to %s: larger than max_peer_frame_bytes (%d); raise that setting",
                type(msg).__name__,
                len(data),
                peer.id,
                self.options.max_frame_bytes,
            )
            return
        o = self.options
        while peer.queue and (
            len(peer.queue) >= o.queue_max_msgs or peer.queue_bytes + len(data) > o.queue_max_bytes
        ):
            peer.queue_bytes -= len(peer.queue.popleft())
            self._drop(peer, 1)
        peer.queue.append(data)
        peer.queue_bytes += len(data)
        peer.wake.set()

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        """Make the peer set exactly ``addresses`` (our own id, if present, is ignored)."""
        wanted = {pid: addr for pid, addr in addresses.items() if pid != self.node_id}
        for addr in wanted.values():
            parse_address(addr)  # fail here, loudly, rather than redialling a typo forever
        for pid in set(self._peers) - set(wanted):
            task = self._peers.pop(pid).task
            if task is not None:
                task.cancel()
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        for pid, addr in wanted.items():
            peer = self._peers.get(pid)
            if peer is None:
                peer = self._peers[pid] = _Peer(pid, addr)
                if self._session is not None and not self._closed:
                    self._spawn(peer)
            elif peer.address != addr:
                peer.address = addr
                peer.redial = True
                peer.wake.set()

    def peer_status(self) -> dict[str, PeerStatus]:
        return {
            p.id: PeerStatus(
                p.address,
                p.connected,
                p.last_send_ok,
                len(p.queue),
                p.queue_bytes,
                p.sent,
                p.dropped,
                p.last_error,
            )
            for p in self._peers.values()
        }

    async def close(self) -> None:
        self._closed = True
        tasks = [p.task for p in self._peers.values() if p.task is not None] + list(self._retired)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- per-peer sender task

    def _spawn(self, peer: _Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(self._run(peer), name=f"raft-send-{peer.id}")

    def _drop(self, peer: _Peer, n: int) -> None:
        peer.dropped += n
        self._metrics.peer_messages_dropped_total.labels(peer=peer.id).inc(n)

    def _jitter(self, backoff_s: float) -> float:
        # "equal jitter": at least half the backoff, so redials spread out but still slow down
        return backoff_s / 2 + self._rng.uniform(0, backoff_s / 2)

    async def _run(self, peer: _Peer) -> None:
        o = self.options
        backoff_s = o.backoff_min_s
        while True:
            peer.redial = False
            ws = await self._dial(peer)
            if ws is not None:
                try:
                    if await self._pump(peer, ws):
                        backoff_s = o.backoff_min_s  # the link carried traffic: it was healthy
                finally:
                    peer.connected = False
                    # Bounded: closing writes a close frame, which a stuck peer would never drain.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(self.options.close_timeout_s):
                            await ws.close()
            if peer.redial:
                continue  # the address changed: dial the new one at once
            await asyncio.sleep(self._jitter(backoff_s))
            backoff_s = min(backoff_s * 2, o.backoff_max_s)

    async def _dial(self, peer: _Peer) -> aiohttp.ClientWebSocketResponse | None:
        assert self._session is not None
        o = self.options
        # test/chaos hook (node/peers/fault_dial.py): a chaos run routes this link through its proxy
        scheme = "https" if self._ssl else "http"
        url = f"{scheme}://{self._dial_map.address(peer.id, peer.address)}{STREAM_PATH}"
        headers = handshake_headers(self.node_id, self.cluster_id, peer.id, self._peer_auth)
        try:
            async with asyncio.timeout(o.connect_timeout_s):
                ws = await self._session.ws_connect(
                    url,
                    headers=headers,
                    max_msg_size=o.max_frame_bytes,
                    heartbeat=o.heartbeat_s,
                    compress=0,  # deflating MBs of snapshot would stall the event loop
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=o.close_timeout_s),
                    ssl=self._ssl if self._ssl is not None else True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            why = (exc.headers.get(REJECT_HEADER) if exc.headers else None) or f"HTTP {exc.status}"
            self._failed(peer, f"refused our stream: {why}", logging.ERROR)
            return None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._failed(peer, f"cannot connect: {_describe(exc)}", logging.WARNING)
            return None
        peer.connected = True
        if peer.last_error is not None:
            log.info("stream to peer %s at %s is up again", peer.id, peer.address)
        peer.last_error = None
        return ws

    def _failed(self, peer: _Peer, error: str, level: int) -> None:
        # Log each new kind of failure once; repeats while redialling go to debug.
        was = peer.last_error
        peer.last_error = error
        log.log(level if error != was else logging.DEBUG, "peer %s at %s: %s", peer.id, peer.address, error)

    async def _pump(self, peer: _Peer, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Write queued frames until the link fails or a redial is due. True if anything was written."""
        o = self.options
        wrote = False
        watcher = asyncio.get_running_loop().create_task(_until_closed(ws))
        watcher.add_done_callback(lambda _: peer.wake.set())
        try:
            while not watcher.done() and not peer.redial:
                if not peer.queue:
                    peer.wake.clear()
                    await peer.wake.wait()
                    continue
                frame, n = peer.take_batch(o.batch_bytes)
                try:
                    async with asyncio.timeout(o.send_timeout_s):
                        await ws.send_bytes(frame)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    # The frame is lost with the link; Raft's retries cover it.
                    self._drop(peer, n)
                    self._failed(peer, f"write failed: {_describe(exc)}", logging.WARNING)
                    return wrote
                wrote = True
                peer.sent += n
                peer.last_send_ok = self._clock()
                self._metrics.peer_messages_sent_total.labels(peer=peer.id).inc(n)
            if watcher.done() and not peer.redial:
                self._failed(peer, "stream closed by the peer", logging.INFO)
            return wrote
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])  # let its receive() unwind before anyone calls ws.close()


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
    # The receiver never writes data; reading only serves pongs and notices close or failure.
    with contextlib.suppress(Exception):  # any failure just means "closed" to the sender
        while True:
            msg = await ws.receive()
            if msg.type in _CLOSED_TYPES:
                return


_CLOSED_TYPES = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


def _describe(exc: BaseException) -> str:
    return describe_connect_error(exc)  # no "ssl:default" in a plain-http connection error


# --------------------------------------------------------------------------- inbound


class StreamReceiver:
    """Inbound half: the ``GET /raft/v1/stream`` handler; hands each decoded message to ``on_message``.

    ``on_message`` is called synchronously, in frame order, on the event loop; it must not block.
    """

    _LOGGED_REJECTS_PER_STREAM = 10  # beyond this a misbehaving peer is counted, not logged

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        on_message: Callable[[Message], None],
        *,
        metrics: NodeMetrics | None = None,
        options: TransportOptions | None = None,
        peer_auth: PeerAuth | None = None,
        require_peer_cert: bool = False,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.on_message = on_message
        self.options = options or TransportOptions()
        self._metrics = metrics or NodeMetrics(node_id, cluster_id)
        self._gate = PeerGate(
            node_id,
            cluster_id,
            metrics=self._metrics,
            peer_auth=peer_auth,
            require_peer_cert=require_peer_cert,
            what="raft stream",
            logger=log,
        )
        self._streams: dict[web.WebSocketResponse, str] = {}  # open inbound stream -> peer id
        self.frames_rejected = 0

    def install(self, app: web.Application) -> None:
        """Mount the route and close inbound streams on shutdown (else shutdown waits for them)."""
        app.router.add_get(STREAM_PATH, self.handle)
        app.on_shutdown.append(self._on_shutdown)

    @property
    def handshakes_rejected(self) -> int:
        return self._gate.refused

    async def handle(self, request: web.Request) -> web.StreamResponse:
        remote = remote_of(request)
        refusal = self._gate.check(request)
        if refusal is not None:
            return self._gate.refuse(request, refusal)
        peer_id = request.headers[NODE_HEADER]
        ws = web.WebSocketResponse(
            max_msg_size=self.options.max_frame_bytes,
            heartbeat=self.options.heartbeat_s,
            compress=False,
            timeout=self.options.close_timeout_s,
        )
        if not ws.can_prepare(request).ok:
            return self._gate.refuse(
                request, PeerRefusal(400, "not_websocket", "not a WebSocket upgrade request")
            )
        await ws.prepare(request)
        self._streams[ws] = peer_id
        log.debug("inbound stream from %s (%s) opened", peer_id, remote)
        rejects = 0
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.BINARY:
                    error = self._deliver(frame.data, peer_id)
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    error = f"stream error: {ws.exception()}"  # e.g. a frame over max_frame_bytes
                else:
                    error = f"unexpected {frame.type.name} frame"
                if error is not None:
                    rejects += 1
                    self._reject(remote, peer_id, error, rejects)
        finally:
            del self._streams[ws]
            log.debug("inbound stream from %s (%s) closed", peer_id, remote)
        return ws

    def _deliver(self, data: bytes, peer_id: str) -> str | None:
        """Decode and dispatch one frame; the reason it was rejected, or None."""
        try:
            msgs = decode_frame(data)
        except FrameError as exc:
            return str(exc)
        for m in msgs:
            # A stream carries one peer's messages to us; anything else is misrouted or forged.
            if m.src != peer_id or m.dst != self.node_id:
                what = f"{type(m).__name__} from {m.src} to {m.dst}"
                return f"{what} arrived on {peer_id}'s stream to {self.node_id}"
        for m in msgs:
            try:
                self.on_message(m)
            except Exception:
                # Our own bug, not the peer's: keep the stream (and the node) alive, shout in the log.
                log.exception("on_message failed for %s from %s", type(m).__name__, peer_id)
        return None

    def _reject(self, remote: str, peer_id: str, error: str, nth: int) -> None:
        self.frames_rejected += 1
        self._metrics.peer_frames_rejected_total.inc()
        if nth <= self._LOGGED_REJECTS_PER_STREAM:
            more = (
                "; further rejects on this stream are only counted"
                if nth == self._LOGGED_REJECTS_PER_STREAM
                else ""
            )
            log.warning("dropped a frame from %s (node %s): %s%s", remote, peer_id or "?", error, more)

    async def close(self) -> None:
        """Close every inbound stream (the dialers will redial after their backoff)."""
        streams = list(self._streams)
        await asyncio.gather(
            *(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY) for ws in streams), return_exceptions=True
        )

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close()
