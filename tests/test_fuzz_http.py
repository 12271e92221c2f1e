"""Fuzzing the HTTP API of a real node process (auth on) over raw sockets.

Hypothesis interleaves valid writes (on keys ``v:*``, mirrored in a model) with garbage: random and
malformed bodies, wrong types, huge numbers, deep nesting, invalid UTF-8 in bodies and paths,
truncated msgpack, wrong content types, bad/missing tokens, odd methods and paths. Asserted:
    - the node never answers 5xx and never dies;
    - a request refused by validation (400/401/403/404/405/408/413) proposes nothing: the commit
      index does not move;
    - after the run, the ``v:*`` data equals what the valid requests alone produce.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftstate.node.ops.local_cluster import LocalCluster

pytestmark = pytest.mark.cluster

TOKEN = "fuzz-write-token-0123456789"
ENV = {"F_SECRET": "fuzz-cluster-secret-0123456789", "F_WRITE": TOKEN}
AUTH = {
    "enabled": True,
    "cluster_secret": {"env": "F_SECRET"},
    "tokens": [{"name": "fuzz", "role": "write", "env": "F_WRITE"}],
}
#: small limits so that "oversized" is cheap to hit
LIMITS = {"max_key_bytes": 64, "max_value_bytes": 512, "max_request_bytes": 4096, "max_keys_per_page": 100}
VALIDATION_REFUSALS = {400, 401, 403, 404, 405, 408, 413}

STATS: dict[str, int] = {}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        tmp_path_factory.mktemp("fuzz"), n=1, settings=LIMITS, auth=AUTH, env=ENV, token=TOKEN
    ).running(leader_timeout=30) as c:
        yield c
        print("\nfuzz outcomes by status:", dict(sorted(STATS.items())))


def raw_request(
    c: LocalCluster, method: bytes, path: bytes, body: bytes, content_type: bytes | None, token: bytes | None
) -> tuple[int, bytes]:
    """One request on a fresh connection, bytes exactly as given. (status, body)."""
    host, port = c.addr["n1"].split(":")
    head = [method + b" " + path + b" HTTP/1.1", b"Host: " + host.encode(), b"Connection: close"]
    if content_type is not None:
        head.append(b"Content-Type: " + content_type)
    if token is not None:
        head.append(b"Authorization: Bearer " + token)
    head.append(b"Content-Length: " + str(len(body)).encode())
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1."), f"no HTTP answer: {data[:200]!r}"
    return int(status_line.split()[1]), data.split(b"\r\n\r\n", 1)[-1]


def commit_index(c: LocalCluster) -> int:
    st: dict[str, Any] = c.status("n1", timeout=10)
    return int(st["commit_index"])


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # unbounded: 10**400 too
        st.floats(),
        st.text(max_size=30),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
fields = st.sampled_from(
    [
        "value",
        "ttl",
        "expires_at",
        "if_absent",
        "if_version",
        "by",
        "owner",
        "token",
        "session",
        "seq",
        "ack",
        "fence",
    ]
)
bodies_as_objects = st.dictionaries(fields, json_values, max_size=4)


def _json(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")


def _msgpack(v: Any) -> bytes:
    try:
        return bytes(msgpack.packb(v, use_bin_type=True))
    except (OverflowError, ValueError, TypeError):
        return b"\xc1"  # never-used msgpack byte


body_bytes = st.one_of(
    bodies_as_objects.map(_json),
    json_values.map(_json),
    bodies_as_objects.map(_msgpack),
    bodies_as_objects.map(_msgpack).flatmap(
        lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n])
    ),
    st.binary(max_size=200),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * (n // 2)),  # deep nesting, maybe unbalanced
    st.integers(1, 200_000).map(lambda n: b"\x91" * n + b"\xc0"),  # deep msgpack
    st.just(b'{"value": ' + b"9" * 5000 + b"}"),  # a number too big to parse
    st.just(b'{"value": "\xff\xfe\xfd"}'),  # invalid UTF-8
    st.just(b'{"value": "\\ud800"}'),  # a lone surrogate
    st.just(b'{"value": 1, "ttl": 1e999}'),
    st.just(b"x" * 5000),  # over max_request_bytes
    st.just(b'{"value": "' + b"v" * 600 + b'"}'),  # over max_value_bytes
)
key_segments = st.one_of(
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=20).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
    st.just(b"%ff%fe"),
    st.just(b"%00"),
    st.just(b"k" * 100),  # over max_key_bytes
    st.just(b".."),
    st.just(b"%2e%2e"),
)


def _quote_path(seg: bytes) -> bytes:
    return bytes(b if 0x21 <= b < 0x7F and b not in b"?#" else 0x5F for b in seg) or b"_"


paths = st.one_of(
    key_segments.map(lambda k: b"/v1/kv/f:" + _quote_path(k)),
    key_segments.map(lambda k: b"/v1/kv/f:" + _quote_path(k) + b"/increment"),
    key_segments.map(lambda k: b"/v1/locks/" + _quote_path(k) + b"/acquire"),
    key_segments.map(lambda k: b"/v1/locks/" + _quote_path(k) + b"/renew"),
    key_segments.map(lambda k: b"/v1/sessions/" + _quote_path(k) + b"/keepalive"),
    key_segments.map(lambda k: b"/v1/keys?limit=" + _quote_path(k) + b"&prefix=f:"),
    key_segments.map(lambda k: b"/v1/kv/f:a?timeout=" + _quote_path(k)),
    st.sampled_from(
        [b"/v1/sessions", b"/v1/leader/transfer", b"/nope", b"/v1/kv/", b"/raft/v1/stream", b"*"]
    ),
    st.sampled_from([b"/v1/kv/f:a", b"/v1/kv/f:a/increment", b"/v1/locks/f/acquire", b"/v1/sessions"]),
)
methods = st.sampled_from([b"GET", b"PUT", b"POST", b"DELETE"] * 4 + [b"PATCH", b"HEAD", b"OPTIONS", b"BREW"])
content_types = st.sampled_from(
    [b"application/json", b"application/msgpack", b"text/plain", b"application/x-www-form-urlencoded", None]
)
# mostly the right token, so that most garbage gets past auth into the decoders and validators
tokens = st.sampled_from([TOKEN.encode()] * 6 + [None, b"nope", TOKEN.encode() + b"x", b"\xff\xfe"])

garbage = st.tuples(methods, paths, body_bytes, content_types, tokens)
valid = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["v:a", "v:b", "v:c"]), json_values.filter(lambda v: _ok(v))),
    st.tuples(st.just("delete"), st.sampled_from(["v:a", "v:b", "v:c"]), st.none()),
    st.tuples(st.just("incr"), st.just("v:n"), st.integers(-1000, 1000)),
)


def _ok(v: Any) -> bool:
    """Values the API accepts: JSON without non-finite floats or out-of-range integers, small."""
    try:
        raw = json.dumps(v, allow_nan=False)
        bytes(msgpack.packb(v, use_bin_type=True))
    except (ValueError, OverflowError):
        return False
    return len(raw) < 300


# --------------------------------------------------------------------------- the property

MODEL: dict[str, Any] = {}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    st.lists(
        st.one_of(garbage.map(lambda g: ("garbage", g)), valid.map(lambda v: ("valid", v))),
        min_size=3,
        max_size=15,
    )
)
def test_fuzzed_requests_never_crash_or_change_the_valid_data(node: LocalCluster, ops: list[Any]) -> None:
    for kind, op in ops:
        if kind == "valid":
            apply_valid(node, *op)
            continue
        method, path, body, ctype, token = op
        before = commit_index(node)
        status, _ = raw_request(node, method, path, body, ctype, token)
        STATS[str(status)] = STATS.get(str(status), 0) + 1
        assert status < 500, f"{method!r} {path!r} {body[:80]!r} {ctype!r}: HTTP {status}"
        if status in VALIDATION_REFUSALS:
            assert commit_index(node) == before, (
                f"refused {status} but proposed: {method!r} {path!r} {body[:80]!r}"
            )


def apply_valid(c: LocalCluster, op: str, key: str, arg: Any) -> None:
    if op == "set":
        c.request("PUT", "n1", f"/v1/kv/{key}", {"value": arg})
        MODEL[key] = arg
    elif op == "delete":
        c.request("DELETE", "n1", f"/v1/kv/{key}", {})
        MODEL.pop(key, None)
    else:
        out = c.request("POST", "n1", f"/v1/kv/{key}/increment", {"by": arg})
        MODEL[key] = MODEL.get(key, 0) + arg
        assert out["value"] == MODEL[key]


def test_after_the_fuzz_the_valid_data_is_exactly_the_model(node: LocalCluster) -> None:
    keys = node.request("GET", "n1", "/v1/keys?prefix=v:&limit=100")["keys"]
    got = {k: node.request("GET", "n1", f"/v1/kv/{k}")["value"] for k in keys}
    assert got == MODEL
    assert node.alive("n1"), "the node survived the fuzz"
    log = node.log_text("n1")
    assert "Traceback" not in log, log[-3000:]
