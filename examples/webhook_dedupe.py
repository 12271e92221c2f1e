"""Webhook deduplication: process each Stripe event once, even though Stripe delivers some events
more than once (and retries while we are still processing).

    .venv/bin/python examples/webhook_dedupe.py [--endpoints URL,URL]

Two ways, both keyed by the event id and kept for 7 days (Stripe retries for up to 3 days):

- ``state.once(...)``: the claim/run/mark-done helper. A duplicate delivered while the first is
  still running waits for it (at most ``wait`` seconds) instead of being acknowledged too early; a
  handler that raises releases the claim so Stripe's retry runs it again. If the claimer CRASHES
  mid-body, the claim lapses after ``claim_ttl`` and a later delivery runs the body again — so pass
  the event id as the idempotency key of the side effect too (e.g. Stripe's Idempotency-Key).
- ``state.set_if_absent(...)``: the bare marker. Cheaper (one write), but the marker is set BEFORE
  the work: if the handler then fails or crashes, the event is never processed. Use it only where
  dropping an event is acceptable.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta

from raftstate.client import AsyncClient, LockHeld

SEVEN_DAYS = 7 * 86400


async def fulfil_order(event_id: str) -> None:
    await asyncio.sleep(0.2)  # ... call the payment provider with Idempotency-Key=event_id ...
    print(f"  fulfilled the order of {event_id}")


async def handle_webhook(state: AsyncClient, event_id: str) -> int:
    """Returns the HTTP status the webhook endpoint should answer Stripe with."""
    try:
        async with state.once(f"webhooks:stripe:{event_id}", ttl=SEVEN_DAYS, claim_ttl=30, wait=10) as first:
            if not first:
                print(f"  {event_id}: duplicate delivery, already processed")
                return 200
            await fulfil_order(event_id)
            return 200
    except LockHeld:
        return 409  # still being processed elsewhere: let Stripe retry later


async def mark_only(state: AsyncClient, event_id: str) -> bool:
    """The bare marker: True for the one caller that set it."""
    return await state.set_if_absent(
        f"webhooks:stripe-marker:{event_id}",
        {"processed": True, "at": datetime.now(UTC).isoformat()},
        expires_at=datetime.now(UTC) + timedelta(days=7),
    )


async def main() -> None:
    args = parse_args()
    event_id = f"evt_{datetime.now(UTC):%H%M%S%f}"
    async with client(args) as state:
        print(f"delivering {event_id} three times at once, then once more:")
        statuses = await asyncio.gather(*(handle_webhook(state, event_id) for _ in range(3)))
        statuses.append(await handle_webhook(state, event_id))
        print(f"  answered {statuses}")
        firsts = [await mark_only(state, event_id) for _ in range(2)]
        print(f"set_if_absent marker: first call {firsts[0]}, second call {firsts[1]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cluster.yaml", help="cluster file (default cluster.yaml)")
    parser.add_argument("--endpoints", help="comma-separated node URLs instead of --config")
    return parser.parse_args()


def client(args: argparse.Namespace) -> AsyncClient:
    return AsyncClient(args.endpoints) if args.endpoints else AsyncClient.from_config(args.config)


if __name__ == "__main__":
    asyncio.run(main())
