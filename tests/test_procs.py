"""The test harness's own process starter (tests/procs.py)."""
from __future__ import annotations

import sys

from tests import procs


def test_an_address_printed_in_one_write_with_the_line_before_is_seen():
    # One write, two lines, then silence: the address line must not sit unseen in
    # the pipe reader's buffer until the start-up timeout.
    script = ("import sys, time; sys.stdout.write('starting\\nlistening on 127.0.0.1:1\\n');"
              " sys.stdout.flush(); time.sleep(30)")
    proc = procs.start([sys.executable, "-c", script], timeout=5)
    try:
        assert proc.address == "127.0.0.1:1"
    finally:
        proc.kill()
    assert proc.output() == "starting\nlistening on 127.0.0.1:1\n"
