"""Injectable time, so roll, retention and flush policies are testable without sleeping."""

from __future__ import annotations

import time
from typing import Protocol

_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


class Clock(Protocol):
    def time_ms(self) -> int:
        """Wall-clock milliseconds since the epoch: batch timestamps, segment age, retention."""

    def monotonic_ms(self) -> int:
        """Milliseconds that never go backwards: intervals such as flush_ms."""


class SystemClock:
    """The real clocks. Stateless, so one instance can be shared (and used as a default argument)."""

    __slots__ = ()

    def time_ms(self) -> int:
        return _time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return _monotonic_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when a test says so; both readings advance together."""

    __slots__ = ("_time_ms", "_monotonic_ms")

    def __init__(self, time_ms: int = 1_700_000_000_000, monotonic_ms: int = 0):
        self._time_ms = time_ms
        self._monotonic_ms = monotonic_ms

    def time_ms(self) -> int:
        return self._time_ms

    def monotonic_ms(self) -> int:
        return self._monotonic_ms

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError(f"a manual clock only moves forward, got advance({ms})")
        self._time_ms += ms
        self._monotonic_ms += ms

    def set_time_ms(self, time_ms: int) -> None:
        """Step the wall clock (it may go backwards, as NTP can); the monotonic clock is untouched."""
        self._time_ms = time_ms
