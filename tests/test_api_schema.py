"""Request validation before proposing: every malformed or oversize request is refused with a code
and a message naming the field or the limit — and nothing is ever proposed for it."""

from __future__ import annotations

from typing import Any

import pytest

from raftstate.client import protocol as p
from raftstate.node.api import schema
from raftstate.node.api.schema import ApiLimits
from raftstate.node.errors import Refusal
from raftstate.node.state.commands import (
    AcquireLock,
    Command,
    Fence,
    Increment,
    KeepAlive,
    OpenSession,
    SessionRef,
    SetKey,
    encode,
)

LIM = ApiLimits(max_key_bytes=16, max_value_bytes=64, session_idle_timeout_ms=60_000, max_session_results=7)


def refused(fn: Any, *args: Any) -> Refusal:
    with pytest.raises(Refusal) as err:
        fn(*args)
    return err.value


def test_put_builds_the_command_with_seconds_turned_into_milliseconds() -> None:
    body = {"value": {"a": [1, None, b"\x00"]}, "ttl": 0.1, "session": 4, "seq": 9, "ack": 3}
    cmd = schema.put("k", body, LIM)
    assert cmd == Command(SetKey("k", {"a": [1, None, b"\x00"]}, ttl_ms=100), SessionRef(4, 9, 3))
    cmd = schema.put("k", {"value": 1, "expires_at": 1700000000.5, "fence": {"lock": "L", "token": 3}}, LIM)
    assert cmd == Command(SetKey("k", 1, expires_at_ms=1_700_000_000_500), fence=Fence("L", 3))
    assert schema.put("k", {"value": 1, "ttl": 0.0001}, LIM).op == SetKey("k", 1, ttl_ms=1)  # never shortened
    assert schema.put("k", {"value": None, "if_absent": True}, LIM).op == SetKey("k", None, if_absent=True)
    encode(cmd)  # what the API builds always encodes


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({}, p.INVALID_REQUEST, '"value"'),
        ([1], p.INVALID_REQUEST, "JSON object"),
        ({"value": 1, "tll": 3}, p.INVALID_REQUEST, "unknown field 'tll'"),
        ({"value": 1, "ttl": -1}, p.INVALID_REQUEST, '"ttl" must be a positive number'),
        ({"value": 1, "ttl": "10"}, p.INVALID_REQUEST, '"ttl"'),
        ({"value": 1, "ttl": 10**400}, p.INVALID_REQUEST, '"ttl"'),
        ({"value": 1, "ttl": 1e12}, p.INVALID_REQUEST, "ten years"),
        ({"value": 1, "ttl": 1, "expires_at": 5}, p.INVALID_REQUEST, "not both"),
        ({"value": 1, "expires_at": -3}, p.INVALID_REQUEST, "epoch seconds"),
        ({"value": 1, "if_version": 0}, p.INVALID_REQUEST, "if_version"),
        ({"value": 1, "if_version": True}, p.INVALID_REQUEST, "if_version"),
        ({"value": 1, "if_absent": 1}, p.INVALID_REQUEST, "true or false"),
        ({"value": 1, "if_absent": True, "if_version": 3}, p.INVALID_REQUEST, "not both"),
        ({"value": 1, "session": 3}, p.INVALID_REQUEST, "both"),
        ({"value": 1, "session": 3, "seq": 2, "ack": 2}, p.INVALID_REQUEST, "below"),
        ({"value": 1, "session": "x", "seq": 2}, p.INVALID_REQUEST, "session"),
        ({"value": 1, "fence": {"lock": "L"}}, p.INVALID_REQUEST, "fence"),
        ({"value": 1, "fence": {"lock": "L", "token": "7"}}, p.INVALID_REQUEST, "fence.token"),
        ({"value": 1, "fence": {"lock": "L" * 17, "token": 7}}, p.KEY_TOO_LARGE, "16 bytes"),
        ({"value": float("nan")}, p.INVALID_REQUEST, "nan"),
        ({"value": {"a": float("inf")}}, p.INVALID_REQUEST, "inf"),
        ({"value": 2**64}, p.INVALID_REQUEST, "cannot be stored"),
        ({"value": {b"k": 1}}, p.INVALID_REQUEST, "map keys"),
        ({"value": {1, 2}}, p.INVALID_REQUEST, "not storable"),
        ({"value": "x" * 65}, p.VALUE_TOO_LARGE, "limit is 64 bytes"),
    ],
)
def test_put_refuses(body: Any, code: str, needle: str) -> None:
    err = refused(schema.put, "k", body, LIM)
    assert err.code == code
    assert needle in err.message
    assert "PUT /v1/kv/k" in err.message or code != p.INVALID_REQUEST or "fence" in needle


