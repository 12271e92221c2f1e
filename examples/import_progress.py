"""Import progress: a worker records how far an import got, a dashboard reads it, and the record is
deleted when the import is done.

    ./scripts/cluster-up.sh                       # in one shell
    .venv/bin/python examples/import_progress.py  # in another (--endpoints URL,URL to override)

A worker that crashes and restarts reads its progress back and resumes where it left off.
"""

from __future__ import annotations

import argparse
import asyncio
import random

from raftstate.client import AsyncClient


async def run_import(state: AsyncClient, import_id: str, total: int) -> None:
    key = f"imports:{import_id}:progress"
    progress = await state.get(key, default={"processed": 0, "total": total})  # resume after a crash
    print(f"import {import_id}: starting at {progress['processed']}/{total}")
    while progress["processed"] < total:
        await asyncio.sleep(0.01)  # ... import one batch of 50 rows ...
        progress = {"processed": min(total, progress["processed"] + 50), "total": total}
        # A TTL so that the record of an abandoned import cleans itself up.
        version = await state.set(key, progress, ttl=24 * 3600)
        print(f"import {import_id}: {progress['processed']}/{total} (version {version})")
    entry = await state.get_entry(key)
    assert entry is not None
    print(f"import {import_id}: done; record expires at {entry.expires_at:%Y-%m-%d %H:%M} UTC unless deleted")
    assert await state.delete(key)
    assert await state.get(key) is None


async def main() -> None:
    args = parse_args()
    async with client(args) as state:
        await run_import(state, str(random.randrange(10_000)), total=500)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cluster.yaml", help="cluster file (default cluster.yaml)")
    parser.add_argument("--endpoints", help="comma-separated node URLs instead of --config")
    return parser.parse_args()


def client(args: argparse.Namespace) -> AsyncClient:
    return AsyncClient(args.endpoints) if args.endpoints else AsyncClient.from_config(args.config)


if __name__ == "__main__":
    asyncio.run(main())
