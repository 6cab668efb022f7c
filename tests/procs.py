"""Start the real mfetch commands as subprocesses for tests.

Every server prints one line `... listening on ADDRESS` once it has bound;
`start()` waits for that line and returns the address. Processes are killed
at teardown by the `procs` fixture in conftest.py.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

BIN = os.path.dirname(sys.executable)
_LISTENING = re.compile(r"listening on (\S+)")


def command(name: str) -> str:
    """Path of an installed console script (tracker, agent, mfetch) in this venv."""
    return os.path.join(BIN, name)


@dataclass
class Proc:
    argv: list[str]
    popen: subprocess.Popen[str]
    address: str = ""
    lines: list[str] = field(default_factory=list)
    # Set once the address is printed or the output ends.
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                # Longer than `tracker serve --workers` gives its workers to stop (10 s,
                # tracker/workers.py): killing it first would orphan them.
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def stop(self) -> int:
        """SIGTERM, wait, return the exit status."""
        self.kill(signal.SIGTERM)
        return self.popen.wait()

    def output(self) -> str:
        """Everything printed so far (after stop/kill: everything). A child it left
        behind may keep the pipe open: then what came within 10 s, not a hang."""
        if self.popen.poll() is not None and self.reader is not None:
            self.reader.join(10)
        return "".join(self.lines)

    def _read(self) -> None:
        """Every line the child prints, as it comes (its pipe never fills)."""
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self.lines.append(line)
                if not self.address and (m := _LISTENING.search(line)):
                    self.address = m.group(1)
                    self.ready.set()
        finally:
            self.ready.set()


def start(argv: list[str], timeout: float = 30.0, env: dict[str, str] | None = None) -> Proc:
    """Run argv (stderr merged into stdout) and wait until it prints its address.

    A thread reads the output: select() on the pipe would not see lines that an
    earlier readline() had already taken into the file's buffer (a server that
    printed its address in the same write as the line before would seem silent).
    """
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        errors="backslashreplace", env={**os.environ, **(env or {})},
    )
    proc = Proc(argv, popen)
    proc.reader = threading.Thread(target=proc._read, daemon=True)
    proc.reader.start()
    deadline = time.monotonic() + timeout
    # (a child it started may hold the pipe open after it exited: look at it too)
    while not proc.ready.wait(0.2) and popen.poll() is None and time.monotonic() < deadline:
        pass
    if not proc.address and popen.poll() is not None:
        proc.reader.join(1)  # it exited: the reader may not have come to its last lines
    if proc.address:
        return proc
    proc.kill()
    raise AssertionError(f"{argv[0]} did not start:\n{proc.output()}")


def run(argv: list[str], timeout: float = 120.0, env: dict[str, str] | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing stdout and stderr separately."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})
