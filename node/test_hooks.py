"""TEST-ONLY hooks: the one place that reads them, validates them and decides what they switch on.

Tests and chaos runs make a node misbehave on purpose through four environment variables. This
module reads all of them ONCE, when the node starts (:meth:`TestHooks.from_env`, called by
``NodeServer``), into one frozen :class:`TestHooks`; the server then hands each component only what
it needs, explicitly. No other module reads these variables. Unset (or empty), every hook is off
and the node is exactly the production node; any hook that is on is logged loudly at start-up.

=================================  ==========================  ====================================
variable                           field                       who receives what
=================================  ==========================  ====================================
``RAFTSTATE_FAULT_SLOW_FSYNC_MS``  ``slow_fsync_ms``           DiskStorage(fsync_delay_s=): every
                                                               log fsync takes that much longer
``RAFTSTATE_CLOCK_OFFSET_FILE``    ``clock_offset_file``       NodeClock(offset_file): the file's
                                                               number of ms is added to the clock
``RAFTSTATE_FAULT_PEER_DIAL_MAP``  ``peer_dial_map``           PeerTransport(dial_map=): dial peers
                                                               at the addresses in a JSON file
``RAFTSTATE_INJECT_BUG``           ``injected_bug``            a deliberate bug (below), so a chaos
                                                               run can prove its checkers catch it
=================================  ==========================  ====================================

Injected bugs (``scripts/chaos.py --inject-bug NAME`` sets one on every node):

================  ===========================================================================
name              what the node then does wrong
================  ===========================================================================
stale-reads       a linearizable read is answered at once from the local state of whichever
                  node gets it, without ReadIndex (as if it were ``consistency=stale``): a deposed
                  or cut-off leader, or a lagging follower a client still takes for the leader,
                  serves old values. The API gets :meth:`TestHooks.read_barrier` in place of
                  ReadIndex.
ack-before-fsync  every Ready batch counts as durable at once (the driver acknowledges, votes and
                  commits on it); a background thread writes it ~1 s later
                  (node/storage/late_write.py). A crash of every node within that second
                  (restart-all) loses acknowledged writes. The node keeps its state in memory
                  (:meth:`TestHooks.state_file` gives None), as before the state store: a store
                  commit survives kill -9 in the page cache, so a crash of processes could not
                  show what this bug loses on a power cut — and a node whose store is ahead of
                  its log refuses to start anyway (node/driver.py)
================  ===========================================================================

**Armed only on purpose** (issue 18): a variable alone arms nothing. The cluster file must also say
``settings.test_hooks: true``, and that setting is refused when ``auth.enabled`` is true (by the
config loader, and again here for a config built in code): :meth:`TestHooks.require_allowed`, called
by ``NodeServer`` before anything is opened, refuses a hook's variable without the setting, naming
both. A node that runs with hooks lists them in ``/status`` (``test_hooks``) and in the metric
``raftstate_test_hooks_active{hook}`` (1 for each hook that is on), so a hooked node is never
mistaken for a production one.

The two files (clock offset, dial map) are re-read while the node runs, so a test can change them;
a missing or unusable file then means "no offset" / "configured address", with one warning. What is
checked here, at start-up, is only what can never become right later: a number that is not one, an
unknown bug, a file whose folder does not exist. Each is a :class:`TestHookError` naming the
variable, and the node refuses to start.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Final

from prometheus_client import CollectorRegistry, Gauge

from raftstate.node.errors import LocalFault
from raftstate.node.peers.fault_dial import DialMap
from raftstate.node.storage.late_write import LateWriteStorage
from raftstate.node.storage.state_file import StateFile
from raftstate.node.storage.store import Storage

__all__ = [
    "ACK_BEFORE_FSYNC",
    "BUGS",
    "BUG_ENV",
    "CLOCK_OFFSET_FILE_ENV",
    "HOOK_ENVS",
    "PEER_DIAL_MAP_ENV",
    "SLOW_FSYNC_ENV",
    "STALE_READS",
    "ReadBarrier",
    "TestHookError",
    "TestHooks",
]

log = logging.getLogger("raftstate.node")

SLOW_FSYNC_ENV: Final = "RAFTSTATE_FAULT_SLOW_FSYNC_MS"
CLOCK_OFFSET_FILE_ENV: Final = "RAFTSTATE_CLOCK_OFFSET_FILE"
PEER_DIAL_MAP_ENV: Final = "RAFTSTATE_FAULT_PEER_DIAL_MAP"
BUG_ENV: Final = "RAFTSTATE_INJECT_BUG"
#: every hook's variable, in the order of the TestHooks fields
HOOK_ENVS: Final = (SLOW_FSYNC_ENV, CLOCK_OFFSET_FILE_ENV, PEER_DIAL_MAP_ENV, BUG_ENV)

STALE_READS: Final = "stale-reads"
ACK_BEFORE_FSYNC: Final = "ack-before-fsync"
BUGS: Final = (STALE_READS, ACK_BEFORE_FSYNC)

#: the longest fsync delay accepted: far beyond any election timeout, yet a test still ends
MAX_SLOW_FSYNC_MS: Final = 60_000.0

#: how a linearizable client read is made safe: ``(timeout_s) -> None`` once it may be answered
ReadBarrier = Callable[[float], Awaitable[None]]


class TestHookError(LocalFault, ValueError):
    """A hook's variable is set to something unusable: the node refuses to start (a local fault)."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name


