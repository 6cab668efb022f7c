"""Start the real mfetch commands as subprocesses for tests.

Every server prints one line `... listening on ADDRESS` once it has bound;
`start()` waits for that line and returns the address. Processes are killed
at teardown by the `procs` fixture in conftest.py.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
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
        out = self.popen.stdout
        if self.popen.poll() is not None and out:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not select.select([out], [], [], 0.2)[0]:
                    continue
                line = out.readline()
                if not line:
                    break
                self.lines.append(line)
        return "".join(self.lines)


def start(argv: list[str], timeout: float = 30.0, env: dict[str, str] | None = None) -> Proc:
    """Run argv (stderr merged into stdout) and wait until it prints its address."""
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, **(env or {})},
    )
    proc = Proc(argv, popen)
    deadline = time.monotonic() + timeout
    assert popen.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([popen.stdout], [], [], 0.2)
        if ready:
            line = popen.stdout.readline()
            if not line and popen.poll() is not None:
                break
            proc.lines.append(line)
            m = _LISTENING.search(line)
            if m:
                proc.address = m.group(1)
                _drain(proc)
                return proc
        elif popen.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"{argv[0]} did not start:\n{proc.output()}")


def _drain(proc: Proc) -> None:
    """Keep reading the child's output in the background so its pipe never fills."""
    import threading

    def pump() -> None:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            proc.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()


def run(argv: list[str], timeout: float = 120.0, env: dict[str, str] | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing stdout and stderr separately."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})
