"""ExpirySweeper: the leader proposes the removal of expired keys, locks and sessions, in batches.

Correctness never waits for it — every operation and every read treats an expired item as gone
from the instant of its expiry — but memory does: without a sweep, an expired key would stay in
every replica (and every snapshot) until something overwrote it. The sweep also keeps cluster time
flowing through the log, which bounds how stale a follower's view of expiry can be.

Every ``interval_s`` the leader asks the state machine which items have expired at its read time
(:class:`~raftstate.node.runtime.cluster_time.ClusterTime`) and proposes one ``expire`` command naming at
most ``max_names`` of them. The command carries no time: apply re-checks each name against the
entry's own ``time_ms`` (which is at least the read time: the same clock stamps it), so a name
renewed or re-set meanwhile is left alone. One proposal at a time; a lost one is simply retried at
the next interval. A full batch is followed by the next one at once (after yielding to the loop),
so a million keys that expire in the same minute are gone in tens of seconds, not at 2,000 a second;
each batch is one entry whose apply is bounded by ``max_names`` deletes.
"""

from __future__ import annotations

import asyncio
import logging

from raftstate.node.driver import OutcomeUnknown, ProposalLost, RaftDriver
from raftstate.node.runtime.cluster_time import ClusterTime
from raftstate.node.state.commands import Command, encode
from raftstate.raft import LeadershipTransferInProgress, NotLeader

__all__ = ["ExpirySweeper"]

log = logging.getLogger("raftstate.node")


class ExpirySweeper:
    def __init__(
        self,
        driver: RaftDriver,
        cluster_time: ClusterTime,
        *,
        interval_s: float = 0.5,
        max_names: int = 256,  # one entry: 256 deletes, a few ms of apply on the loop
        timeout_s: float = 5.0,
    ) -> None:
        assert interval_s > 0 and max_names > 0
        self.driver = driver
        self.cluster_time = cluster_time
        self.interval_s = interval_s
        self.max_names = max_names
        self.timeout_s = timeout_s
        self.swept_total = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self._run(), name=f"expiry-sweeper-{self.driver.id}")

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass

    async def sweep_once(self) -> int:
        """Propose one batch if this node leads and something expired; returns names removed."""
        if not self.driver.is_leader():
            return 0
        op = self.driver.sm.due(self.cluster_time.now_ms(), self.max_names)
        if op is None:
            return 0
        try:
            result = await self.driver.propose(encode(Command(op)), self.timeout_s)
        except (NotLeader, LeadershipTransferInProgress, ProposalLost, OutcomeUnknown) as exc:
            log.debug("expiry sweep not applied (%s); retrying at the next interval", exc)
            return 0
        removed = sum(result.values()) if isinstance(result, dict) else 0
        self.swept_total += removed
        return removed

    async def _run(self) -> None:
        removed = 0
        while True:
            # A full batch: more are probably due, go on at once (yielding to the loop first).
            await asyncio.sleep(0 if removed >= self.max_names else self.interval_s)
            try:
                removed = await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                removed = 0
                log.exception("expiry sweep failed; retrying at the next interval")
