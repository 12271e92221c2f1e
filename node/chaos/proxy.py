"""Partitions as real loss of TCP traffic: one proxy per directed peer link.

Every node dials every peer itself for its OUTBOUND Raft stream, so the proxy for link i→j (which
node i dials instead of j: the peer-dial-map hook, node/test_hooks.py) carries exactly
i's messages to j. Cutting both i→j and j→i is a symmetric partition; cutting one is one-way.

A cut link behaves like a dead network path, not like a closed port: its live connections are
dropped (so nothing already buffered in the proxy leaks through after the cut), and new
connections are accepted but never forwarded — the dialer sees its handshake time out, as it would
on a real partition, rather than an instant refusal. Healing closes those black-holed connections
so the dialer redials at once.

A slow link (``slow``) forwards what its dialer sends at no more than a given rate, per
connection: a big transfer (a copy of the state store for a lagging follower, which goes through
the same proxy) then takes seconds, long enough for a fault to hit it while heartbeats (small
frames on their own connection) still flow.

The proxies run on their own event loop in a thread, so a busy workload cannot delay Raft traffic;
``cut``/``heal``/``slow`` are thread-safe. Client traffic never goes through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

Link = tuple[str, str]  # (from node, to node)


class _LinkProxy:
    def __init__(self, link: Link, target: tuple[str, int]) -> None:
        self.link = link
        self.target = target
        self.cut = False
        self.rate: float | None = None  #: bytes/s each connection may carry from its dialer; None: no cap
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()  # every open socket of this link, both ends

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            if self.cut:  # black hole: hold the connection, forward nothing
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer, lambda: self.rate), _pipe(up_reader, writer))
            finally:
                self.writers.discard(up_writer)
                _abort(up_writer)
        finally:
            self.writers.discard(writer)
            _abort(writer)

    def drop_connections(self) -> None:
        for w in list(self.writers):
            _abort(w)
        self.writers.clear()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    rate: Callable[[], float | None] = lambda: None,
) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if (cap := rate()) is not None:
                await asyncio.sleep(len(data) / cap)  # read no more until this piece's time is over
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        transport = writer.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()  # RST, drop buffered bytes: nothing leaks through after a cut


class ProxyLayer:
    """Proxies for every directed link between ``addresses`` (node id -> host:port)."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self.addresses = dict(addresses)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._links: dict[Link, _LinkProxy] = {}

    def start(self) -> None:
        self._thread.start()
        for src in self.addresses:
            for dst, addr in self.addresses.items():
                if src != dst:
                    host, port = addr.rsplit(":", 1)
                    proxy = _LinkProxy((src, dst), (host, int(port)))
                    self._call(proxy.start())
                    self._links[(src, dst)] = proxy

    def write_dial_maps(self, directory: Path) -> dict[str, Path]:
        """One dial-map file per node: where it must dial each peer (its proxies)."""
        out = {}
        for src in self.addresses:
            doc = {dst: f"127.0.0.1:{p.port}" for (s, dst), p in self._links.items() if s == src}
            path = directory / f"dial-{src}.json"
            path.write_text(json.dumps(doc))
            out[src] = path
        return out

    def cut(self, links: Iterable[Link]) -> None:
        for link in links:
            self._call(self._set(link, True))

    def heal(self, links: Iterable[Link] | None = None) -> None:
        """Restore links (default: all): no longer cut, no longer slow."""
        for link in self._links if links is None else links:
            self._call(self._set(link, False))
            self._links[link].rate = None

    def slow(self, links: Iterable[Link], bytes_per_s: float) -> None:
        """Cap what each connection of ``links`` carries from its dialer (live ones too) at
        ``bytes_per_s``; ``heal`` lifts it."""
        assert bytes_per_s > 0
        for link in links:
            self._links[link].rate = bytes_per_s  # read by the pipes at every piece (one attribute)

    def cut_links(self) -> list[Link]:
        return sorted(link for link, p in self._links.items() if p.cut)

    def close(self) -> None:
        async def stop() -> None:
            for p in self._links.values():
                if p.server is not None:
                    p.server.close()
                p.drop_connections()

        if self._thread.is_alive():
            self._call(stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def _set(self, link: Link, cut: bool) -> None:
        p = self._links[link]
        if p.cut != cut:
            p.cut = cut
            p.drop_connections()  # a cut drops live traffic; a heal ends the black-holed dials

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)
