"""A processed-rows counter shared by several workers, published every 100 rows.

    .venv/bin/python examples/processed_counter.py [--workers 4] [--rows 1000] [--endpoints URL,URL]

Each worker counts rows locally and adds them to the shared counter in batches of 100 (one write
per batch, not per row). ``increment`` is exactly-once even when retried across a leader failover,
so the total is right: kill -9 the leader while this runs and it still ends at workers x rows.
This example uses the blocking ``Client`` from threads; it is the same API as AsyncClient.
"""

from __future__ import annotations

import argparse
import threading
import time

from raftstate.client import Client, OutcomeUnknown

BATCH = 100


def worker(state: Client, key: str, rows: int, name: str) -> None:
    pending = 0
    for _ in range(rows):
        time.sleep(0.0005)  # ... process one row ...
        pending += 1
        if pending == BATCH:
            try:
                total = state.increment(key, by=pending)
            except OutcomeUnknown as exc:
                # Only when the cluster could not answer for the whole timeout. Retrying could count
                # the batch twice: record it for reconciliation instead.
                print(f"{name}: batch outcome unknown ({exc}); NOT retrying")
            else:
                print(f"{name}: published {pending} rows, total now {total}")
            pending = 0
    if pending:
        state.increment(key, by=pending)


def main() -> None:
    args = parse_args()
    key = f"imports:{int(time.time())}:processed"
    state = Client(args.endpoints) if args.endpoints else Client.from_config(args.config)
    with state:
        threads = [
            threading.Thread(target=worker, args=(state, key, args.rows, f"worker-{i}"))
            for i in range(args.workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{key} = {state.get(key)} (expected {args.workers * args.rows})")
        state.delete(key)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--config", default="cluster.yaml", help="cluster file (default cluster.yaml)")
    parser.add_argument("--endpoints", help="comma-separated node URLs instead of --config")
    return parser.parse_args()


if __name__ == "__main__":
    main()
