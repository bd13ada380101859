"""Rate limits per write key: a token bucket of events, refilled at a steady rate.

Each ingest instance keeps its own buckets, so N instances behind a load balancer allow up to
N times the rate; the limit protects the platform from one runaway sender, it is no billing
meter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, events: int) -> float:
        """Take `events` tokens from `name`'s bucket: 0 when allowed, else the seconds after
        which they would be there (nothing is taken then)."""
        bucket = self._refilled(name)
        wait_s = self._wait(bucket, events)
        if not wait_s:
            bucket.tokens -= events
        return wait_s

    def peek(self, name: str, events: int) -> float:
        """What `take` would answer, taking nothing."""
        return self._wait(self._refilled(name), events)

    def _refilled(self, name: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.setdefault(name, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def _wait(self, bucket: _Bucket, events: int) -> float:
        if events <= bucket.tokens:
            return 0.0
        if events > self.burst:
            return math.inf
        return (events - bucket.tokens) / self.rate
