"""Rate limits for what a guest can make us log.

A guest decides how often it writes port 0xE9, calls console_io, writes the hypercall
MSR or touches an unclaimed port: each may become a log line, so each goes through a
token bucket. This is Xen's printk rate limit (xen/drivers/char/console.c,
`__printk_ratelimit()`): `burst` lines at once, then one per 1/`rate` seconds; when a
line gets through after some were dropped, the count of dropped lines is reported first
("printk: N messages suppressed.").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimit:
    """A token bucket of `burst` lines refilled at `rate` lines per second; thread-safe
    (vCPU threads share one)."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._last = clock()
        self._missed = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """None: drop this line. Otherwise it may go, and the number is how many lines
        were dropped since the last one that went (to be reported before it)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1:
                self._missed += 1
                return None
            self._tokens -= 1
            missed, self._missed = self._missed, 0
            return missed


# Xen's own limit (console.c): printk_ratelimit_burst = 10 messages, then one every
# printk_ratelimit_ms = 5000 ms.
XEN_BURST = 10
XEN_RATE = 1 / 5


class LimitedLog:
    """One source's lines to a logger through its own RateLimit (Xen's limit unless
    told), a dropped run reported as "N messages suppressed" as Xen's printk does."""

    def __init__(self, logger: logging.Logger, rate: float = XEN_RATE, burst: int = XEN_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.limit = RateLimit(rate, burst, clock)

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        missed = self.limit.take()
        if missed is None:
            return
        if missed:
            self.logger.log(level, "%d messages suppressed", missed)
        self.logger.log(level, msg, *args, exc_info=exc_info)
