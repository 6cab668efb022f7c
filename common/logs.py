"""One event a line: the log format of every mfetch server (logfmt).

Each record is exactly one line on stderr::

    ts=2026-11-21T10:00:00.123Z level=info logger=tracker.service msg="agent a1 registered"

and a record with an exception carries it folded into the same line as
``exc="ValueError: boom | Traceback (most recent call last): | ..."``. Values
with spaces, quotes or control characters are quoted with JSON string escapes,
so a newline in a message (or in a hostile file name logged in one) can never
start a forged second line. Tools that read logfmt (Loki, Vector, `lnav`, `hl`)
split the fields; grep works on the text.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import TextIO

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                  "-_./:@+,%")


def quote(value: str) -> str:
    """`value` bare if it is one plain token, else a JSON string (one line, escaped)."""
    if value and all(c in _SAFE for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


class LineFormatter(logging.Formatter):
    """Formats a record as one logfmt line (ts, level, logger, msg, exc)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={quote(record.name)}", f"msg={quote(record.getMessage())}"]
        if record.exc_info and record.exc_info[0] is not None:
            etype, evalue, tb = record.exc_info
            head = f"{etype.__name__}: {evalue}"
            trace = "".join(traceback.format_exception(etype, evalue, tb)).rstrip()
            parts.append("exc=" + quote(" | ".join([head, *trace.splitlines()])))
        elif record.exc_text:
            parts.append("exc=" + quote(record.exc_text.replace("\n", " | ")))
        if record.stack_info:
            parts.append("stack=" + quote(record.stack_info.replace("\n", " | ")))
        return " ".join(parts)


def setup(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (default stderr) as one logfmt line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
