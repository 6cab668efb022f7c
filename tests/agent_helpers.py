"""Shared helpers for the agent tests: polling with generous deadlines, old mtimes."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

OLD = time.time() - 3600


def write(path: os.PathLike[str] | str, data: bytes, mtime: float = OLD) -> None:
    """Write a file and date it an hour back (so it is 'settled' for the inventory)."""
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


async def eventually(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll `check` until truthy; fail after a generous deadline (loaded CI machines)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")