@dataclass(frozen=True, slots=True)
class TestHooks:
    """Which test-only hooks this node runs with. The default — every field off — is production."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    #: extra milliseconds every log fsync takes (a slow disk); 0 = off. 0 <= it <= MAX_SLOW_FSYNC_MS
    slow_fsync_ms: float = 0.0
    #: a file holding a number of milliseconds added to the wall clock (re-read every tick); None = off
    clock_offset_file: Path | None = None
    #: a JSON file {peer id: "host:port"} of dial overrides (read at every dial); None = off
    peer_dial_map: Path | None = None
    #: one of BUGS; None = off
    injected_bug: str | None = None

    def __post_init__(self) -> None:
        ms = self.slow_fsync_ms
        if not (math.isfinite(ms) and 0 <= ms <= MAX_SLOW_FSYNC_MS):
            raise TestHookError(
                f"{SLOW_FSYNC_ENV}: {ms!r} is not a number of milliseconds in 0..{MAX_SLOW_FSYNC_MS:.0f}"
            )
        if self.injected_bug is not None and self.injected_bug not in BUGS:
            raise TestHookError(
                f"{BUG_ENV}={self.injected_bug!r} is not a known injected bug; "
                f"choose one of {', '.join(BUGS)}"
            )
        files = ((CLOCK_OFFSET_FILE_ENV, self.clock_offset_file), (PEER_DIAL_MAP_ENV, self.peer_dial_map))
        for env, path in files:
            # The file itself may appear later (it is re-read), but not a folder for it.
            if path is not None and not path.parent.is_dir():
                raise TestHookError(f"{env}={str(path)!r}: the folder {str(path.parent)!r} does not exist")

    # ----------------------------------------------------------------- reading and writing them

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TestHooks:
        """The hooks the environment asks for (``os.environ`` unless given), validated; a loud
        warning for each one that is on. The only reader of the hooks' variables."""
        env = os.environ if environ is None else environ

        def value(name: str) -> str | None:
            return env.get(name, "").strip() or None

        slow = value(SLOW_FSYNC_ENV)
        try:
            slow_ms = float(slow) if slow is not None else 0.0
        except ValueError:
            raise TestHookError(f"{SLOW_FSYNC_ENV}={slow!r} is not a number of milliseconds") from None
        clock, dial = value(CLOCK_OFFSET_FILE_ENV), value(PEER_DIAL_MAP_ENV)
        hooks = cls(
            slow_fsync_ms=slow_ms,
            clock_offset_file=Path(clock) if clock else None,
            peer_dial_map=Path(dial) if dial else None,
            injected_bug=value(BUG_ENV),
        )
        hooks._announce()
        return hooks

    def to_env(self) -> dict[str, str]:
        """The environment variables that make a node start with these hooks (for a child process);
        ``TestHooks.from_env(h.to_env()) == h``. Hooks that are off are left out."""
        env: dict[str, str] = {}
        if self.slow_fsync_ms:
            env[SLOW_FSYNC_ENV] = repr(self.slow_fsync_ms)
        if self.clock_offset_file is not None:
            env[CLOCK_OFFSET_FILE_ENV] = str(self.clock_offset_file)
        if self.peer_dial_map is not None:
            env[PEER_DIAL_MAP_ENV] = str(self.peer_dial_map)
        if self.injected_bug is not None:
            env[BUG_ENV] = self.injected_bug
        return env

    @property
    def active(self) -> bool:
        """Is any hook on? (False: this is the production node.)"""
        return self != TestHooks()

    def names(self) -> list[str]:
        """The fields of the hooks that are on, in field order ([] for the production node)."""
        off = TestHooks()
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(off, f.name)]

    def require_allowed(self, *, setting: bool, auth_enabled: bool, where: str) -> None:
        """Refuse to start (TestHookError) unless these hooks may run: any hook needs
        ``settings.test_hooks: true``, and that setting is never allowed with auth on. ``where``
        names the cluster file."""
        if setting and auth_enabled:
            raise TestHookError(
                f"{where}: settings.test_hooks is true while auth.enabled is true; test-only hooks never "
                "run on a secured cluster: remove settings.test_hooks, or turn auth off for a test cluster"
            )
        if self.active and not setting:
            env = self.to_env()
            raise TestHookError(
                f"test-only hook variables are set ({', '.join(sorted(env))}) but {where} does not say "
                "settings.test_hooks: true; unset them (a production node), or allow hooks in the "
                "cluster file of a test cluster (auth off)"
            )

    def export(self, registry: CollectorRegistry) -> Gauge:
        """``raftstate_test_hooks_active{hook}``: 1 for each hook that is on, 0 for the others."""
        gauge = Gauge(
            "raftstate_test_hooks_active",
            "TEST-ONLY hooks this node runs with (1: on); all 0 on a production node",
            ["hook"],
            registry=registry,
        )
        on = set(self.names())
        for f in fields(self):
            gauge.labels(hook=f.name).set(1 if f.name in on else 0)
        return gauge

    def status(self) -> dict[str, object]:
        """For ``/status``: the hooks that are on, and what each is set to."""
        return {name: str(getattr(self, name)) for name in self.names()}

    def _announce(self) -> None:
        if not self.active:
            return
        on = ", ".join(self.names())
        log.warning("!!! TEST-ONLY HOOKS ON (%s): never run a production node like this !!!", on)
        if self.slow_fsync_ms:
            log.warning(
                "fault injection: every log fsync is delayed by %.0f ms (%s)",
                self.slow_fsync_ms,
                SLOW_FSYNC_ENV,
            )
        if self.clock_offset_file is not None:
            log.warning(
                "%s=%s: this node's clock is offset for testing",
                CLOCK_OFFSET_FILE_ENV,
                self.clock_offset_file,
            )
        if self.peer_dial_map is not None:
            log.warning(
                "%s=%s: peers are dialled at overridden addresses for testing",
                PEER_DIAL_MAP_ENV,
                self.peer_dial_map,
            )
        if self.injected_bug is not None:
            log.error(
                "!!! TEST-ONLY BUG INJECTED (%s=%s): this node is deliberately broken !!!",
                BUG_ENV,
                self.injected_bug,
            )

    # ----------------------------------------------------------------- what each component gets

    @property
    def fsync_delay_s(self) -> float:
        """For DiskStorage: extra seconds per log fsync (0.0 when off)."""
        return self.slow_fsync_ms / 1000

    def dial_map(self) -> DialMap | None:
        """For PeerTransport: where to dial each peer (None when off: the configured addresses)."""
        return DialMap(self.peer_dial_map) if self.peer_dial_map is not None else None

    def storage(self, storage: Storage) -> Storage:
        """What the driver persists through: ``storage`` itself, or it behind the ack-before-fsync bug."""
        return LateWriteStorage(storage) if self.injected_bug == ACK_BEFORE_FSYNC else storage

    def state_file(self, state_file: StateFile) -> StateFile | None:
        """Where the state lives: the store, or memory under the ack-before-fsync bug (above)."""
        return None if self.injected_bug == ACK_BEFORE_FSYNC else state_file

    def read_barrier(self) -> ReadBarrier | None:
        """For the API: what makes a linearizable read safe in place of ReadIndex — None (ReadIndex,
        the API's own) unless the stale-reads bug is on."""
        return _answer_at_once if self.injected_bug == STALE_READS else None


async def _answer_at_once(timeout_s: float) -> None:
    """The stale-reads bug's read barrier: wait for nothing, whoever this node is."""
