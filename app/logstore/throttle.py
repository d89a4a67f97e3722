"""Throttle: say a repeated problem once per interval, not once per occurrence."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class Throttle:
    """Answer True at most once per interval_s (thread-safe)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Create a throttle that is ready right away."""
        self._interval_s = interval_s
        self._clock = clock
        self._next = -math.inf
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Return True if the interval has passed since the last True, and start a new interval."""
        with self._lock:
            now = self._clock()
            if now < self._next:
                return False
            self._next = now + self._interval_s
            return True
