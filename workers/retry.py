"""Exponential backoff with jitter for outbox deliveries."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempt n (1-based) waits between half and all of min(cap, base * 2**(n-1)) seconds.

    "Equal jitter" rather than full jitter: a thousand writes that failed together spread out over
    the window instead of retrying in lockstep, yet never retry at once (full jitter can draw ~0 s and
    hammer a destination that has just come back).
    """

    base_s: float = 0.5
    cap_s: float = 60.0
    max_attempts: int = 12

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.max_attempts < 1:
            raise ValueError("need 0 < base_s <= cap_s and max_attempts >= 1")

    def delay_s(self, attempts: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, attempts - 1))
        return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
