"""Count limits checked on the leader before proposing (settings.max_sessions, settings.max_locks).

The same check runs again when the entry is applied (node/state/sessions.py, node/state/locks.py), with
the limit carried in the command: that one is authoritative, since many requests can pass this early
check before any of them is applied. This one only spares the log a write that would be refused.
Both raise the same Refusal, so the API answers this one as it is.
"""

from __future__ import annotations

from raftstate.node.state.commands import AcquireLock, Command, OpenSession
from raftstate.node.state.machine import KVStateMachine

__all__ = ["check_room"]


def check_room(cmd: Command, sm: KVStateMachine, now_ms: int) -> None:
    """Raise a Refusal (too_many_sessions / too_many_locks) if applying ``cmd`` now would be refused."""
    op = cmd.op
    if isinstance(op, OpenSession):
        sm.sessions.check_room(now_ms, op.max_sessions)
    elif isinstance(op, AcquireLock):
        sm.locks.check_room(op.name, now_ms, op.max_locks)
