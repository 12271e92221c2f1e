#!/usr/bin/env python3
"""The marker bench's load generator: webhook dedupe markers written through the client library
(``raftstate.client.AsyncClient``, one client shared by every task), in a process of its own so
that the bench measuring the nodes' /proc does not share a core with it.

    python -m raftstate.node.bench.marker_load fill --endpoints URL,... --keys N --step S \
        --concurrency 64 [--ttl SECONDS | --expires-at EPOCH]
    python -m raftstate.node.bench.marker_load steady --endpoints URL,... --rate 200 [--pool K]

``fill`` writes N new random keys ``webhooks:<provider>:evt_<16 hex>`` from ``--concurrency``
tasks and prints one JSON line per ``--step`` acknowledged keys (keys so far, puts/s, p50/p99 of
that step, errors), then a last line ``{"done": true, ...}``. ``--max-seconds`` stops it early
(a shorter last row, and ``"stopped": true``).

``steady`` sends ``--rate`` puts/s (open loop: a put is sent at its scheduled time whether or not
the earlier ones were answered) until its stdin closes, then prints one JSON line with every
answered put as ``[sent, latency_s]`` (sent: CLOCK_MONOTONIC, system-wide on Linux, so the parent
lines them up with its own phase times) and the errors. New random markers by default; with
``--pool K`` it first writes K markers ``webhooks:steady:evt_<i>`` once, prints ``{"ready": true}``,
then overwrites those (the key count stays flat: the expiry storm counts keys to see the sweep end).
Without a pool it prints ``{"ready": true}`` at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from typing import Any

from raftstate.client import AsyncClient
from raftstate.client.errors import RaftStateError
from raftstate.node.bench.loadgen import percentiles

PROVIDERS = ("stripe", "github", "shopify", "twilio", "slack")
#: ~7 days: how long a webhook dedupe marker is kept
WEEK_S = 7 * 86400
#: the fill gives up when nothing was acknowledged for this long
STALL_S = 120.0


def marker_key(rng: random.Random) -> str:
    return f"webhooks:{rng.choice(PROVIDERS)}:evt_{rng.getrandbits(64):016x}"


def marker_value(nbytes: int) -> str:
    """A small value of about ``nbytes`` encoded bytes (msgpack adds 1-2 to a string)."""
    head = '{"status":"processed","attempt":1}'
    return (head + "." * nbytes)[: max(1, nbytes - 2)]


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _expiry(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(ttl, expires_at): one of them set."""
    return (None, args.expires_at) if args.expires_at else (float(args.ttl), None)


async def fill(args: argparse.Namespace) -> int:
    value = marker_value(args.value_bytes)
    ttl, expires_at = _expiry(args)
    claimed = acked = 0
    errors: dict[str, int] = {}
    lat: list[float] = []
    t_start = step_t0 = last_ack = time.monotonic()
    stop_at = t_start + args.max_seconds if args.max_seconds else float("inf")

    def end_step(now: float) -> None:
        nonlocal lat, step_t0
        elapsed = max(1e-9, now - step_t0)
        q = percentiles(lat)
        emit(
            {
                "keys": acked,
                "step_keys": len(lat),
                "elapsed_s": elapsed,
                "puts_per_s": len(lat) / elapsed,
                "p50_ms": q["p50"],
                "p99_ms": q["p99"],
                "errors": dict(errors),
            }
        )
        lat, step_t0 = [], now

    async with AsyncClient(args.endpoints.split(","), timeout=args.op_timeout) as client:

        async def worker(i: int) -> None:
            nonlocal claimed, acked, last_ack
            rng = random.Random(f"{args.seed}-{i}")
            while claimed < args.keys and time.monotonic() < stop_at:
                claimed += 1
                key = marker_key(rng)
                t0 = time.monotonic()
                try:
                    await client.set(key, value, ttl=ttl, expires_at=expires_at)
                except RaftStateError as exc:
                    claimed -= 1  # another key takes its place
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    if time.monotonic() - last_ack > STALL_S:
                        raise RuntimeError(
                            f"nothing acknowledged for {STALL_S:.0f} s; errors {errors}"
                        ) from exc
                    await asyncio.sleep(0.05)
                    continue
                last_ack = t1 = time.monotonic()
                acked += 1
                lat.append(t1 - t0)
                if acked % args.step == 0 or acked == args.keys:
                    end_step(t1)

        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    if lat:  # stopped by --max-seconds inside a step: the keys acknowledged since the last row
        end_step(time.monotonic())
    total = time.monotonic() - t_start
    emit({"done": True, "keys": acked, "elapsed_s": total, "errors": errors, "stopped": acked < args.keys})
    return 0


