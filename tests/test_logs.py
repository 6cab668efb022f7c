"""Every log record is exactly one logfmt line, tracebacks and hostile text included."""
from __future__ import annotations

import io
import logging

from common import logs


def _emit(fn) -> str:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    logs.setup(logging.DEBUG, stream)
    try:
        fn(logging.getLogger("tracker.test"))
    finally:  # give pytest's own handlers back
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    return stream.getvalue()


def test_a_plain_event_is_one_logfmt_line() -> None:
    out = _emit(lambda log: log.info("agent %s registered at %s", "a1", "http://h:1"))
    (line,) = out.splitlines()
    assert line.startswith("ts=") and "Z level=info logger=tracker.test " in line
    assert line.endswith('msg="agent a1 registered at http://h:1"')


def test_a_traceback_is_folded_into_the_line() -> None:
    def boom(log: logging.Logger) -> None:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("locate failed")
    out = _emit(boom)
    assert out.count("\n") == 1, out
    assert 'msg="locate failed" exc="ValueError: bad\\nvalue | Traceback' in out
    assert "raise ValueError" in out


def test_newlines_in_messages_cannot_forge_lines() -> None:
    name = 'x.iso\nts=2026 level=error msg="forged"'
    out = _emit(lambda log: log.warning("cannot hash %s", name))
    assert out.count("\n") == 1
    assert '\\nts=2026 level=error msg=\\"forged\\"' in out


def test_bare_tokens_stay_bare() -> None:
    assert logs.quote("tracker.service") == "tracker.service"
    assert logs.quote("a b") == '"a b"' and logs.quote("") == '""'
