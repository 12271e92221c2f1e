"""Locks with fencing: workers loop acquire → fenced write → release on a few lock names.

A fenced write (to the key ``<lock>:data``; its value names ``lock`` and ``token``) returns its
version — the log index it was applied at — so the history gives the exact order in which fenced
writes took effect.

* **tokens strictly increase**: if acquire A was acknowledged before acquire B was invoked,
  token(A) < token(B); and no token is handed out twice.
* **fenced writes never interleave**: ordered by version, the tokens they carried never decrease —
  once a newer holder wrote, an older holder's write must be refused (``lock_lost``).
* **every fenced write carried the current token**: a write with token t applied at version w needs
  t < w and no acknowledged acquire with t < token < w (a newer holder existed when it applied).
"""

from __future__ import annotations

from collections.abc import Sequence

from raftstate.node.chaos.checkers import CheckResult
from raftstate.node.chaos.history import Op

LOCK_FS = ("acquire", "fenced-write", "release")


def check(ops: Sequence[Op]) -> CheckResult:
    anomalies: list[str] = []
    checked = 0
    names = sorted({o.key for o in ops if o.f in ("acquire", "release")})
    for name in names:
        acquires = [o for o in ops if o.f == "acquire" and o.key == name and o.ok]
        writes = [o for o in ops if o.f == "fenced-write" and o.value["lock"] == name and o.ok]
        checked += len(acquires) + len(writes) + sum(1 for o in ops if o.f == "release" and o.key == name)
        tokens = sorted(int(o.result) for o in acquires)
        if len(set(tokens)) != len(tokens):
            anomalies.append(f"lock {name!r}: a token was granted twice ({_dupes(tokens)})")
        by_invoke = sorted(acquires, key=lambda o: o.invoke_t)
        for b in by_invoke:
            for a in acquires:
                if a.complete_t < b.invoke_t and not a.result < b.result:
                    anomalies.append(
                        f"lock {name!r}: token {b.result} ({b.process}) granted after token "
                        f"{a.result} ({a.process}) was acknowledged"
                    )
                    break
        last_token = 0
        for w in sorted(writes, key=lambda o: int(o.result)):
            t, version = int(w.value["token"]), int(w.result)
            if t < last_token:
                anomalies.append(
                    f"lock {name!r}: fenced write at version {version} by {w.process} with "
                    f"token {t} applied after a write with the newer token {last_token}"
                )
            last_token = max(last_token, t)
            newer = [x for x in tokens if t < x < version]
            if not t < version:
                anomalies.append(
                    f"lock {name!r}: fenced write at version {version} carries token {t} from the future"
                )
            elif newer:
                anomalies.append(
                    f"lock {name!r}: fenced write at version {version} by {w.process} carried "
                    f"token {t}, but token {newer[-1]} was granted before it applied"
                )
    return CheckResult.of("locks", checked, anomalies[:50])


def _dupes(xs: list[int]) -> list[int]:
    return sorted({x for x in xs if xs.count(x) > 1})[:5]
