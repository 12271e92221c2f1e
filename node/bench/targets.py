"""The workloads' operations against each system, over aiohttp (one request per operation).

A target turns one workload step into requests and says how it went: ``"ok"``, ``"busy"`` (a
valid refusal: the lock was held) or raises :class:`OpError`. ``retries`` counts extra round
trips an operation needed (etcd's compare-and-swap loop). Nothing here measures time.

raftstate: msgpack bodies over HTTP/1.1 keep-alive, writes and linearizable reads to the leader
(a 421 ``not_leader`` is followed to the node it names), stale reads spread over every node.
etcd: its v3 JSON gateway (``/v3/kv/...``, base64 keys and values), writes and linearizable reads
to the leader, serializable reads spread over every member; increment is the usual read +
``txn(mod_revision == seen) put`` retry loop, a lock is ``txn(create_revision == 0) put`` then
delete (no lease: one round trip cheaper than a real etcd lock, so it favours etcd).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import Any

import aiohttp
import msgpack

from raftstate.client import protocol
from raftstate.client.errors import ConnectFailed, RaftStateError
from raftstate.client.stream import StreamConnection

MSGPACK = "application/msgpack"
VALUE_100B = "v" * 100
KEYS = 10_000
COUNTERS = 100
LOCKS = 100
#: webhook dedupe markers (the ``markers`` fill): who sent the event, a small value, kept 7 days
PROVIDERS = ("stripe", "github", "shopify", "twilio", "slack")
MARKER_VALUE = '{"status":"processed","attempt":1}'
MARKER_TTL_S = 7 * 86400


def marker_key(run: str, i: int) -> str:
    """The ``i``-th marker of fill run ``run``: ``webhooks:<provider>:evt_<16 hex>``, random-looking
    (keys arrive in no order, as real event ids do) yet a pure function of (run, i), so whoever
    knows the run and the count can name any key it wrote (the chaos run reads a sample back)."""
    h = hashlib.blake2b(f"{run}:{i}".encode(), digest_size=8).digest()
    return f"webhooks:{PROVIDERS[h[0] % len(PROVIDERS)]}:evt_{h.hex()}"


class OpError(Exception):
    """The operation failed (not a valid refusal); ``code`` names how."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


#: stream op -> its row of the endpoint table (HTTP method and path)
_HTTP_OF = {ep.name: ep for ep in protocol.ENDPOINTS if ep.stream}


