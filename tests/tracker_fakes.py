"""Helpers shared by the tracker tests: a settable clock and made-up identities."""
from __future__ import annotations

import hashlib

from common.identity import Identity, piece_size_for


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ident(seed: str, size: int = 1000) -> Identity:
    """A well-formed identity (right piece size) for made-up content `seed`."""
    return Identity(size, hashlib.sha256(seed.encode()).digest(), piece_size_for(size),
                    hashlib.sha256(b"root:" + seed.encode()).digest())
