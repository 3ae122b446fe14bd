"""Retrying after a failure: exponential backoff with full jitter (edge MQTT and BLE)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in
    [0, min(cap, base * 2**n)], so many gateways that lost the same broker do not all come
    back at the same moment (AWS Architecture Blog, "Exponential Backoff and Jitter")."""

    def __init__(self, base: float = 0.5, cap: float = 60.0,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base, self.cap = base, cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt may get."""
        return min(self.cap, self.base * 2 ** min(self.attempts, 64))

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        delay = self._rng.uniform(0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts from `base` again."""
        self.attempts = 0