def test_values_nest_at_most_max_value_depth_levels() -> None:
    deep: Any = 1
    for _ in range(schema.MAX_VALUE_DEPTH):
        deep = [deep]
    err = refused(schema.put, "k", {"value": deep}, ApiLimits(max_value_bytes=1 << 20))
    assert "deeper than" in err.message
    schema.put("k", {"value": deep[0]}, ApiLimits(max_value_bytes=1 << 20))


def test_key_and_name_limits_come_from_the_path() -> None:
    assert schema.name_from_path("é" * 8, LIM) == "é" * 8  # 16 bytes: at the limit
    err = refused(schema.name_from_path, "é" * 9, LIM)
    assert (err.code, err.fields) == (p.KEY_TOO_LARGE, {"limit": 16})
    assert "18 bytes" in err.message and "settings.max_key_bytes" in err.message
    assert refused(schema.name_from_path, "\ud800", LIM).code == p.INVALID_REQUEST


def test_increment_lock_and_session_bodies() -> None:
    assert schema.increment("c", {}, LIM).op == Increment("c", 1)
    assert schema.increment("c", {"by": -(2**63)}, LIM).op == Increment("c", -(2**63))
    assert "signed 64-bit" in refused(schema.increment, "c", {"by": 2**63}, LIM).message
    assert "signed 64-bit" in refused(schema.increment, "c", {"by": 1.0}, LIM).message
    lock = AcquireLock("L", "w", 2500, LIM.max_locks)
    assert schema.acquire("L", {"owner": "w", "ttl": 2.5}, LIM).op == lock
    assert '"ttl"' in refused(schema.acquire, "L", {"owner": "w"}, LIM).message
    assert '"owner"' in refused(schema.acquire, "L", {"owner": "", "ttl": 1}, LIM).message
    assert "max_key_bytes" in refused(schema.acquire, "L", {"owner": "w" * 17, "ttl": 1}, LIM).message
    assert "fence" in refused(schema.acquire, "L", {"owner": "w", "ttl": 1, "fence": {}}, LIM).message
    assert '"token"' in refused(schema.renew, "L", {}, LIM).message
    assert '"token"' in refused(schema.release, "L", {"token": 0}, LIM).message
    assert schema.open_session({}, LIM) == Command(OpenSession(60_000, 7, LIM.max_sessions))
    assert "unknown field" in refused(schema.open_session, {"idle": 5}, LIM).message
    assert schema.keepalive("12", {}, LIM) == Command(KeepAlive(12))
    assert "session id" in refused(schema.keepalive, "abc", {}, LIM).message


def test_query_parameters() -> None:
    assert schema.list_query({}, LIM) == schema.ListQuery("", None, 1000)
    assert schema.list_query({"prefix": "a", "after": "ab", "limit": "5"}, LIM) == schema.ListQuery(
        "a", "ab", 5
    )
    for bad in ({"limit": "0"}, {"limit": "x"}, {"limit": "²"}, {"limit": "9" * 30}, {"colour": "red"}):
        assert refused(schema.list_query, bad, LIM).code == p.INVALID_REQUEST
    too_many = refused(schema.list_query, {"limit": "10001"}, LIM)
    assert (too_many.code, too_many.fields) == (p.PAGE_TOO_LARGE, {"limit": 10_000})
    assert "settings.max_keys_per_page" in too_many.message
    assert refused(schema.keepalive, "²", {}, LIM).code == p.INVALID_REQUEST
    assert refused(schema.list_query, {"prefix": "p" * 17}, LIM).code == p.KEY_TOO_LARGE
    assert schema.stale_read({"consistency": "stale"}) is True
    assert schema.stale_read({}) is False
    assert refused(schema.stale_read, {"consistency": "eventual"}).code == p.INVALID_REQUEST
    assert schema.timeout_s({}, 5.0) == 5.0
    assert schema.timeout_s({"timeout": "0.25"}, 5.0) == 0.25
    assert schema.timeout_s({"timeout": "60"}, 5.0) == 5.0
    for bad in ("0", "-1", "nan", "inf", "soon"):
        assert refused(schema.timeout_s, {"timeout": bad}, 5.0).code == p.INVALID_REQUEST
