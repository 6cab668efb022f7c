"""A throwaway redis-server for tests: free loopback port, temp dir, no persistence.

CI installs Debian's `redis-server`; without it the Redis tests fail (not skip)
with a message saying how to install it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

INSTALL_HINT = ("redis-server is not on PATH; the Redis store tests need it "
                "(Debian/Ubuntu: apt-get install -y redis-server; .ci/run installs it)")


@dataclass
class RedisServer:
    """A running redis-server and its redis:// URL (database 0)."""

    port: int
    popen: subprocess.Popen[bytes]
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        """Empty every database (between tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(timeout: float = 20.0) -> RedisServer:
    """Start redis-server on 127.0.0.1 and wait until it accepts connections.

    Raises RuntimeError with INSTALL_HINT if the binary is missing, or with its
    output if it does not come up.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    workdir = tempfile.mkdtemp(prefix="mfetch-redis-")
    for _attempt in range(5):  # the free port may be taken between probe and bind
        port = _free_port()
        with open(os.path.join(workdir, "redis.log"), "wb") as log:
            popen = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", workdir, "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        server = RedisServer(port, popen, workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and popen.poll() is None:
            try:
                server.flush()
                return server
            except OSError:
                time.sleep(0.05)
        if popen.poll() is None:
            popen.kill()
        popen.wait()
    with open(os.path.join(workdir, "redis.log"), errors="replace") as f:
        output = f.read()
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"redis-server did not start:\n{output}")
