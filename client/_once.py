"""``once(key, ttl)``: run a piece of work once per key across all workers (webhook deduplication).

    async with state.once(f"stripe:{event.id}", ttl=7 * 86400) as first_time:
        if first_time:
            await fulfil_order(event)        # the side effect
    # later deliveries of the same event: first_time is False

The key moves through three states (the value is a small marker map)::

    absent ──claim: set_if_absent, ttl=claim_ttl──► running ──body returned: CAS, ttl=ttl──► done
       ▲                                               │                                    │
       ├──── body raised: claim deleted ◄──────────────┤                                    │
       ├──── claimer crashed: claim lapses ◄───────────┘ (after claim_ttl)                  │
       └──── ttl passed ◄───────────────────────────────────────────────────────────────────┘

- The claimer renews its claim every claim_ttl/3 while the body runs, so a long body keeps it.
- A caller that finds the key *running* waits (woken by the key's watch event, client/_waiter.py;
  at most ``wait`` seconds — None: until it resolves) for it to become done (→ ``first_time``
  False) or absent (→ it claims and runs the body itself). After ``wait`` it gets LockHeld:
  answer the webhook with an error (e.g. HTTP 409) and let the sender retry later — NOT a 200,
  because the first worker may still fail.
- A caller that finds the key *done* gets False at once; so does one that finds a value that
  once() did not write (the key is taken).

Crash semantics — what Stripe-webhook users must know: the guarantee is "at most once while
nothing crashes, at least once overall". If the claimer dies mid-body (kill -9, OOM, power), its
claim lapses after ``claim_ttl`` and the next delivery runs the body AGAIN — also if the side
effect had already happened before the crash. Make the side effect itself idempotent where you can
(pass the event id as the payment provider's idempotency key), and keep ``claim_ttl`` short enough
that a retry after a crash is not delayed for long, but longer than a paused process may stall.
If the claim is lost while the body runs (renewals failed for longer than the claim lasts), exit
raises LockLost: another worker may be running the body too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from raftstate.client._lock import MARGIN_SHARE, RENEW_SHARE
from raftstate.client._retry import Backoff, Deadline
from raftstate.client._waiter import KEY_CHANGED, ChangeWaiter
from raftstate.client.errors import ClientClosed, LockHeld, LockLost, OutcomeUnknown, RaftStateError

if TYPE_CHECKING:
    from raftstate.client.async_client import AsyncClient

log = logging.getLogger("raftstate.client")

RUNNING = "running"
DONE = "done"


def marker_state(value: Any) -> str:
    """The state a once() marker is in; a value once() did not write counts as done (key taken)."""
    if isinstance(value, dict) and value.get("once") in (RUNNING, DONE):
        return str(value["once"])
    return DONE


class OnceContext:
    def __init__(
        self, client: AsyncClient, key: str, ttl_s: float, claim_ttl_s: float, wait_s: float | None
    ) -> None:
        assert ttl_s > 0 and claim_ttl_s > 0
        self._client = client
        self._key = key
        self._ttl_s = ttl_s
        self._claim_ttl_s = claim_ttl_s
        self._wait_s = wait_s
        self._claim = secrets.token_hex(8)  # tells our marker apart from anyone else's
        self._version: int | None = None  # the key's version while WE hold the claim
        self._valid_until = 0.0
        self._lost: str | None = None
        self._stop = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    def _marker(self, state: str) -> dict[str, Any]:
        return {"once": state, "owner": self._client.owner, "claim": self._claim, "at": time.time()}

    def _ours(self, value: Any, state: str) -> bool:
        return isinstance(value, dict) and value.get("claim") == self._claim and value.get("once") == state

    # ----------------------------------------------------------------- enter: claim or learn it ran

    async def __aenter__(self) -> bool:
        c = self._client
        wait = None if self._wait_s is None else Deadline.after(self._wait_s, c._clock)
        backoff = Backoff(c._rng, base_s=0.05, cap_s=max(0.05, min(1.0, self._claim_ttl_s / 4)))
        waiter = ChangeWaiter(c, self._key, KEY_CHANGED, backoff)  # woken by the key's change
        try:
            return await self._claim_or_wait(wait, waiter)
        finally:
            await waiter.close()

    async def _claim_or_wait(self, wait: Deadline | None, waiter: ChangeWaiter) -> bool:
        c = self._client
        while True:
            sent_at = c._clock()
            try:
                created, version = await c._set_if_absent(
                    self._key, self._marker(RUNNING), self._claim_ttl_s, None, None, None
                )
            except OutcomeUnknown:
                entry = await c.get_entry(self._key)  # our marker is unique: read back to learn
                created = entry is not None and self._ours(entry.value, RUNNING)
                version = entry.version if entry is not None else 0
            if created:
                self._version = version
                self._valid_until = sent_at + self._claim_ttl_s * (1 - MARGIN_SHARE)
                self._renewer = asyncio.get_running_loop().create_task(
                    self._renew_loop(), name=f"raftstate-once-{self._key}"
                )
                return True
            entry = await c.get_entry(self._key)
            if entry is None:
                continue  # the claim lapsed or was released just now: try to claim it
            if marker_state(entry.value) == DONE:
                return False
            holder = entry.value.get("owner") if isinstance(entry.value, dict) else None
            if wait is not None and wait.remaining() <= 0:
                raise LockHeld(
                    f"once key {self._key!r} is being run by {holder or 'another worker'} "
                    f"(claim expires at {entry.expires_at}); gave up after waiting {self._wait_s:g}s "
                    "— retry later",
                    details={"key": self._key, "owner": holder},
                )
            if not waiter.started:
                await waiter.start()
                continue  # a change between the read and the watch's start: look again now
            await waiter.wait(None if wait is None else wait.remaining())

    # ----------------------------------------------------------------- exit: mark done or release

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._version is None:
            return  # not ours: nothing to do
        await self._stop_renewing()
        c = self._client
        if exc_type is not None:
            # The body failed: delete our claim so a retry can run it (it lapses anyway if this fails).
            try:
                await c.delete(self._key, version=self._version)
            except RaftStateError as err:
                log.warning(
                    "once key %r: could not release the claim (it lapses in %gs): %s",
                    self._key,
                    self._claim_ttl_s,
                    err,
                )
            return
        if self._lost is not None:
            raise self._lost_error()
        try:
            v = await c._compare_and_set(
                self._key, self._marker(DONE), self._version, self._ttl_s, None, None, None
            )
        except OutcomeUnknown:
            entry = await c.get_entry(self._key)
            if entry is not None and self._ours(entry.value, DONE):
                return
            raise
        if v is None:
            self._lost = "the claim was taken over before the body finished"
            raise self._lost_error()

    def _lost_error(self) -> LockLost:
        return LockLost(
            f"once key {self._key!r}: the claim was lost while the body ran ({self._lost}); another worker "
            f"may run the body too — make claim_ttl ({self._claim_ttl_s:g}s) longer than stalls can last",
            details={"key": self._key},
        )

    # ----------------------------------------------------------------- keeping the claim

    async def _stop_renewing(self) -> None:
        # Let a renewal in flight finish: cancelling it would leave the key's version unknown.
        self._stop.set()
        if self._renewer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _renew_loop(self) -> None:
        c = self._client
        assert self._version is not None
        next_at = c._clock() + self._claim_ttl_s * RENEW_SHARE
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), max(0.0, min(next_at, self._valid_until) - c._clock())
                )
            if self._stop.is_set():
                return
            if c._clock() >= self._valid_until:
                self._lost = f"no renewal confirmed for {self._claim_ttl_s * (1 - MARGIN_SHARE):.1f}s"
                return
            sent_at = c._clock()
            try:
                v = await c._compare_and_set(
                    self._key,
                    self._marker(RUNNING),
                    self._version,
                    self._claim_ttl_s,
                    None,
                    None,
                    max(0.01, self._valid_until - sent_at),
                )
            except OutcomeUnknown:
                try:
                    entry = await c.get_entry(self._key)
                except RaftStateError:
                    entry = None
                v = entry.version if entry is not None and self._ours(entry.value, RUNNING) else None
                if v is None and entry is not None:
                    self._lost = "the claim was taken over"
                    return
                if v is None:
                    next_at = c._clock() + 0.1
                    continue
            except ClientClosed:
                self._lost = "the client was closed"
                return
            except RaftStateError as err:
                log.warning("once key %r: claim renewal failed, retrying: %s", self._key, err)
                next_at = c._clock() + min(1.0, self._claim_ttl_s / 10)
                continue
            if v is None:
                self._lost = "the claim was taken over (version changed)"
                return
            self._version = v
            self._valid_until = sent_at + self._claim_ttl_s * (1 - MARGIN_SHARE)
            next_at = sent_at + self._claim_ttl_s * RENEW_SHARE
