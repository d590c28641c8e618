"""Failed-login limits per username and per client address (in memory, per process)."""

from __future__ import annotations

import math
from collections import deque

from cachetools import TTLCache

from gateway.clock import Clock


class FailureLimiter:
    """Sliding window: more than `max_failures` failures inside `window` seconds blocks a key.

    Attempts in flight (between `begin` and `end`) count as failures until they end: a
    burst of concurrent guesses all passed the check before any failed, so the limit
    bounded only the guesses made one after another. Keys are bounded (oldest forgotten
    first) so a flood of distinct usernames cannot grow memory without limit.
    """

    def __init__(self, max_failures: int, window: float, clock: Clock,
                 max_keys: int = 100_000) -> None:
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._failures: TTLCache[str, deque[float]] = TTLCache(
            maxsize=max_keys, ttl=window, timer=clock)
        # Attempts in flight per key; bounded by the password checks that may be pending.
        self._in_flight: dict[str, int] = {}

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until every key may try again, or None when none is blocked."""
        now = self._clock()
        waits = [self._wait(key, now) for key in keys]
        blocked = [w for w in waits if w is not None]
        return max(blocked) if blocked else None

    def _wait(self, key: str, now: float) -> int | None:
        times = self._failures.get(key)
        if times is not None:
            while times and times[0] <= now - self._window:
                times.popleft()
        failures = len(times) if times is not None else 0
        if failures + self._in_flight.get(key, 0) < self._max:
            return None
        if times is None or failures < self._max:
            return 1  # blocked by attempts in flight: they end within a password check
        return max(1, math.ceil(times[0] + self._window - now))

    def begin(self, *keys: str) -> None:
        """An attempt for `keys` starts; it counts as a failure until `end`."""
        for key in keys:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end(self, *keys: str) -> None:
        """The attempt begun for `keys` is over (record its failure separately)."""
        for key in keys:
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def record_failure(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                times = deque(maxlen=self._max)
            times.append(now)
            self._failures[key] = times  # re-set: the key's TTL restarts from this failure

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)
