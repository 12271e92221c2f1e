"""Membership rules the admin endpoints check before proposing a change (pure: no I/O).

The core enforces only what safety needs (one uncommitted change at a time, never zero voters).
These checks refuse changes that are *safe* but would hurt availability, before anything is
appended, and say why and what to do:

    change            refused when                                              code
    ----------------  --------------------------------------------------------  ------------------
    add (learner)     the id is already a voter or learner                      member_exists
                      the address is already another member's                   member_exists
    promote           the id is not a learner                                   not_found / member_exists
                      it is not answering, or more than ``max_lag`` behind      not_caught_up
                      voters + it would have no quorum of reachable voters      quorum_unreachable
    remove            the id is not a member                                    not_found
                      the remaining voters have no quorum of reachable voters   quorum_unreachable

"Reachable" means the leader itself, or a voter the leader heard from within the contact window
(one election timeout; heartbeats are answered every heartbeat interval): a quorum that cannot be
reached now would stall every write — a removal takes effect when appended, so a config whose
quorum is down cannot even commit, and the cluster waits until the missing voters come back.
"""

from __future__ import annotations

from collections.abc import Mapping

from raftstate.client import protocol as p
from raftstate.node.errors import Refusal
from raftstate.raft import Membership

__all__ = ["check_add", "check_promote", "check_remove", "reachable"]


def reachable(m: Membership, leader: str, contact_ms_ago: Mapping[str, int], window_ms: int) -> set[str]:
    """Members the leader can count on now: itself, and those heard from within ``window_ms``."""
    return {leader} | {n for n in m.members if contact_ms_ago.get(n, window_ms + 1) <= window_ms}


def _quorum_check(what: str, voters: frozenset[str], up: set[str]) -> None:
    quorum = len(voters) // 2 + 1
    live = sorted(voters & up)
    if len(live) < quorum:
        raise Refusal(
            p.QUORUM_UNREACHABLE,
            f"{what} would leave voters {sorted(voters)} needing {quorum} for a quorum, but only "
            f"{live} answer the leader now; bring the others back (or remove a down voter instead) first",
            voters=sorted(voters),
            reachable=live,
            quorum=quorum,
        )


def check_add(m: Membership, node_id: str, address: str) -> None:
    if node_id in m.members:
        role = "voter" if node_id in m.voters else "learner"
        raise Refusal(
            p.MEMBER_EXISTS,
            f"{node_id} is already a {role} at {m.address_of(node_id)}; to replace it, "
            f"`raftstate member remove --id {node_id}` first",
            id=node_id,
        )
    owner = next((n for n, a in m.addresses if a == address and n in m.members), None)
    if owner is not None:
        raise Refusal(
            p.MEMBER_EXISTS,
            f"address {address} is already used by member {owner}; give {node_id} its own host:port",
            id=owner,
        )


def check_promote(m: Membership, node_id: str, match: int, lag: int, max_lag: int, up: set[str]) -> None:
    if node_id in m.voters:
        raise Refusal(p.MEMBER_EXISTS, f"{node_id} is already a voter", id=node_id)
    if node_id not in m.learners:
        raise Refusal(
            p.NOT_FOUND,
            f"{node_id} is not a learner; add it first: "
            f"`raftstate member add --id {node_id} --address HOST:PORT`",
            id=node_id,
        )
    if match == 0 or node_id not in up or lag > max_lag:
        state = (
            "has not answered the leader yet"
            if match == 0 or node_id not in up
            else f"is {lag} entries behind"
        )
        raise Refusal(
            p.NOT_CAUGHT_UP,
            f"learner {node_id} {state} (to promote: answering, at most {max_lag} entries behind); "
            "is it running? wait for it to catch up (`raftstate member list` shows the lag)",
            id=node_id,
            lag=lag,
            limit=max_lag,
        )
    _quorum_check(f"promoting {node_id}", m.voters | {node_id}, up)


def check_remove(m: Membership, node_id: str, up: set[str]) -> None:
    if node_id not in m.members:
        raise Refusal(
            p.NOT_FOUND,
            f"{node_id} is not a member (voters {sorted(m.voters)}, learners {sorted(m.learners)})",
            id=node_id,
        )
    if node_id in m.learners:
        return  # learners do not count towards any quorum
    rest = m.voters - {node_id}
    if not rest:
        raise Refusal(p.QUORUM_UNREACHABLE, f"removing {node_id} would leave no voter", id=node_id)
    _quorum_check(f"removing {node_id}", rest, up)
