"""Token bucket per api_key: a client may burst, then is held to a steady rate.

Pure and synchronous: the state is one `Bucket` per key, time is given by the
caller (a monotonic clock in the app, numbers in tests). Only keys that passed
authentication get a bucket, so the table is as large as the configured keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    at: float


def take(bucket: Bucket | None, now: float, rate: float, burst: float) -> tuple[Bucket, float]:
    """Spend one token. Returns the new bucket and 0.0 if allowed, else the
    seconds until a token is available (the bucket is then left as refilled)."""
    if bucket is None:
        bucket = Bucket(burst, now)
    elapsed = max(0.0, now - bucket.at)  # a clock that steps back refills nothing
    tokens = min(burst, bucket.tokens + elapsed * rate)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0.0
    return Bucket(tokens, now), (1.0 - tokens) / rate if rate > 0 else float("inf")


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str, now: float) -> float:
        bucket, wait = take(self._buckets.get(key), now, self.rate, self.burst)
        self._buckets[key] = bucket
        return wait