async def steady(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:  # the parent closes our stdin (or dies): stop
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    value = marker_value(args.value_bytes)
    ttl, expires_at = _expiry(args)
    rng = random.Random(f"{args.seed}-steady")
    samples: list[tuple[float, float]] = []
    errors: dict[str, int] = {}
    dropped = 0
    inflight: set[asyncio.Task[None]] = set()
    pool = [f"webhooks:steady:evt_{i:016x}" for i in range(args.pool)]

    async with AsyncClient(args.endpoints.split(","), timeout=args.op_timeout) as client:

        async def put(key: str, t0: float) -> None:
            try:
                await client.set(key, value, ttl=ttl, expires_at=expires_at)
            except RaftStateError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            samples.append((t0, time.monotonic() - t0))

        for i in range(0, len(pool), 64):  # the pool exists before the parent counts keys
            await asyncio.gather(*(put(k, time.monotonic()) for k in pool[i : i + 64]))
        samples.clear()
        emit({"ready": True, "pool": len(pool), "errors": dict(errors)})
        period = 1.0 / args.rate
        t_next = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now < t_next:
                try:
                    await asyncio.wait_for(stop.wait(), t_next - now)
                except TimeoutError:
                    pass
                continue
            t_next += period
            if len(inflight) >= args.max_inflight:
                dropped += 1  # the cluster is not answering: count, do not pile up without bound
                continue
            key = rng.choice(pool) if pool else marker_key(rng)
            task = asyncio.create_task(put(key, now))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(inflight, timeout=args.op_timeout + 1)
    emit({"samples": samples, "errors": errors, "dropped": dropped})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fill", "steady"])
    ap.add_argument("--endpoints", required=True, help="comma-separated base URLs")
    ap.add_argument("--keys", type=int, default=0, help="fill: how many new markers")
    ap.add_argument("--step", type=int, default=500_000, help="fill: one line per this many keys")
    ap.add_argument("--concurrency", type=int, default=64, help="fill: concurrent tasks")
    ap.add_argument("--max-seconds", type=float, help="fill: stop sending after this long (a last row)")
    ap.add_argument("--rate", type=float, default=200.0, help="steady: puts per second")
    ap.add_argument("--pool", type=int, default=0, help="steady: overwrite this many fixed markers")
    ap.add_argument("--max-inflight", type=int, default=2000, help="steady: unanswered puts at most")
    ap.add_argument("--value-bytes", type=int, default=60)
    ap.add_argument("--ttl", type=float, default=WEEK_S, help="seconds (default 7 days)")
    ap.add_argument("--expires-at", type=float, help="epoch seconds, instead of --ttl")
    ap.add_argument("--op-timeout", type=float, default=10.0, help="the client's deadline per put")
    ap.add_argument("--seed", default="m", help="names this run's keys (each run its own)")
    args = ap.parse_args()
    run = fill if args.mode == "fill" else steady
    try:
        import uvloop  # optional: the load generator should not be the bottleneck
    except ImportError:
        return asyncio.run(run(args))
    return int(uvloop.run(run(args)))


if __name__ == "__main__":
    sys.exit(main())
