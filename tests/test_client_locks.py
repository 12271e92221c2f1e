"""Locks: leases with fencing tokens, renewed in the background; ``lost`` as soon as the cluster
says so or the lease may have run out (RAFT-PITFALLS: "A holder paused past its TTL comes back to
find its fenced writes refused")."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from fake_cluster import FakeCluster
from raftstate.client import AsyncClient, LockHeld, LockLost
from raftstate.node.state.commands import AcquireLock


def client(fc: FakeCluster, **kw: object) -> AsyncClient:
    return AsyncClient(fc.endpoints, transport=fc.transport(), rng=random.Random(5), **kw)  # type: ignore[arg-type]


async def test_lock_is_renewed_in_the_background_past_its_ttl() -> None:
    fc = FakeCluster()
    async with client(fc, owner="w1") as state:
        async with state.lock("idx", ttl=0.6) as lock:
            assert lock.token > 0 and lock.owner == "w1" and not lock.lost
            await asyncio.sleep(1.5)  # 2.5 ttls
            assert not lock.lost
            info = await state.lock_info("idx")
            assert info is not None and info.token == lock.token and info.owner == "w1"
            await state.set("idx:state", "built", fence=lock)
        assert await state.lock_info("idx") is None  # released at exit
    renewals = fc.requests("/v1/locks/idx/renew")
    assert 4 <= len(renewals) <= 8, len(renewals)  # every ttl/3
    assert all(r.body == {"token": lock.token, "ttl": 0.6} for _, r in renewals)


async def test_lock_waits_for_the_holder_then_gets_a_higher_token() -> None:
    fc = FakeCluster()
    async with client(fc, owner="a") as a, client(fc, owner="b") as b:
        async with a.lock("job", ttl=5) as la:
            waiter = asyncio.create_task(b.lock("job", ttl=5, timeout=3).__aenter__())
            await asyncio.sleep(0.3)
            assert not waiter.done()
        lb = await asyncio.wait_for(waiter, 2)
        assert lb.token > la.token and lb.owner == "b"
        await lb.release()


async def test_lock_wait_timeout_raises_lock_held_naming_the_holder() -> None:
    fc = FakeCluster()
    async with client(fc, owner="holder-1") as a, client(fc) as b:
        async with a.lock("job", ttl=5):
            t0 = time.monotonic()
            with pytest.raises(LockHeld) as err:
                async with b.lock("job", timeout=0.3):
                    pass
            assert 0.25 < time.monotonic() - t0 < 1.0
    assert err.value.owner == "holder-1" and "holder-1" in str(err.value) and "'job'" in str(err.value)
    assert "0.3s" in str(err.value)


async def test_cluster_saying_lock_lost_sets_lost_and_exit_raises() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        with pytest.raises(LockLost) as err:
            async with state.lock("job", ttl=0.6) as lock:
                # The lease is gone and someone else holds the lock (say our process was paused).
                fc.locks.pop("job")
                fc.commit(AcquireLock("job", "other", 10_000))
                await asyncio.wait_for(lock.wait_lost(), 1.0)
                assert lock.lost and "cluster" in (lock.lost_reason or "")
                with pytest.raises(LockLost):  # refused locally: the holder was told to stop
                    await state.set("k", 1, fence=lock)
        assert "'job'" in str(err.value) and str(lock.token) in str(err.value)
        assert "k" not in fc.kv
        assert fc.locks["job"].owner == "other"  # our release did not touch the new holder's lock


async def test_renewals_failing_past_the_lease_mark_the_lock_lost() -> None:
    """Be conservative: with no renewal confirmed for ttl minus the margin, the lease may be gone."""
    fc = FakeCluster()
    async with client(fc, timeout=0.5) as state:
        with pytest.raises(LockLost):
            async with state.lock("job", ttl=1.0) as lock:
                t0 = time.monotonic()
                fc.down.update(fc.ids)
                await asyncio.wait_for(lock.wait_lost(), 2.0)
                lost_after = time.monotonic() - t0
                assert lock.lost and "no renewal confirmed" in (lock.lost_reason or "")
        assert 0.6 < lost_after <= 0.85, lost_after  # ttl - 20% margin, counted from the last send


async def test_lock_is_kept_through_a_leader_change() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        async with state.lock("job", ttl=0.6) as lock:
            await asyncio.sleep(0.3)
            fc.elect("n2")
            fc.down.add("n1")
            await asyncio.sleep(1.0)
            assert not lock.lost
            await state.set("k", 1, fence=lock)
    assert {n for n, _ in fc.requests("/v1/locks/job/renew")} >= {"n2"}


async def test_body_exception_releases_the_lock_and_propagates() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        with pytest.raises(ZeroDivisionError):
            async with state.lock("job", ttl=5):
                raise ZeroDivisionError
        assert await state.lock_info("job") is None


async def test_fenced_write_with_a_stale_token_is_refused_by_the_cluster() -> None:
    fc = FakeCluster()
    async with client(fc) as state:
        old = await state.acquire_lock("job", ttl=5)
        assert await state.release_lock("job", old.token)
        new = await state.acquire_lock("job", ttl=5)
        assert new.token > old.token
        with pytest.raises(LockLost) as err:
            await state.set("k", 1, fence=old)
        assert "'job'" in str(err.value)
        await state.set("k", 1, fence=new)


async def test_explicit_lock_calls() -> None:
    fc = FakeCluster()
    async with client(fc, owner="me") as state:
        lease = await state.acquire_lock("job", ttl=5)
        with pytest.raises(LockHeld):
            await state.acquire_lock("job", ttl=5)
        assert lease.expires_at is not None
        new_end = await state.renew_lock("job", lease.token, ttl=20)
        assert new_end is not None and new_end > lease.expires_at
        info = await state.lock_info("job")
        assert info is not None and (info.owner, info.token) == ("me", lease.token)
        assert await state.release_lock("job", lease.token) is True
        assert await state.release_lock("job", lease.token) is False
        with pytest.raises(LockLost):
            await state.renew_lock("job", lease.token)


async def test_a_waiter_is_woken_by_the_release_event_not_by_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake serves watches with the node's own hub: with the safety poll made too slow to
    matter, the waiter still takes the lock at once after the release — and sent two acquires."""
    monkeypatch.setattr("raftstate.client._waiter.SAFETY_POLL_S", 60.0)
    fc = FakeCluster()
    async with client(fc, owner="a") as a, client(fc, owner="b") as b:
        la = await a.lock("job", ttl=30).__aenter__()
        waiter = asyncio.create_task(b.lock("job", ttl=30, timeout=20).__aenter__())
        await asyncio.sleep(1.0)
        assert not waiter.done()
        await la.release()
        lb = await asyncio.wait_for(waiter, 5)
        assert lb.token > la.token
        await lb.release()
    acquires = [r for n, r in fc.log if r.op.name == "lock_acquire" and r.body.get("owner") == "b"]
    assert len(acquires) == 3  # refused, refused right after the watch began, granted on the event
