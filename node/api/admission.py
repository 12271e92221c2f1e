"""Admission on the leader before proposing: the caller's quotas stamped into the command, and the
count limits checked early (settings.max_sessions, settings.max_locks, the per-token quotas, the
longest lease).

:func:`stamp` writes into the command everything apply decides quotas with (node/state/quotas.py):
the longest lease, the caller's token NAME, its per-token quota, and the cluster-wide limit as that
caller sees it — less the admin reserve for a token that is not admin. An admin token has no
per-token quota and the whole limit; with auth off there is no caller and nothing per token.

:func:`check_room` then runs the same checks apply will run. Apply's are authoritative, since many
requests can pass this early check before any of them is applied; this one only spares the log a
write that would be refused. Both raise the same Refusal, so the API answers this one as it is.
"""

from __future__ import annotations

import dataclasses

from raftstate.node.api.schema import ApiLimits
from raftstate.node.security.config import Role
from raftstate.node.state.commands import AcquireLock, CloseSession, Command, OpenSession, RenewLock
from raftstate.node.state.machine import KVStateMachine
from raftstate.node.state.quotas import check_lease_ttl, writer_limit

__all__ = ["check_room", "stamp"]

#: who sends a command: (token name, role); None with auth off
Caller = tuple[str, Role] | None


def stamp(cmd: Command, caller: Caller, lim: ApiLimits) -> Command:
    """``cmd`` with the quota fields of its operation set for ``caller`` (other commands as they are)."""
    op = cmd.op
    name, admin = (None, True) if caller is None else (caller[0], caller[1] >= Role.ADMIN)

    def room(limit: int | None) -> int | None:
        return limit if admin or limit is None else writer_limit(limit)

    if isinstance(op, AcquireLock):
        op = dataclasses.replace(
            op,
            max_ttl_ms=lim.max_lock_ttl_ms,
            caller=name,
            max_per_caller=None if admin else lim.max_locks_per_token,
            max_locks=room(op.max_locks),
        )
    elif isinstance(op, RenewLock):
        op = dataclasses.replace(op, max_ttl_ms=lim.max_lock_ttl_ms)
    elif isinstance(op, OpenSession):
        op = dataclasses.replace(
            op,
            caller=name,
            max_per_caller=None if admin else lim.max_sessions_per_token,
            max_sessions=room(op.max_sessions),
        )
    elif isinstance(op, CloseSession):
        op = dataclasses.replace(op, caller=None if admin else name)
    else:
        return cmd
    return dataclasses.replace(cmd, op=op)


def check_room(cmd: Command, sm: KVStateMachine, now_ms: int) -> None:
    """Raise a Refusal (too_many_sessions / too_many_locks / invalid_request for too long a lease)
    if applying ``cmd`` now would be refused by a limit."""
    op = cmd.op
    if isinstance(op, OpenSession):
        sm.sessions.check_quota(op, now_ms)
        sm.sessions.check_room(now_ms, op.max_sessions)
    elif isinstance(op, AcquireLock):
        sm.locks.check_quota(op, now_ms)
        sm.locks.check_room(op.name, now_ms, op.max_locks)
    elif isinstance(op, RenewLock) and op.ttl_ms is not None:
        check_lease_ttl(f"lock {op.name!r}", op.ttl_ms, op.max_ttl_ms, "settings.max_lock_ttl_s")
