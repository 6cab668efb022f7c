"""Run a fuzz target `one_input(data: bytes)` for a number of seconds.

With atheris (`pip install atheris`): coverage-guided libFuzzer, the target's
modules instrumented. Without it: hypothesis feeding random bytes, as many
examples as fit in the time. Either way a crash (an exception escaping the
target) stops the run with the input that caused it and exit status 1.

Usage: python tests/fuzz/fuzz_X.py [SECONDS]   (default: $FUZZ_SECONDS or 120)
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable


class Data:
    """Structured values drawn from fuzz bytes (like atheris.FuzzedDataProvider,
    but the same under hypothesis)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def bytes(self, n: int) -> bytes:
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def int(self, bits: int) -> int:
        return int.from_bytes(self.bytes((bits + 7) // 8).ljust((bits + 7) // 8, b"\0"), "big") \
            & ((1 << bits) - 1)

    def choice(self, options: list) -> object:  # type: ignore[type-arg]
        return options[self.int(8) % len(options)]

    def blob(self, limit: int = 64) -> bytes:
        return self.bytes(self.int(16) % (limit + 1))

    def text(self, limit: int = 64) -> str:
        return self.blob(limit * 2).decode("utf-8", "replace")

    def rest(self) -> bytes:
        return self.bytes(len(self._data))


def seconds() -> int:
    if len(sys.argv) > 1 and sys.argv[1].isdigit():
        return int(sys.argv[1])
    return int(os.environ.get("FUZZ_SECONDS", "120"))


def run(name: str, one_input: Callable[[bytes], None], use_atheris: bool) -> None:
    secs = seconds()
    if use_atheris:
        import atheris

        print(f"{name}: atheris (libFuzzer) for {secs} s", flush=True)
        atheris.Setup([sys.argv[0], f"-max_total_time={secs}", "-print_final_stats=1",
                       "-rss_limit_mb=4096"], one_input)
        atheris.Fuzz()
        return
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    print(f"{name}: atheris not installed; hypothesis random bytes for {secs} s", flush=True)
    deadline = time.monotonic() + secs
    count = 0

    @settings(max_examples=10**9, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(st.binary(max_size=4096))
    def loop(data: bytes) -> None:
        nonlocal count
        if time.monotonic() > deadline:
            raise _TimeUp
        count += 1
        one_input(data)

    try:
        loop()
    except _TimeUp:
        pass
    print(f"{name}: {count} inputs in {secs} s, no crash", flush=True)


class _TimeUp(Exception):
    pass