class RaftstateTarget:
    """raftstate over HTTP/1.1 (one request per operation), or with ``stream=True`` over
    ``/v1/stream`` (all operations multiplexed on one WebSocket per node)."""

    def __init__(
        self, session: aiohttp.ClientSession, endpoints: list[str], run: str, *, stream: bool = False
    ) -> None:
        self.s = session
        self.endpoints = endpoints
        self.leader = endpoints[0]
        self.run = run
        self.stream = stream
        self._streams: dict[str, StreamConnection] = {}
        self.retries = 0
        self.acked: dict[str, int] = {}  # counter key -> acknowledged increments
        self.unknown = 0  # increments whose outcome is unknown (timeouts, broken connections)
        self._rr = 0
        self.fill_keys = 0
        self._fill_next = 0
        self._fill_retry: list[int] = []  # markers whose put failed: put again until acknowledged

    async def _op(self, op: str, name: str, body: Any = None, *, stale: bool = False) -> tuple[int, Any]:
        for _ in range(3):
            base = self._next() if stale else self.leader
            try:
                if self.stream:
                    status, doc = await self._stream_call(base, op, name, body, stale)
                else:
                    status, doc = await self._http_call(base, op, name, body, stale)
            except (aiohttp.ClientConnectorError, ConnectFailed) as exc:
                if not stale and base == self.leader:  # the leader is gone: ask the next node
                    self.leader = self.endpoints[(self.endpoints.index(base) + 1) % len(self.endpoints)]
                raise OpError(type(exc).__name__) from None
            except (aiohttp.ClientError, TimeoutError, RaftStateError) as exc:
                raise OpError(type(exc).__name__) from None
            if status == 421 and not stale:
                addr = (doc or {}).get("error", {}).get("leader_address")
                if addr:
                    self.leader = f"http://{addr}"
                    if self.leader not in self.endpoints:
                        self.endpoints.append(self.leader)
                    continue
                raise OpError("no_leader")
            return status, doc
        raise OpError("redirect_loop")

    async def _stream_call(self, base: str, op: str, name: str, body: Any, stale: bool) -> tuple[int, Any]:
        conn = self._streams.get(base)
        if conn is None:
            conn = self._streams[base] = StreamConnection(self.s, base)
        return await conn.call(op, name, body, {"consistency": "stale"} if stale else None, timeout_s=10.0)

    async def _http_call(self, base: str, op: str, name: str, body: Any, stale: bool) -> tuple[int, Any]:
        ep = _HTTP_OF[op]
        headers = {"Accept": MSGPACK}
        data = None
        if body is not None:
            data = msgpack.packb(body, use_bin_type=True)
            headers["Content-Type"] = MSGPACK
        url = base + ep.path_for(name) + ("?consistency=stale" if stale else "")
        async with self.s.request(ep.method, url, data=data, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, (msgpack.unpackb(raw, raw=False) if raw else None)

    def _next(self) -> str:
        self._rr += 1
        return self.endpoints[self._rr % len(self.endpoints)]

    @staticmethod
    def _check(status: int, doc: Any, *ok: int) -> None:
        if status not in ok:
            code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
            raise OpError(code or f"http_{status}")

    async def put(self, rng: random.Random) -> str:
        st, doc = await self._op("set", f"k{rng.randrange(KEYS)}", {"value": VALUE_100B})
        self._check(st, doc, 200)
        return "ok"

    async def get(self, rng: random.Random) -> str:
        st, doc = await self._op("get", f"k{rng.randrange(KEYS)}")
        self._check(st, doc, 200, 404)
        return "ok"

    async def stale_get(self, rng: random.Random) -> str:
        st, doc = await self._op("get", f"k{rng.randrange(KEYS)}", stale=True)
        self._check(st, doc, 200, 404)
        return "ok"

    async def incr(self, rng: random.Random) -> str:
        key = f"ctr:{self.run}:{rng.randrange(COUNTERS)}"
        try:
            st, doc = await self._op("increment", key, {"by": 1})
        except OpError:
            self.unknown += 1
            raise
        if st == 504:
            self.unknown += 1
        self._check(st, doc, 200)
        self.acked[key] = self.acked.get(key, 0) + 1
        return "ok"

    async def mixed(self, rng: random.Random) -> str:
        return await (self.put(rng) if rng.random() < 0.2 else self.get(rng))

    async def lock(self, rng: random.Random) -> str:
        name = f"l{rng.randrange(LOCKS)}"
        st, doc = await self._op("lock_acquire", name, {"owner": "bench", "ttl": 10})
        if st == 409:
            return "busy"
        self._check(st, doc, 200)
        st, doc = await self._op("lock_release", name, {"token": doc["token"]})
        self._check(st, doc, 200)
        return "ok"

    async def claim(self, rng: random.Random) -> str:
        key = f"claim:{self.run}:{rng.randrange(100_000)}"
        st, doc = await self._op("set", key, {"value": 1, "if_absent": True})
        self._check(st, doc, 200)
        return "ok"

    async def fill(self, rng: random.Random) -> str:
        """Keys s0000000.. s<fill_keys - 1> with 100-byte values, each once; "done" when all are taken."""
        i = self._fill_next
        if i >= self.fill_keys:
            return "done"
        self._fill_next += 1
        st, doc = await self._op("set", f"s{i:07d}", {"value": VALUE_100B})
        self._check(st, doc, 200)
        return "ok"

    async def markers(self, rng: random.Random) -> str:
        """``fill_keys`` webhook markers :func:`marker_key` (run, 0..fill_keys - 1), each a small value
        with a 7-day ttl; a marker whose put failed is put again (a plain set: repeating it is
        harmless), so once every worker is "done" all of them were acknowledged."""
        if self._fill_retry:
            i = self._fill_retry.pop()
        elif self._fill_next < self.fill_keys:
            i = self._fill_next
            self._fill_next += 1
        else:
            return "done"
        try:
            st, doc = await self._op(
                "set", marker_key(self.run, i), {"value": MARKER_VALUE, "ttl": MARKER_TTL_S}
            )
            self._check(st, doc, 200)
        except OpError:
            self._fill_retry.append(i)
            raise
        return "ok"

    async def counter_values(self) -> dict[str, int]:
        out = {}
        for key in self.acked:
            st, doc = await self._op("get", key)
            self._check(st, doc, 200)
            out[key] = int(doc["value"])
        return out


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class EtcdTarget:
    def __init__(self, session: aiohttp.ClientSession, endpoints: list[str], run: str) -> None:
        self.s = session
        self.endpoints = endpoints
        self.leader = endpoints[0]
        self.run = run
        self.retries = 0
        self.acked: dict[str, int] = {}
        self.unknown = 0
        self._rr = 0

    async def find_leader(self) -> None:
        for ep in self.endpoints:
            st = await self._post(ep, "/v3/maintenance/status", {})
            if st.get("leader") == st.get("header", {}).get("member_id"):
                self.leader = ep
                return

    async def _post(self, base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.s.post(base + path, data=json.dumps(body)) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OpError(type(exc).__name__) from None
        if status != 200:
            raise OpError(f"http_{status}")
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def put(self, rng: random.Random) -> str:
        await self._post(
            self.leader, "/v3/kv/put", {"key": _b64(f"k{rng.randrange(KEYS)}"), "value": _b64(VALUE_100B)}
        )
        return "ok"

    async def get(self, rng: random.Random) -> str:
        await self._post(self.leader, "/v3/kv/range", {"key": _b64(f"k{rng.randrange(KEYS)}")})
        return "ok"

    async def stale_get(self, rng: random.Random) -> str:
        self._rr += 1
        ep = self.endpoints[self._rr % len(self.endpoints)]
        await self._post(ep, "/v3/kv/range", {"key": _b64(f"k{rng.randrange(KEYS)}"), "serializable": True})
        return "ok"

    async def incr(self, rng: random.Random) -> str:
        key = f"ctr:{self.run}:{rng.randrange(COUNTERS)}"
        k = _b64(key)
        first = True
        while True:
            if not first:
                self.retries += 1
            first = False
            doc = await self._post(self.leader, "/v3/kv/range", {"key": k})
            kvs = doc.get("kvs") or []
            if kvs:
                cur = int(base64.b64decode(kvs[0]["value"]))
                cmp = {"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": kvs[0]["mod_revision"]}
            else:
                cur = 0
                cmp = {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            txn = {"compare": [cmp], "success": [{"request_put": {"key": k, "value": _b64(str(cur + 1))}}]}
            try:
                res = await self._post(self.leader, "/v3/kv/txn", txn)
            except OpError:
                self.unknown += 1
                raise
            if res.get("succeeded"):
                self.acked[key] = self.acked.get(key, 0) + 1
                return "ok"

    async def mixed(self, rng: random.Random) -> str:
        return await (self.put(rng) if rng.random() < 0.2 else self.get(rng))

    async def lock(self, rng: random.Random) -> str:
        k = _b64(f"lock:{self.run}:{rng.randrange(LOCKS)}")
        cmp = {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        txn = {"compare": [cmp], "success": [{"request_put": {"key": k, "value": _b64("bench")}}]}
        res = await self._post(self.leader, "/v3/kv/txn", txn)
        if not res.get("succeeded"):
            return "busy"
        await self._post(self.leader, "/v3/kv/deleterange", {"key": k})
        return "ok"

    async def claim(self, rng: random.Random) -> str:
        k = _b64(f"claim:{self.run}:{rng.randrange(100_000)}")
        cmp = {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        await self._post(
            self.leader,
            "/v3/kv/txn",
            {"compare": [cmp], "success": [{"request_put": {"key": k, "value": _b64("1")}}]},
        )
        return "ok"

    async def counter_values(self) -> dict[str, int]:
        out = {}
        for key in self.acked:
            doc = await self._post(self.leader, "/v3/kv/range", {"key": _b64(key)})
            kvs = doc.get("kvs") or []
            out[key] = int(base64.b64decode(kvs[0]["value"])) if kvs else 0
        return out


Target = RaftstateTarget | EtcdTarget
WORKLOADS = ("put", "get", "stale_get", "incr", "mixed", "lock", "claim")
