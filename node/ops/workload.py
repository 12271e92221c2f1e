"""A client workload for cluster tests and scripts: one thread of increments through the real
client library (exactly-once sessions), measuring what an operator cares about during a change."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from raftstate.client import Client


class Workload:
    def __init__(self, endpoints: list[str], key: str, client: Client | None = None) -> None:
        """``client``: one already configured (token, TLS); default plain http to ``endpoints``."""
        self.client = client or Client([f"http://{e}" for e in endpoints], timeout=30)
        self.key = key
        self.acked = 0
        self.failed: list[str] = []
        self.longest_stall_s = 0.0
        self.worst_latency_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_ack = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.client.increment(self.key)
            except Exception as exc:
                self.failed.append(repr(exc))
                continue
            now = time.monotonic()
            self.acked += 1
            self.worst_latency_s = max(self.worst_latency_s, now - t0)
            self.longest_stall_s = max(self.longest_stall_s, now - last_ack)
            last_ack = now
            time.sleep(0.002)

    @contextlib.contextmanager
    def running(self) -> Iterator[Workload]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)
