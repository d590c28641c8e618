"""Test doubles for what cannot be real in a unit test: only the clock."""

from __future__ import annotations

import time


class FakeClock:
    """A clock that moves only when told to, so expiry tests never sleep."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
