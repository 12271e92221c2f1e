"""One-owner index rebuild under a short-TTL lock, with fenced writes.

    .venv/bin/python examples/index_rebuild_lock.py [--customer 42] [--endpoints URL,URL]
    (run two at once: one rebuilds, the other waits and then finds the index fresh)

The lock lease is short (10 s) and renewed in the background every ttl/3, so a crashed owner
blocks others for at most 10 s. Every state write passes ``fence=lock``: if this process is paused
(GC, SIGSTOP, a slow disk) past its lease and another worker takes over, the cluster refuses our
late writes (LockLost) instead of letting two owners interleave. Long work checks ``lock.lost``
between steps and stops as soon as it is set.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from raftstate.client import AsyncClient, LockHeld, LockLost


async def rebuild(state: AsyncClient, customer: str) -> None:
    name = f"search-index:customer_{customer}"
    try:
        async with state.lock(name, ttl=10, timeout=30) as lock:
            print(f"holding {name} with fencing token {lock.token}")
            status = await state.get(f"{name}:state")
            if status and time.time() - status.get("built_at", 0) < 60:
                print(f"index is fresh (built by token {status['token']}); nothing to do")
                return
            await state.set(f"{name}:state", {"phase": "rebuilding", "token": lock.token}, fence=lock)
            for shard in range(5):
                if lock.lost:  # the lease is (or may be) gone: stop touching the index
                    print(f"lost the lock ({lock.lost_reason}); stopping at shard {shard}")
                    return
                await asyncio.sleep(0.5)  # ... rebuild one shard ...
                await state.set(f"{name}:shard:{shard}", {"token": lock.token, "docs": 1000}, fence=lock)
                print(f"  shard {shard} rebuilt")
            done = {"phase": "done", "token": lock.token, "built_at": time.time()}
            await state.set(f"{name}:state", done, fence=lock)
            print("rebuild complete")
    except LockHeld as exc:
        print(f"another worker is rebuilding: {exc}")
    except LockLost as exc:
        print(f"the lock was lost; our later writes were refused: {exc}")


async def main() -> None:
    args = parse_args()
    state = AsyncClient(args.endpoints) if args.endpoints else AsyncClient.from_config(args.config)
    async with state:
        await rebuild(state, args.customer)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customer", default="42")
    parser.add_argument("--config", default="cluster.yaml", help="cluster file (default cluster.yaml)")
    parser.add_argument("--endpoints", help="comma-separated node URLs instead of --config")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main())
