"""Each rule between the fields of one request has one home, and every side that checks it gives
the same answer: the client before sending (client/_time.py), the request schema before proposing
(node/api/schema.py) and the command schema at apply (node/state/commands.py).

    ttl / expires_at        client.protocol.one_expiry          client, API, apply
    if_absent / if_version  state.commands.one_condition        API, apply
    session / seq           state.commands.session_needs_seq    API, apply
    ack < seq               state.commands.ack_below_seq        API, apply
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from raftstate.client import protocol as p
from raftstate.client._time import expiry_fields
from raftstate.client.errors import InvalidRequest
from raftstate.node.api import schema
from raftstate.node.api.schema import ApiLimits
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import ack_below_seq, decode, one_condition, session_needs_seq
from raftstate.node.state.machine import KVStateMachine, encode_command

LIM = ApiLimits()
T0 = 1_700_000_000_000


def present(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def api_problem(**body: Any) -> str | None:
    """The request schema's refusal of ``PUT /v1/kv/k`` with ``body`` (None: accepted)."""
    try:
        schema.put("k", {"value": 1, **present(**body)}, LIM)
    except Refusal as r:
        assert r.code == p.INVALID_REQUEST
        return r.message
    return None


def apply_problem(**fields: Any) -> str | None:
    """The command schema's refusal of a ``set`` entry with ``fields`` (None: accepted)."""
    try:
        decode(encode_command("set", key="k", value=1, **present(**fields)))
    except Refusal as r:
        assert r.code == p.INVALID_REQUEST
        return r.message
    return None


def same_answer(rule: str | None, *answers: str | None) -> None:
    """Every side refuses exactly when the rule does, with the rule's own words."""
    for answer in answers:
        if rule is None:
            assert answer is None
        else:
            assert answer is not None and answer.endswith(f": {rule}"), (answer, rule)


@pytest.mark.parametrize(("ttl", "expires_at"), list(itertools.product([None, 2], [None, 1_800_000_000])))
def test_ttl_or_expires_at(ttl: int | None, expires_at: int | None) -> None:
    rule = p.one_expiry(ttl, expires_at)
    assert (rule is None) == (ttl is None or expires_at is None)
    try:
        expiry_fields(ttl, expires_at, what="set key 'k'")
        client = None
    except InvalidRequest as exc:
        assert exc.code == p.INVALID_REQUEST
        client = exc.message
    api = api_problem(ttl=ttl, expires_at=expires_at)
    applied = apply_problem(
        ttl_ms=None if ttl is None else ttl * 1000,
        expires_at_ms=None if expires_at is None else expires_at * 1000,
    )
    same_answer(rule, client, api, applied)


@pytest.mark.parametrize(("if_absent", "if_version"), list(itertools.product([None, False, True], [None, 3])))
def test_if_absent_or_if_version(if_absent: bool | None, if_version: int | None) -> None:
    rule = one_condition(if_absent, if_version)
    assert (rule is None) == (if_absent is not True or if_version is None)
    same_answer(
        rule,
        api_problem(if_absent=if_absent, if_version=if_version),
        apply_problem(if_absent=if_absent, if_version=if_version),
    )


@pytest.mark.parametrize(
    ("session", "seq", "ack"), list(itertools.product([None, 4], [None, 9], [None, 0, 3]))
)
def test_a_session_write_names_session_and_seq(session: int | None, seq: int | None, ack: int | None) -> None:
    rule = session_needs_seq(session, seq, ack)
    assert (rule is None) == ((session, seq, ack) == (None, None, None) or None not in (session, seq))
    fields = {"session": session, "seq": seq, "ack": ack}
    same_answer(rule, api_problem(**fields), apply_problem(**fields))


@pytest.mark.parametrize(("seq", "ack"), list(itertools.product([1, 2, 5], [0, 1, 2, 5, 6])))
def test_ack_is_below_seq(seq: int, ack: int) -> None:
    rule = ack_below_seq(seq, ack)
    assert (rule is None) == (ack < seq)
    fields = {"session": 4, "seq": seq, "ack": ack}
    same_answer(rule, api_problem(**fields), apply_problem(**fields))


def test_apply_answers_a_broken_rule_like_decode() -> None:
    """The state machine's outcome for a rule-breaking entry is the command schema's refusal."""
    out = KVStateMachine().apply(7, T0, encode_command("set", key="k", value=1, session=4, seq=2, ack=2))
    assert isinstance(out, Refusal) and out.message.endswith(f": {ack_below_seq(2, 2)}")
    assert out.message.startswith("entry 7: set: ")
