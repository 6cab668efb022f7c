"""`tracker serve --workers N`: N tracker processes answering on one port.

One grpc.aio tracker is one Python process, so it uses one core at most. With
--workers N the command starts N copies of itself as worker processes that
bind the same address with SO_REUSEPORT: the kernel spreads incoming
connections over them (a client's calls all go to the worker its connection
landed on). They share the one store, a SQLite file (WAL: readers never wait;
writes take turns on the file's lock) or one Redis, so they give the same answers,
exactly as several trackers on one Redis do.

This process only supervises: it reserves the port (so port 0 names one free port
for all of them), starts the workers, prints one `tracker listening on` line once
all of them listen, passes SIGTERM/SIGINT on and stops all of them if one dies;
a worker whose supervisor is gone (killed with SIGKILL) stops itself within a second.
Worker 0 alone serves the status page and /metrics (one port cannot be shared by
the HTTP servers); its call counters and the recent locates are its own, the store's
gauges are everyone's.

Without --workers the tracker binds with SO_REUSEPORT off, so a second tracker
started on a port in use fails with "address in use" rather than silently sharing.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from common.config import parse_hostport
from common.errors import ConfigError
from tracker.config import TrackerConfig

LISTENING = re.compile(r"^tracker listening on (\S+)")
STOP_GRACE = 10.0  # seconds a worker has to stop before it is killed
SUPERVISOR_ENV = "MFETCH_TRACKER_SUPERVISOR"  # the supervisor's pid, in each worker
WATCH_INTERVAL = 1.0  # how often a worker looks whether its supervisor is still there


def reserve(listen: str) -> tuple[socket.socket, str]:
    """Bind (not listen) a SO_REUSEPORT socket on `listen`: the workers can bind the same
    port, and port 0 becomes one free port for all. Returns it and HOST:PORT."""
    host, port = parse_hostport(listen, "listen address")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on {listen}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {listen} (in use or not a local address?): "
                          f"{e.strerror}") from None
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return sock, f"{shown}:{bound_port}"


def supervise(cfg: TrackerConfig, argv: Sequence[str]) -> int:
    """Run cfg.workers workers of `tracker serve` (its own `argv`, with the reserved
    address) until a signal or a worker's death; returns the exit status."""
    if cfg.db in ("", ":memory:"):
        raise ConfigError("--workers needs a database the workers can share: a file or Redis")
    sock, address = reserve(cfg.listen)
    workers: list[subprocess.Popen[str]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        http_line = ""
        for i in range(cfg.workers):
            extra = ["--listen", address, "--workers", "1", "--worker", str(i)]
            if i:
                extra += ["--http", "off"]
            popen = subprocess.Popen([sys.executable, "-m", "tracker.cli", *argv, *extra],
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, SUPERVISOR_ENV: str(os.getpid())})
            workers.append(popen)
            assert popen.stdout is not None
            for line in popen.stdout:  # until it listens (its logs go to our stderr)
                if LISTENING.match(line):
                    break
            else:
                sys.stderr.write(f"tracker: error: worker {i} exited ({popen.wait()}) "
                                 "before it listened\n")
                return 1
            if i == 0 and cfg.http.strip().lower() not in ("", "off", "none"):
                http_line = popen.stdout.readline()
        sock.close()
        print(f"tracker listening on {address} ({cfg.workers} workers)", flush=True)
        if http_line:
            print(http_line.rstrip("\n"), flush=True)
        while not stopping:
            dead = [i for i, w in enumerate(workers) if w.poll() is not None]
            if dead:
                sys.stderr.write(f"tracker: error: worker {dead[0]} exited "
                                 f"({workers[dead[0]].returncode}); stopping the others\n")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        sock.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _stop_all(workers)


async def watch_supervisor(stop: Callable[[], object]) -> None:
    """In a worker: call `stop` once the supervisor is gone. A supervisor killed with
    SIGKILL cannot stop its workers, which would otherwise serve on unsupervised
    (and keep the port) until someone found them."""
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0") or 0)
    if supervisor <= 0:
        return
    while os.getppid() == supervisor:  # an orphan is adopted by init or a subreaper
        await asyncio.sleep(WATCH_INTERVAL)
    logging.getLogger("tracker").warning("the supervisor (pid %d) is gone: stopping",
                                         supervisor)
    stop()


def _stop_all(workers: list[subprocess.Popen[str]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for w in workers:
        try:
            w.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
        if w.stdout is not None:
            with contextlib.suppress(OSError):
                w.stdout.close()
