"""Fuzz common.http_ranges: parse_range(header, size) must return None or
0 <= start < end <= size, or raise ValueError; parse_content_range must return
0 <= start < end (<= total) or raise ValueError. Nothing else, ever.

    python tests/fuzz/fuzz_ranges.py [SECONDS]     (make fuzz runs it)
"""
from __future__ import annotations

import sys

import _harness

try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from common import http_ranges
else:
    from common import http_ranges

SIZES = [0, 1, 2, 10, 255, 256, 1_000_003, 2**31, 2**63 - 1]


def one_input(data: bytes) -> None:
    d = _harness.Data(data)
    size = d.int(64) % 2**63 if d.int(1) else d.choice(SIZES)
    prefix = d.choice(["bytes=", "", "BYTES=", "bytes= ", "items="])
    header = str(prefix) + d.rest().decode("utf-8", "surrogateescape")
    try:
        got = http_ranges.parse_range(header, size)  # type: ignore[arg-type]
    except ValueError:
        got = None
    if got is not None:
        start, end = got
        assert 0 <= start < end <= size, (header, size, got)  # type: ignore[operator]
        # a satisfiable range must round-trip through the Content-Range we would send
        assert http_ranges.parse_content_range(
            http_ranges.content_range(start, end, size)) == (start, end, size)  # type: ignore[arg-type]
    cr = header.replace("=", " ", 1)
    try:
        a, b, total = http_ranges.parse_content_range(cr)
    except ValueError:
        return
    assert 0 <= a < b and (total is None or b <= total), (cr, a, b, total)


if __name__ == "__main__":
    _harness.run("fuzz_ranges", one_input, atheris is not None)
    sys.exit(0)
