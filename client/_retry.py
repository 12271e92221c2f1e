"""Deadlines and jittered backoff: the two clocks every retry loop of the client runs on.

Time and randomness are injected (a ``clock`` returning monotonic seconds, a seeded ``random.Random``)
so tests can replay a schedule.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(slots=True)
class Deadline:
    """An absolute point on a monotonic clock by which a call must end."""

    at: float  #: monotonic seconds
    clock: Clock = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        assert seconds >= 0, seconds
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left (0 once expired, never negative)."""
        return max(0.0, self.at - self.clock())

    @property
    def expired(self) -> bool:
        return self.clock() >= self.at


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": each delay is uniform in [d/2, d], where d doubles
    from ``base_s`` up to ``cap_s``. Half of d is kept so that retries never spin; the other half is
    random so that many clients retrying after one failover spread out instead of arriving together.
    """

    rng: random.Random
    base_s: float = 0.025
    cap_s: float = 1.0
    attempt: int = field(default=0)

    def __post_init__(self) -> None:
        assert 0 < self.base_s <= self.cap_s, (self.base_s, self.cap_s)

    def next_delay(self) -> float:
        d = min(self.cap_s, self.base_s * (1 << min(self.attempt, 30)))
        self.attempt += 1
        return d / 2 + self.rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0
