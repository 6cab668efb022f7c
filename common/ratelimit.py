"""Byte rate limits: curl-style rates ("500K", "2M") and one token bucket to share.

The bucket is pure bookkeeping with an injected clock: :meth:`TokenBucket.reserve`
books `n` bytes and says how long the caller must wait before sending (or
handing on) them. Callers book in turn, so waits come out in order (first
come, first served) without a lock, and any number of connections sharing
one bucket together stay under its rate.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable

from common.errors import ConfigError

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_rate(text: str | float, what: str = "rate") -> int:
    """Bytes per second from '500K', '2M', '1G' or a plain number (as curl's --limit-rate:
    K, M, G are powers of 1024). 0 or '' means no limit. Raises ConfigError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"bad {what} {text!r}: must not be negative")
        return int(text)
    m = _RATE.fullmatch(str(text))
    if str(text).strip() == "":
        return 0
    if not m:
        raise ConfigError(f"bad {what} {text!r}: expected bytes per second like 500K, 2M or 1G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class TokenBucket:
    """At most `rate` bytes/s on average, with bursts of at most `burst` bytes.

    Tokens may go negative (a debt): a caller that books more than is there
    waits until the debt is paid off, and the next caller waits behind it.
    """

    def __init__(self, rate: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        # A small burst keeps the rate honest over short windows (~50 ms of it).
        self.burst = float(burst) if burst is not None else max(4096.0, self.rate / 20)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()

    @property
    def slice(self) -> int:
        """A good size to book at a time: ~50 ms of the rate, 1 KiB to 256 KiB."""
        return int(min(256 * 1024, max(1024, self.rate / 20)))

    def reserve(self, n: int) -> float:
        """Book `n` bytes; returns the seconds to wait before using them (0: at once)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0
