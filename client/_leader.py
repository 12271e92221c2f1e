"""Which node to send the next request to: the leader if known, else the next endpoint in turn.

Rules (each is one method below):

    a 2xx from a leader-only call on E     E is the leader                          (confirmed)
    not_leader from E naming address A     A is the leader: go there at once        (redirect)
      ... unless A failed us moments ago   ignore the stale hint: back off, rotate  (suspect)
    E refused the connection               forget E as leader; rotate past E        (failed)
    E answered unavailable / timeout       forget E as leader; ask the next node    (unsure)
    a probe of every node's /status        the leader of the highest term wins      (probe)

Whenever the leader changes to a node other than E, every request still pending on E is told
(:meth:`LeaderTracker.wait_moved_from`) so it is re-sent to the new leader at once instead of
waiting out its timeout on a node that lost (or never had) leadership. While a request is pending
for long, :meth:`LeaderTracker.probe_soon` asks every node who leads — so a leader that was paused
or cut off (and so cannot say it lost leadership) is noticed within about one election.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from raftstate.client import protocol as p
from raftstate.client._retry import Clock
from raftstate.client._transport import Request, Transport
from raftstate.client.errors import InvalidRequest, TransportError

log = logging.getLogger("raftstate.client")

#: how long a node that just failed us is not believed to be the leader on hearsay (seconds)
SUSPECT_S = 1.0
#: per-node timeout of one /status probe, and the least time between two probes (seconds)
PROBE_TIMEOUT_S = 0.5
PROBE_INTERVAL_S = 0.5


def normalize_endpoint(endpoint: str) -> str:
    """ "127.0.0.1:7001" or "http://127.0.0.1:7001/" -> "http://127.0.0.1:7001"."""
    e = endpoint.strip().rstrip("/")
    if not e:
        raise InvalidRequest("an endpoint is empty; pass URLs like http://127.0.0.1:7001")
    if "://" not in e:
        e = "http://" + e
    scheme, _, rest = e.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest:
        raise InvalidRequest(f"endpoint {endpoint!r} is not a node URL like http://127.0.0.1:7001")
    return f"{scheme}://{rest}"


class LeaderTracker:
    def __init__(self, endpoints: Sequence[str], *, clock: Clock = time.monotonic) -> None:
        eps = list(dict.fromkeys(normalize_endpoint(e) for e in endpoints))
        if not eps:
            raise InvalidRequest("no endpoints given; pass at least one node URL, e.g. http://127.0.0.1:7001")
        #: every node we know of, in the order given (leaders learnt from hints are appended)
        self.endpoints: list[str] = eps
        #: the node believed to lead, or None while unknown (then requests rotate through endpoints)
        self.leader: str | None = None
        #: highest term a probe has seen a leader in (hints carry no term)
        self.term = 0
        self._clock = clock
        self._next = 0  # rotation cursor into endpoints
        self._suspect_until: dict[str, float] = {}
        self._changed: asyncio.Event | None = None  # set (and replaced) on every leader change
        self._probe: asyncio.Task[str | None] | None = None
        self._last_probe = float("-inf")

    # ----------------------------------------------------------------- choosing

    def target(self) -> str:
        """Where to send the next leader-only request."""
        if self.leader is not None:
            return self.leader
        return self._rotate()

    def any_node(self) -> str:
        """Where to send a request any node can answer (a stale read): the leader if known."""
        return self.target()

    def _rotate(self) -> str:
        now = self._clock()
        n = len(self.endpoints)
        for i in range(n):
            e = self.endpoints[(self._next + i) % n]
            if self._suspect_until.get(e, 0.0) <= now:
                self._next = (self._next + i + 1) % n
                return e
        e = self.endpoints[self._next % n]  # every node failed lately: keep cycling anyway
        self._next = (self._next + 1) % n
        return e

    # ----------------------------------------------------------------- learning

    def succeeded(self, endpoint: str) -> None:
        """A leader-only call succeeded on ``endpoint``: it leads."""
        self._suspect_until.pop(endpoint, None)
        self._set_leader(endpoint)

    def redirect(self, endpoint: str, leader_address: object) -> bool:
        """``endpoint`` answered not_leader naming ``leader_address`` ("host:port" or None).
        True when that is a usable new target (go at once); False means back off and rotate."""
        if self.leader == endpoint:
            self._set_leader(None)
        if not isinstance(leader_address, str) or not leader_address:
            return False
        try:
            hinted = self._endpoint_for(leader_address)
        except InvalidRequest:
            log.warning("node %s named an unusable leader address %r", endpoint, leader_address)
            return False
        if hinted == endpoint or self._suspect_until.get(hinted, 0.0) > self._clock():
            return False  # stale hint: that node just failed us
        self._set_leader(hinted)
        return True

    def unsure(self, endpoint: str) -> None:
        """``endpoint`` answered unavailable/timeout: it may have lost leadership. Ask around (the next
        node names the leader, possibly this one again) without distrusting it."""
        if self.leader == endpoint:
            self._set_leader(None)
            if endpoint in self.endpoints:
                self._next = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)

    def failed(self, endpoint: str) -> None:
        """``endpoint`` could not be reached or did not answer in time."""
        self._suspect_until[endpoint] = self._clock() + SUSPECT_S
        if self.leader == endpoint:
            self._set_leader(None)
            if endpoint in self.endpoints:  # rotate starting after the failed node
                self._next = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)

    def _endpoint_for(self, address: str) -> str:
        """The endpoint URL of a node named by "host:port", reusing a known endpoint's scheme."""
        for e in self.endpoints:
            if e.partition("://")[2] == address:
                return e
        scheme = self.endpoints[0].partition("://")[0]
        e = normalize_endpoint(f"{scheme}://{address}")
        self.endpoints.append(e)  # a node we were not told about (membership grew): remember it
        return e

    def _set_leader(self, endpoint: str | None) -> None:
        if endpoint == self.leader:
            return
        if endpoint is not None:
            log.debug("leader is now %s (was %s)", endpoint, self.leader)
        self.leader = endpoint
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # ----------------------------------------------------------------- waiting for a change

    async def wait_moved_from(self, endpoint: str) -> None:
        """Return once the leader is known to be some node other than ``endpoint``."""
        while self.leader is None or self.leader == endpoint:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    # ----------------------------------------------------------------- probing

    def probe_soon(self, transport: Transport) -> None:
        """Start one background probe of every node's /status unless one ran very recently."""
        now = self._clock()
        if (self._probe is not None and not self._probe.done()) or now - self._last_probe < PROBE_INTERVAL_S:
            return
        self._last_probe = now
        self._probe = asyncio.get_running_loop().create_task(self.probe(transport), name="raftstate-probe")

    async def probe(self, transport: Transport) -> str | None:
        """Ask every node who leads; adopt the leader of the highest term. Returns it (or None)."""
        eps = list(self.endpoints)
        answers = await asyncio.gather(
            *(transport.send(e, Request(p.STATUS), PROBE_TIMEOUT_S) for e in eps),
            return_exceptions=True,
        )
        best: tuple[int, int, str] | None = None  # (term, says-itself, endpoint)
        silent: set[str] = set()
        for e, a in zip(eps, answers, strict=True):
            if isinstance(a, TransportError):
                self._suspect_until[e] = self._clock() + SUSPECT_S
                silent.add(e)
                continue
            if isinstance(a, BaseException) or a.status != 200 or not isinstance(a.body, dict):
                continue
            term = a.body.get("term")
            if not isinstance(term, int):
                continue
            if a.body.get("role") == "leader":
                cand: tuple[int, int, str] | None = (term, 1, e)
            elif isinstance(a.body.get("leader_address"), str):
                try:
                    cand = (term, 0, self._endpoint_for(a.body["leader_address"]))
                except InvalidRequest:
                    cand = None
            else:
                cand = None
            if cand is not None and (best is None or cand[:2] > best[:2]):
                best = cand
        if best is None or best[0] < self.term or best[2] in silent:
            return None  # nobody knows, or they name a node that did not answer us either
        self.term = best[0]
        self._suspect_until.pop(best[2], None)
        self._set_leader(best[2])
        return best[2]

    async def aclose(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            try:
                await self._probe
            except (asyncio.CancelledError, Exception):
                pass
