"""The clock every time-dependent part takes as a dependency, so tests never sleep."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
"""Returns the current Unix time in seconds, with sub-second precision."""
