"""Linearizability of one register per key: Wing & Gong's search with Lowe's memoization (the
algorithm Porcupine and Knossos use), with a step budget that answers ``unknown`` instead of hanging.

The register model relies on every written value being unique (the workload writes
``"<worker>-<n>"``), so a compare-and-set by version is exactly a compare-and-set by value:

==========  ==========================  ==========================================
op          ``value``                   legal when (state before → state after)
==========  ==========================  ==========================================
write       new value                   always; state := value
read        —                           result == state (None: the key is absent)
cas         [expected, new]             result True: state == expected; state := new
                                        result False: state != expected
==========  ==========================  ==========================================

Operations that certainly failed are left out. An operation with an unknown outcome (``info``)
never returns: it may take effect at any point after its invocation, or (placed last) never; an
unknown cas takes effect exactly when the state matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import INFINITY, Op, by_key

REGISTER_FS = ("read", "write", "cas")
DEFAULT_BUDGET = 2_000_000  #: search steps per key before the answer is "unknown"


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """The register model: (is ``op`` legal in ``state``, the state after it)."""
    if op.f == "write":
        return True, op.value
    if op.f == "read":
        return op.result == state, state
    if op.f == "cas":
        expected, new = op.value
        if op.status == "info":
            return True, new if state == expected else state
        if op.result:
            return state == expected, new
        return state != expected, state
    raise ValueError(f"register model: unknown op {op.f!r}")


def relevant(ops: Sequence[Op]) -> list[Op]:
    """What the search must linearize: completed ops, and writes whose outcome is unknown."""
    return [o for o in ops if o.status == "ok" or (o.status == "info" and o.f != "read")]


def check_key(ops: Sequence[Op], budget: int = DEFAULT_BUDGET) -> tuple[bool | None, int]:
    """(True: linearizable, False: not, None: budget exhausted; search steps used)."""
    ops = relevant(ops)
    n = len(ops)
    if n == 0:
        return True, 0
    # Event list: a call and a return per op, by time; at equal times calls first (concurrent).
    events: list[tuple[float, int, int]] = []  # (time, 0=call/1=return, op index)
    for i, o in enumerate(ops):
        events.append((o.invoke_t, 0, i))
        events.append((o.complete_t if o.status == "ok" else INFINITY, 1, i))
    events.sort()
    # Doubly linked list over nodes 1..2n; 0 is the head, 2n+1 the tail sentinel.
    tail = 2 * n + 1
    nxt = [*range(1, 2 * n + 2), tail]
    prv = [0, *range(0, 2 * n + 1)]
    node_op = [-1] * (2 * n + 2)
    is_call = [False] * (2 * n + 2)
    call_node = [0] * n
    ret_node = [0] * n
    for pos, (_, kind, i) in enumerate(events, start=1):
        node_op[pos] = i
        is_call[pos] = kind == 0
        if kind == 0:
            call_node[i] = pos
        else:
            ret_node[i] = pos

    def unlink(e: int) -> None:
        nxt[prv[e]] = nxt[e]
        prv[nxt[e]] = prv[e]

    def relink(e: int) -> None:
        nxt[prv[e]] = e
        prv[nxt[e]] = e

    def backtrack() -> tuple[int, Any]:
        """Undo the last linearized op; returns its call node and the state before it."""
        e, before = stack.pop()
        relink(ret_node[node_op[e]])
        relink(e)
        return e, before

    state: Any = None
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []
    entry = nxt[0]
    steps = 0
    while nxt[0] != tail:
        steps += 1
        if steps > budget:
            return None, steps
        if entry == tail:  # only pending unknown-outcome calls remain ahead: backtrack
            if not stack:
                return False, steps
            entry, state = backtrack()
            linearized &= ~(1 << node_op[entry])
            entry = nxt[entry]
            continue
        i = node_op[entry]
        if is_call[entry]:
            legal, after = step(state, ops[i])
            key = (linearized | (1 << i), _hashable(after))
            if legal and key not in cache:
                cache.add(key)
                stack.append((entry, state))
                state = after
                linearized |= 1 << i
                unlink(entry)
                unlink(ret_node[i])
                entry = nxt[0]
            else:
                entry = nxt[entry]
        else:  # a return reached before its op was linearized: undo the last choice
            if not stack:
                return False, steps
            entry, state = backtrack()
            linearized &= ~(1 << node_op[entry])
            entry = nxt[entry]
    return True, steps


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def check(ops: Sequence[Op], budget: int = DEFAULT_BUDGET) -> CheckResult:
    anomalies: list[str] = []
    unknown: list[str] = []
    checked = 0
    for key, key_ops in sorted(by_key(ops, REGISTER_FS).items()):
        ok, _ = check_key(key_ops, budget)
        checked += len(relevant(key_ops))
        if ok is None:
            unknown.append(f"{key} (budget of {budget} steps exhausted)")
        elif not ok:
            anomalies.append(
                f"register {key!r}: {len(relevant(key_ops))} ops are not linearizable"
                f"{_first_bad_read(key_ops)}"
            )
    if anomalies:
        return CheckResult("linearizable", "fail", checked, anomalies)
    if unknown:
        return CheckResult("linearizable", "unknown", checked, [], "undecided: " + ", ".join(unknown))
    return CheckResult("linearizable", "pass", checked)


def _first_bad_read(key_ops: Sequence[Op]) -> str:
    """A hint for humans: the op that completes the shortest failing prefix (ops completed by then,
    plus unknown-outcome writes invoked by then)."""
    ops = relevant(key_ops)
    done = sorted((o for o in ops if o.status == "ok"), key=lambda o: o.complete_t)

    def fails(k: int) -> bool:
        t = done[k - 1].complete_t
        sub = [o for o in ops if o.complete_t <= t or (o.status == "info" and o.invoke_t <= t)]
        return check_key(sub, 200_000)[0] is False

    if not done or not fails(len(done)):
        return ""
    lo, hi = 1, len(done)
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid + 1
    o = done[lo - 1]
    return f"; first failing op: #{o.id} {o.process} {o.f} {o.value!r} -> {o.result!r}"
