"""ClusterTime: what "now" is on this node — for reads, and for the stamps it puts on entries.

Cluster time is the time the leader stamps on log entries, and apply decides every expiry by the
stamp of the entry being applied. A read has no entry, so it needs the stamp a write issued now
would get:

    leader     max(last applied entry time, last stamp in its log, its clock)
               — what the core would stamp on an entry proposed now, so a linearizable read sees a
               key gone from the instant of its expiry in cluster time.
    follower   max(last applied entry time, that time + local *monotonic* time elapsed since the
               entry was applied here)
               — never the follower's own wall clock, so a skewed follower clock changes nothing.

Never backwards: read times on a node are non-decreasing (a high-water mark), and the clock this
node stamps entries with when it leads is ``stamp_ms() = max(wall clock, that mark)``. So when a
leader's clock steps back, cluster time holds still until the clock catches up (the core clamps
stamps to the log's last one as well), and no write is ever stamped earlier than a read this node
already answered — a key that a read found expired never reappears for a later write or read.

Staleness of the follower estimate: it trails the leader's clock by the delay between the leader
stamping the last applied entry and this node applying it (replication + fsync + apply: usually a
few ms; longer while the follower lags). While no entries arrive (an idle or partitioned follower),
it keeps advancing with local monotonic time, so keys still expire there. In addition, the leader's
sweep (node/runtime/sweeper.py) commits the removal of each expired key within about one sweep interval
(0.5 s), which bounds how long a caught-up follower can show an expired key, also right after a
restart (when the last applied entry may be old). While the leader's clock is held back (it stepped
backwards), followers' estimates run on and may expire keys in stale reads before the leader does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from raftstate.raft import Entry

if TYPE_CHECKING:
    from raftstate.node.driver import RaftDriver

__all__ = ["ClusterTime"]

log = logging.getLogger("raftstate.node")

#: warn once when the wall clock falls this far behind cluster time already served
_WARN_BEHIND_MS = 1000


class ClusterTime:
    def __init__(
        self,
        clock_ms: Callable[[], int],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self._driver: RaftDriver | None = None
        #: (entry time, local monotonic time when it was applied here) of the last applied entry
        self._entry_ms = 0
        self._entry_mono = monotonic()
        #: the largest time any read on this node used (invariant: reads and stamps never go below)
        self._hwm_ms = 0
        self._held_back = False

    def attach(self, driver: RaftDriver) -> None:
        """Start following ``driver``'s applies (its state machine may already be restored)."""
        self._driver = driver
        self._entry_ms, self._entry_mono = driver.sm.time_ms, self._monotonic()
        driver.apply_listeners.append(self.on_apply)

    def stamp_ms(self) -> int:
        """The clock to stamp entries with (the driver's ``clock_ms``): never below a read time."""
        now = self._clock_ms()
        behind = self._hwm_ms - now > _WARN_BEHIND_MS
        if behind and not self._held_back:
            log.warning(
                "this node's clock is %d ms behind the cluster time it has already served; as leader "
                "it holds cluster time still until its clock catches up (check NTP)",
                self._hwm_ms - now,
            )
        self._held_back = behind
        return max(now, self._hwm_ms)

    def on_apply(self, e: Entry) -> None:
        assert self._driver is not None
        self._entry_ms = self._driver.sm.time_ms
        self._entry_mono = self._monotonic()

    def now_ms(self) -> int:
        """The read time on this node now (see the module docstring)."""
        d = self._driver
        assert d is not None, "attach() first"
        applied_ms = d.sm.time_ms
        if d.is_leader():
            t = max(applied_ms, d.raft.log.last_time_ms, self._clock_ms())
        else:
            if applied_ms > self._entry_ms:  # a snapshot was installed since the last entry
                self._entry_ms, self._entry_mono = applied_ms, self._monotonic()
            elapsed_ms = int((self._monotonic() - self._entry_mono) * 1000)
            t = max(applied_ms, self._entry_ms + elapsed_ms)
        if t < self._hwm_ms:
            return self._hwm_ms
        self._hwm_ms = t
        return t
