"""HTTP byte ranges (RFC 9110 §14): parsing Range and Content-Range.

Pure functions that raise ValueError on anything malformed; the agent turns
that into 416, the client into a ProtocolError against the source.
"""
from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The [start, end) a Range header asks of a `size`-byte file.

    Returns None when the header is not a byte range at all (RFC 9110 §14.2:
    a recipient ignores a Range it does not understand and sends 200).
    Raises ValueError when the range is not satisfiable (416).
    Only a single range is served; a multi-range request gets the whole file
    (RFC 9110 §14.2 lets a server ignore Range).
    """
    header = header.strip()
    if not header.startswith("bytes="):
        return None  # other range units: ignore (§14.2)
    if "," in header:
        return None  # multiple ranges: we choose to send the whole file
    m = _RANGE.fullmatch(header.replace(" ", ""))
    if not m:
        raise ValueError(f"malformed Range {header!r}")
    first, last = m.groups()
    if not first:
        if not last:
            raise ValueError("Range with neither first nor last byte")
        n = int(last)
        if n == 0:
            raise ValueError("zero-length suffix range")  # §14.1.3: unsatisfiable
        return max(0, size - n), size  # suffix range: the last n bytes (§14.1.2)
    start = int(first)
    end = size if not last else min(int(last) + 1, size)  # last past EOF is clipped (§14.1.2)
    if last and int(last) < start:
        raise ValueError("Range whose last byte precedes its first")  # invalid (§14.1.1)
    if start >= size:
        raise ValueError("Range starts past the end")  # unsatisfiable (§14.1.2)
    return start, end


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range value for [start, end) of a `size`-byte file."""
    return f"bytes {start}-{end - 1}/{size}"


def parse_content_range(header: str) -> tuple[int, int, int | None]:
    """(start, end, total) from 'bytes a-b/total'; end is exclusive, total None if '*'."""
    m = _CONTENT_RANGE.fullmatch(header.strip())
    if not m:
        raise ValueError(f"malformed Content-Range {header!r}")
    a, b, total = m.groups()
    start, end = int(a), int(b) + 1
    if end <= start:
        raise ValueError(f"empty or reversed Content-Range {header!r}")
    size = None if total == "*" else int(total)
    if size is not None and end > size:
        raise ValueError(f"Content-Range {header!r} runs past its total")
    return start, end, size
