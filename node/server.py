"""One node process: storage, peer transport, Raft driver and HTTP API on one aiohttp server.

``serve(config, node_id)`` is what ``raftstate node`` runs. SIGTERM/SIGINT: a leader first hands
leadership to the most caught-up voter, then the node stops serving, flushes and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from raftstate.node.api.admin import AdminApi
from raftstate.node.api.handlers import Api
from raftstate.node.api.schema import ApiLimits
from raftstate.node.api.stream import StreamApi
from raftstate.node.api.watch import WatchLimits
from raftstate.node.config import ClusterConfig
from raftstate.node.driver import DriverSettings, RaftDriver
from raftstate.node.metrics import NodeMetrics
from raftstate.node.peers.bootstrap import resolve_bootstrap
from raftstate.node.peers.fault_dial import DialMap
from raftstate.node.peers.snapshot_transfer import SnapshotReceiver, SnapshotSender
from raftstate.node.peers.transport import PeerTransport, StreamReceiver, TransportOptions
from raftstate.node.runtime.clock import NodeClock
from raftstate.node.runtime.cluster_time import ClusterTime
from raftstate.node.runtime.sweeper import ExpirySweeper
from raftstate.node.security.node_security import NodeSecurity
from raftstate.node.storage.state_file import StateFile
from raftstate.node.storage.store import DiskStorage, Storage
from raftstate.node.test_hooks import TestHooks
from raftstate.raft import InstallSnapshot, Membership, Role

log = logging.getLogger("raftstate.node")


class NodeServer:
    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        *,
        joining: Membership | None = None,
        hooks: TestHooks | None = None,
    ) -> None:
        """``joining``: the membership learned from a member by ``raftstate node --join`` (this
        node is not a voter in it); without it the first start bootstraps from ``config.nodes``.
        ``hooks``: the TEST-ONLY hooks (node/test_hooks.py); by default read from the environment,
        here and only here — all off unless a test or chaos run set them."""
        self.hooks = hooks if hooks is not None else TestHooks.from_env()  # fails fast on a bad value
        self.config = config
        self.joining = joining
        self.node = config.node(node_id)
        self.id = node_id
        self.metrics = NodeMetrics(node_id, config.cluster_id)
        self.security = NodeSecurity(config, node_id, self.metrics)  # reads secrets: fails fast
        self.started_at = time.time()
        self._runner: web.AppRunner | None = None
        self.storage: Storage | None = None
        self.transport: PeerTransport | None = None
        self.receiver: StreamReceiver | None = None
        self.driver: RaftDriver | None = None
        self.sweeper: ExpirySweeper | None = None
        self.clock: NodeClock | None = None  # its offset is a test hook (node/test_hooks.py)
        self._last_leader: str | None = None

    async def start(self) -> None:
        cfg, s = self.config, self.config.settings
        hooks = self.hooks  # TEST-ONLY: each component gets its own hook, explicitly; all off normally
        disk = DiskStorage(
            Path(self.node.data_dir),
            node_id=self.id,
            cluster_id=cfg.cluster_id,
            on_fsync=self.metrics.fsync_seconds.observe,
            fsync_delay_s=hooks.fsync_delay_s,
        )
        self.storage = hooks.storage(disk)
        options = TransportOptions(max_frame_bytes=s.max_peer_frame_bytes)
        dial_map = hooks.dial_map()  # TEST-ONLY: chaos proxies sit between peers (off normally)
        sec = self.security
        self.transport = PeerTransport(
            self.id,
            cfg.cluster_id,
            cfg.peers_of(self.id),
            metrics=self.metrics,
            options=options,
            peer_auth=sec.peer_auth,
            ssl_context=sec.client_ssl,
            dial_map=dial_map,
        )
        # The wall clock (with the test/chaos offset hook), and cluster time for reads and stamps.
        clock = self.clock = NodeClock(hooks.clock_offset_file, reread_s=s.tick_ms / 1000)
        cluster_time = ClusterTime(clock.now_ms)
        # After the first start the data dir's bootstrap record, then the log/snapshot, rule.
        bootstrap = resolve_bootstrap(disk.path, self.id, cfg, self.joining)
        state_file = StateFile(
            disk.path / "state", cache_mb=s.state_cache_mb, on_fsync=self.metrics.fsync_seconds.observe
        )
        sender = SnapshotSender(
            self.id, cfg.cluster_id, peer_auth=sec.peer_auth, ssl_context=sec.client_ssl, metrics=self.metrics
        )
        self.driver = RaftDriver(
            self.id,
            bootstrap=bootstrap,
            storage=self.storage,
            transport=self.transport,
            state_file=hooks.state_file(state_file),
            snapshot_sender=_RoutedSender(sender, dial_map),
            settings=DriverSettings(
                tick_ms=s.tick_ms, snapshot_threshold=s.snapshot_threshold, raft=s.raft_settings
            ),
            clock_ms=cluster_time.stamp_ms,
            on_snapshot=self.metrics.snapshot_seconds.observe,
        )
        self.driver.role_listeners.append(self._on_role)
        sec.attach(self.driver)
        # Members added after bootstrap are known from the log/snapshot only: dial them too.
        m = self.driver.raft.membership
        self.transport.update_peers({n: a for n, a in m.addresses if n in m.members and n != self.id})
        cluster_time.attach(self.driver)
        self.sweeper = ExpirySweeper(self.driver, cluster_time)
        self.receiver = StreamReceiver(
            self.id,
            cfg.cluster_id,
            self.driver.step,
            metrics=self.metrics,
            options=options,
            peer_auth=sec.peer_auth,
            require_peer_cert=sec.tls,
        )
        app = web.Application(client_max_size=s.max_request_bytes)
        sec.install(app)  # first: its middlewares guard every route below
        self.receiver.install(app)
        SnapshotReceiver(
            self.id,
            cfg.cluster_id,
            state_file.directory,
            self.driver.receive_store,  # without a store (a test hook) it drops what arrives
            metrics=self.metrics,
            peer_auth=sec.peer_auth,
            require_peer_cert=sec.tls,
        ).install(app)
        api = Api(
            self.driver,
            self.metrics,
            cluster_time=cluster_time,
            limits=ApiLimits(
                max_key_bytes=s.max_key_bytes,
                max_value_bytes=s.max_value_bytes,
                session_idle_timeout_ms=s.session_idle_timeout_s * 1000,
                max_session_results=s.max_session_results,
                max_keys_per_page=s.max_keys_per_page,
                max_sessions=s.max_sessions,
                max_locks=s.max_locks,
            ),
            max_request_bytes=s.max_request_bytes,
            extra_status=self._extra_status,
            read_barrier=hooks.read_barrier(),
            watch=WatchLimits.of(s),
        )
        api.install(app)
        AdminApi(api, cluster_id=cfg.cluster_id, settings=s, data_dir=disk.path).install(
            app
        )  # /v1/members, /v1/snapshot
        StreamApi(api, self.metrics, max_frame_bytes=s.max_request_bytes).install(app)
        await self.transport.start()
        await self.driver.start()
        self.sweeper.start()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, **sec.runner_options)
        await self._runner.setup()
        site = sec.site(self._runner, self.node.host, self.node.port, reuse_address=True)
        await site.start()
        log.info("node %s serving on %s (data dir %s)", self.id, self.node.address, self.node.data_dir)

    async def stop(self, *, transfer: bool = True) -> None:
        d = self.driver
        if d is not None and transfer and d.raft.role == Role.LEADER and len(d.raft.membership.voters) > 1:
            new = await d.transfer_leadership(
                None, timeout_s=self.config.settings.election_timeout_ms / 1000 * 2
            )
            log.info("node %s handed leadership to %s before stopping", self.id, new)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.sweeper is not None:
            await self.sweeper.stop()
        if d is not None:
            await d.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.receiver is not None:
            await self.receiver.close()
        if self.storage is not None:
            await asyncio.to_thread(self.storage.close)
        log.info("node %s stopped", self.id)

    def _on_role(self, role: Role, term: int, leader: str | None) -> None:
        if leader is not None and leader != self._last_leader:
            self.metrics.leader_changes_total.inc()
            self._last_leader = leader
        self.metrics.set_role(role)
        self.metrics.term.set(term)
        if role == Role.CANDIDATE:
            self.metrics.elections_total.inc()

    def _extra_status(self) -> dict[str, Any]:
        peers = self.transport.peer_status() if self.transport else {}
        return {
            "address": self.node.address,
            "cluster_id": self.config.cluster_id,
            "uptime_s": round(time.time() - self.started_at, 3),
            "peers": {
                pid: {
                    "address": ps.address,
                    "connected": ps.connected,
                    "queue_len": ps.queue_len,
                    "dropped": ps.dropped,
                    "last_error": ps.last_error,
                }
                for pid, ps in sorted(peers.items())
            },
        }


class _RoutedSender:
    """Sends to the address the chaos dial map names for a peer (the configured one normally)."""

    def __init__(self, sender: SnapshotSender, dial_map: DialMap | None) -> None:
        self._sender = sender
        self._dial_map = dial_map

    async def send(self, address: str, msg: InstallSnapshot, path: Path) -> None:
        if self._dial_map is not None:
            address = self._dial_map.address(msg.dst, address)
        await self._sender.send(address, msg, path)


async def serve(config: ClusterConfig, node_id: str, *, joining: Membership | None = None) -> int:
    server = NodeServer(config, node_id, joining=joining)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    assert server.driver is not None
    server.driver.fatal_listeners.append(lambda exc: stop.set())
    await stop.wait()
    if server.driver.fatal_error is not None:
        await server.stop(transfer=False)
        return 4
    log.info("node %s received a stop signal", node_id)
    await server.stop(transfer=True)
    return 0
