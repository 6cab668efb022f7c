"""HTTP byte ranges (RFC 9110 §14): parsing Range and Content-Range.

Pure functions that raise ValueError on anything malformed; the agent turns
that into 416, the client into a ProtocolError against the source.

Both parsers take any string (they face the network): digits are ASCII only
(Python's `\\d` and `int()` would also take '٣' or '３'); `int()` never sees
more than MAX_DIGITS significant digits (a longer Range number counts as past
any end, a longer Content-Range number is refused); and a range returned always
obeys 0 <= start < end <= size. tests/test_http_ranges.py checks that for arbitrary
input with hypothesis; tests/fuzz/fuzz_ranges.py does it for as long as you like.
"""
from __future__ import annotations

import re

# 19 significant digits hold any 63-bit size. A longer number in a Range is
# simply past any file's end (int() of thousands of digits is slow, and of more
# than 4300 a ValueError), so it is read as HUGE without int() ever seeing it.
MAX_DIGITS = 19
HUGE = 10**MAX_DIGITS
_OWS = "[ \t]*"  # RFC 9110 §5.6.3 optional whitespace
_RANGE = re.compile(rf"{_OWS}([0-9]*){_OWS}-{_OWS}([0-9]*){_OWS}", re.ASCII)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)", re.ASCII)
_UNSATISFIED = re.compile(r"bytes \*/([0-9]+)", re.ASCII)
_UNIT = re.compile(r"bytes=", re.ASCII | re.IGNORECASE)


def _number(digits: str) -> int:
    """A Range number; anything past MAX_DIGITS significant digits is HUGE."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= MAX_DIGITS else HUGE


def _exact(digits: str) -> int:
    """A Content-Range number, which must be exact."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_DIGITS:
        raise ValueError(f"number {digits[:24]}... has more than {MAX_DIGITS} digits")
    return int(significant or "0")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The [start, end) a Range header asks of a `size`-byte file.

    Returns None when the header is not a single byte range (RFC 9110 §14.2:
    a recipient ignores a Range it does not understand and sends 200), and a
    (start, end) with 0 <= start < end <= size otherwise.
    Raises ValueError when the range is malformed or not satisfiable (416).
    Only a single range is served; a multi-range request (overlapping or not)
    gets the whole file (RFC 9110 §14.2 lets a server ignore Range), so
    thousands of tiny overlapping ranges cost us nothing.
    """
    header = header.strip(" \t")
    if not _UNIT.match(header):
        return None  # other range units: ignore (§14.2); the unit is case-insensitive (§14.1)
    spec = header[len("bytes="):]
    if "," in spec:
        return None  # multiple ranges: we choose to send the whole file
    m = _RANGE.fullmatch(spec)
    if not m:
        raise ValueError(f"malformed Range {header[:80]!r}")
    first, last = m.groups()
    if not first:
        if not last:
            raise ValueError("Range with neither first nor last byte")
        n = _number(last)
        if n == 0:
            raise ValueError("zero-length suffix range")  # §14.1.3: unsatisfiable
        if size == 0:
            # §14.1.1: a non-zero suffix of an empty representation is satisfiable, but
            # no Content-Range can describe zero bytes: send the (empty) whole, 200.
            return None
        return max(0, size - n), size  # suffix range: the last n bytes (§14.1.2)
    start = _number(first)
    if last and _number(last) < start:
        raise ValueError("Range whose last byte precedes its first")  # invalid (§14.1.1)
    if start >= size:
        raise ValueError("Range starts past the end")  # unsatisfiable (§14.1.2)
    end = size if not last else min(_number(last) + 1, size)  # last past EOF is clipped (§14.1.2)
    return start, end


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range value for [start, end) of a `size`-byte file."""
    return f"bytes {start}-{end - 1}/{size}"


def parse_content_range(header: str) -> tuple[int, int, int | None]:
    """(start, end, total) from 'bytes a-b/total'; end is exclusive, total None if '*'.

    Always 0 <= start < end, and end <= total when the total is known.
    Raises ValueError on anything else (including 'bytes */N', which only a 416 carries).
    """
    m = _CONTENT_RANGE.fullmatch(header.strip(" \t"))
    if not m:
        raise ValueError(f"malformed Content-Range {header[:80]!r}")
    a, b, total = m.groups()
    start, end = _exact(a), _exact(b) + 1
    if end <= start:
        raise ValueError(f"empty or reversed Content-Range {header[:80]!r}")
    size = None if total == "*" else _exact(total)
    if size is not None and end > size:
        raise ValueError(f"Content-Range {header[:80]!r} runs past its total")
    return start, end, size


def parse_unsatisfied_range(header: str) -> int:
    """The file's size from a 416's 'bytes */SIZE' (RFC 9110 §14.4).
    Raises ValueError on anything else."""
    m = _UNSATISFIED.fullmatch(header.strip(" \t"))
    if not m:
        raise ValueError(f"malformed unsatisfied Content-Range {header[:80]!r}")
    return _exact(m.group(1))
