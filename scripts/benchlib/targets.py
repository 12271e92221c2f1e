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
import json
import random
from typing import Any

import aiohttp
import msgpack

MSGPACK = "application/msgpack"
VALUE_100B = "v" * 100
KEYS = 10_000
COUNTERS = 100
LOCKS = 100


class OpError(Exception):
    """The operation failed (not a valid refusal); ``code`` names how."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class RaftstateTarget:
    def __init__(self, session: aiohttp.ClientSession, endpoints: list[str], run: str) -> None:
        self.s = session
        self.endpoints = endpoints
        self.leader = endpoints[0]
        self.run = run
        self.retries = 0
        self.acked: dict[str, int] = {}  # counter key -> acknowledged increments
        self.unknown = 0  # increments whose outcome is unknown (timeouts, broken connections)
        self._rr = 0

    async def _call(
        self, method: str, path: str, body: Any = None, *, leader: bool = True
    ) -> tuple[int, Any]:
        headers = {"Accept": MSGPACK}
        data = None
        if body is not None:
            data = msgpack.packb(body, use_bin_type=True)
            headers["Content-Type"] = MSGPACK
        for _ in range(3):
            base = self.leader if leader else self._next()
            try:
                async with self.s.request(method, base + path, data=data, headers=headers) as resp:
                    raw = await resp.read()
                    doc = msgpack.unpackb(raw, raw=False) if raw else None
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OpError(type(exc).__name__) from None
            if status == 421 and leader:
                addr = (doc or {}).get("error", {}).get("leader_address")
                if addr:
                    self.leader = f"http://{addr}"
                    continue
                raise OpError("no_leader")
            return status, doc
        raise OpError("redirect_loop")

    def _next(self) -> str:
        self._rr += 1
        return self.endpoints[self._rr % len(self.endpoints)]

    @staticmethod
    def _check(status: int, doc: Any, *ok: int) -> None:
        if status not in ok:
            code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
            raise OpError(code or f"http_{status}")

    async def put(self, rng: random.Random) -> str:
        st, doc = await self._call("PUT", f"/v1/kv/k{rng.randrange(KEYS)}", {"value": VALUE_100B})
        self._check(st, doc, 200)
        return "ok"

    async def get(self, rng: random.Random) -> str:
        st, doc = await self._call("GET", f"/v1/kv/k{rng.randrange(KEYS)}")
        self._check(st, doc, 200, 404)
        return "ok"

    async def stale_get(self, rng: random.Random) -> str:
        st, doc = await self._call("GET", f"/v1/kv/k{rng.randrange(KEYS)}?consistency=stale", leader=False)
        self._check(st, doc, 200, 404)
        return "ok"

    async def incr(self, rng: random.Random) -> str:
        key = f"ctr:{self.run}:{rng.randrange(COUNTERS)}"
        try:
            st, doc = await self._call("POST", f"/v1/kv/{key}/increment", {"by": 1})
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
        st, doc = await self._call("POST", f"/v1/locks/{name}/acquire", {"owner": "bench", "ttl": 10})
        if st == 409:
            return "busy"
        self._check(st, doc, 200)
        st, doc = await self._call("POST", f"/v1/locks/{name}/release", {"token": doc["token"]})
        self._check(st, doc, 200)
        return "ok"

    async def claim(self, rng: random.Random) -> str:
        key = f"claim:{self.run}:{rng.randrange(100_000)}"
        st, doc = await self._call("PUT", f"/v1/kv/{key}", {"value": 1, "if_absent": True})
        self._check(st, doc, 200)
        return "ok"

    async def counter_values(self) -> dict[str, int]:
        out = {}
        for key in self.acked:
            st, doc = await self._call("GET", f"/v1/kv/{key}")
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
