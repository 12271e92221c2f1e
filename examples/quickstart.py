"""The README's client snippet ("Using the client"), as a file that runs.

    .venv/bin/python examples/quickstart.py [--endpoints URL,URL,URL]

With the cluster of ``./scripts/cluster-up.sh`` up (nodes on 127.0.0.1:7001-7003). Every call the
README shows, in the order it shows them; tests/test_edges_quickstart.py runs this file against a
real cluster and checks that the README shows the same lines.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

from raftstate.client import AsyncClient, Client

ENDPOINTS = ["http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003"]


# README: begin
async def main(endpoints: list[str], import_id: int) -> None:
    async with AsyncClient(endpoints) as state:  # or: AsyncClient.from_config("cluster.yaml")
        key = f"imports:{import_id}:progress"
        await state.set(key, {"processed": 100, "total": 500})  # -> int version
        progress = await state.get(key)  # -> the value, or default=None
        entry = await state.get_entry(key)  # -> Entry(value, version, expires_at), or None
        assert entry is not None
        await state.compare_and_set(key, {"processed": 200, "total": 500}, version=entry.version)  # -> bool
        await state.set(
            f"webhooks:stripe:evt_{import_id}",
            {"processed": True},
            expires_at=datetime.now(UTC) + timedelta(days=7),  # or ttl=seconds / a timedelta
        )
        processed = await state.increment(f"imports:{import_id}:processed")  # -> int; by=N
        first = await state.set_if_absent(f"stripe:evt_{import_id}", {"at": time.time()}, ttl=86400)
        async for k in state.keys(prefix=f"imports:{import_id}:"):
            print("key:", k)
        async with state.lock(f"search-index:customer_{import_id}", ttl=10) as lock:  # waits up to timeout=
            # lock.token: the fencing token, increasing per lock name; lock.lost: stop writing
            await state.set(f"search-index:customer_{import_id}:state", {"rebuilt": True}, fence=lock)
        async with state.once(f"charge:evt_{import_id}", ttl=7 * 86400) as first_time:
            if first_time:
                print("charging once")  # the side effect: runs for one caller only
        await state.delete(key)  # -> bool (existed)
        print(f"progress {progress}, processed {processed}, first creator: {first}, token {lock.token}")


def blocking(endpoints: list[str], import_id: int) -> None:
    with Client(endpoints) as state:  # the same API, blocking; share one between threads
        print("processed:", state.increment(f"imports:{import_id}:processed", by=100))


# README: end


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated node URLs")
    args = parser.parse_args()
    endpoints = args.endpoints.split(",")
    import_id = int(time.time())
    asyncio.run(main(endpoints, import_id))
    blocking(endpoints, import_id)


if __name__ == "__main__":
    cli()
