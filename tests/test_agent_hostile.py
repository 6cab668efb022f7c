"""Hostile input against a real agent on 127.0.0.1 (port 0): odd Range headers,
oversized headers, path tricks, special files, and clients that stall.

What each test proves is listed in SECURITY.md.
"""
from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import yarl

import agent.server
from agent.app import RunningAgent, start
from agent.config import AgentConfig
from agent.server import open_served
from tests.agent_helpers import eventually, write

DATA = bytes(range(256)) * 4000  # 1,024,000 bytes
SECRET = b"TOPSECRET outside the served directory"
BIG = 16 * 1024 * 1024  # more than loopback socket buffers hold


@dataclass
class Served:
    agent: RunningAgent
    dir: str
    outside: str
    http: aiohttp.ClientSession

    def url(self, path: str) -> yarl.URL:
        return yarl.URL(self.agent.url + path, encoded=True)  # sent exactly as written


@pytest.fixture
async def served(tmp_path, monkeypatch) -> AsyncIterator[Served]:
    monkeypatch.setattr(agent.server, "KEEPALIVE_TIMEOUT", 1.0)
    monkeypatch.setattr(agent.server, "SEND_STALL_TIMEOUT", 1.0)
    d, outside = tmp_path / "d", tmp_path / "outside"
    d.mkdir()
    outside.mkdir()
    write(outside / "secret.txt", SECRET)
    write(d / "data.bin", DATA)
    write(d / "empty", b"")
    os.link(outside / "secret.txt", d / "hardlink.txt")  # same inode, a name inside DIR
    os.mkfifo(d / "fifo")
    os.symlink("fifo", d / "fifo-alias")
    os.symlink("/dev/zero", d / "zero-link")
    try:
        os.mknod(d / "zero", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # like /dev/zero
    except OSError:
        pass  # no CAP_MKNOD: the device test skips
    # No per-client cap here: these tests send many requests at once from one address
    # (the cap itself is tested in test_limits.py).
    cfg = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                      settle_seconds=0, rescan_seconds=0.2, hash_workers=1,
                      max_client_connections=0)
    running = await start(cfg, report=False)
    await eventually(lambda: running.inventory.entry("data.bin") is not None, what="first scan")
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        yield Served(running, str(d), str(outside), http)
    await running.stop()


async def get(s: Served, path: str, timeout: float = 10, **headers: str
              ) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(timeout):
        async with s.http.get(s.url(path), headers=headers) as r:
            return r.status, dict(r.headers), await r.read()


async def healthy(s: Served) -> None:
    """The agent still answers, promptly, on a fresh connection."""
    async with aiohttp.ClientSession() as fresh:
        async with asyncio.timeout(5):
            async with fresh.get(s.agent.url + "/healthz") as r:
                assert (r.status, await r.read()) == (200, b"ok")


N = len(DATA)


RANGE_CASES = [
    # malformed: 416 with bytes */SIZE
    ("bytes=", 416, None), ("bytes=-", 416, None), ("bytes=a-b", 416, None),
    ("bytes=1-2-3", 416, None), ("bytes=0x10-20", 416, None), ("bytes=٣-٥", 416, None),
    ("bytes=1 0-20", 416, None), ("bytes=-0", 416, None),
    # reversed, or past the end: 416
    ("bytes=10-5", 416, None), (f"bytes={N}-", 416, None),
    ("bytes=" + "9" * 3000 + "-", 416, None),
    # huge but meaningful: clipped to the file, 206
    ("bytes=0-" + "9" * 3000, 206, (0, N)), ("bytes=-" + "9" * 3000, 206, (0, N)),
    ("bytes=100-18446744073709551615", 206, (100, N)),
    # several ranges, overlapping or not, many: the whole file, 200
    ("bytes=0-10,5-15", 200, (0, N)), ("bytes=0-0,-1", 200, (0, N)),
    ("bytes=" + ",".join(["0-1"] * 1500), 200, (0, N)),
    # other units are ignored (200); the unit itself is case-insensitive
    ("items=0-5", 200, (0, N)), ("BYTES=0-9", 206, (0, 10)), ("bytes= 5 - 9", 206, (5, 10)),
]


async def test_range_headers(served: Served) -> None:
    """Malformed -> 416, reversed/past the end -> 416, huge -> clipped 206, multi -> 200."""
    for header, status, span in RANGE_CASES:
        got, h, body = await get(served, "/files/data.bin", Range=header)
        assert got == status, (header[:60], got)
        if status == 416:
            assert h["Content-Range"] == f"bytes */{N}" and DATA[:64] not in body
        else:
            assert span is not None and body == DATA[span[0]:span[1]], header[:60]
        if status == 206:
            assert span is not None
            assert h["Content-Range"] == f"bytes {span[0]}-{span[1] - 1}/{N}"


async def test_suffix_range_of_empty_file_is_200_not_a_broken_206(served: Served) -> None:
    status, h, body = await get(served, "/files/empty", Range="bytes=-5")
    assert (status, body) == (200, b"") and "Content-Range" not in h


async def raw(s: Served, data: bytes, timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", s.agent.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


ABSURD_REQUESTS = [
    b"GET /files/data.bin HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /files/data.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-" + b"9" * 100_000 + b"\r\n\r\n",
    b"GET /files/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /files/data.bin HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n",
    b"GET /files/data.bin HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # TLS to a plain port
    os.urandom(4096),
]


async def test_absurd_requests_are_refused_and_the_agent_stays_up(served: Served) -> None:
    """100 KB header, range, path; 500 headers; NUL in a header; TLS and noise."""
    for request_bytes in ABSURD_REQUESTS:
        response = await raw(served, request_bytes)
        assert status_of(response) in (0, 400, 413, 414, 431), response[:120]
        assert DATA[:64] not in response
        await healthy(served)


TRICK_PATHS = [
    "/files/%252e%252e/outside/secret.txt",   # double-encoded: a literal '%2e%2e' name
    "/files/%c0%ae%c0%ae/outside/secret.txt",  # overlong UTF-8 '.': not '..' to us
    "/files/..%5c..%5coutside%5csecret.txt",   # backslashes are ordinary name bytes
    "/files/%2e%2e%00/x", "/files/data.bin%00.txt", "/files/%00",
    "/files/zero-link", "/files/fifo", "/files/fifo-alias", "/files/zero",
]


async def test_path_tricks_and_special_files_are_404_or_403(served: Served) -> None:
    for path in TRICK_PATHS:
        status, _, body = await get(served, path, timeout=5)
        assert status in (403, 404), (path, status)
        assert SECRET not in body and b"\0" * 64 not in body


async def test_hard_link_to_a_file_outside_dir_is_served(served: Served) -> None:
    """A hard link is a name inside DIR for the same inode: served, by design (SECURITY.md)."""
    status, _, body = await get(served, "/files/hardlink.txt")
    assert (status, body) == (200, SECRET)
    assert served.agent.inventory.entry("hardlink.txt") is not None


async def test_fifo_neither_blocks_nor_is_opened_and_others_are_served(served: Served) -> None:
    t0 = time.monotonic()
    fifo_requests = [get(served, p, timeout=5) for p in ("/files/fifo", "/files/fifo-alias") * 10]
    data_requests = [get(served, "/files/data.bin", timeout=5, Range="bytes=0-99")] * 1
    results = await asyncio.gather(*fifo_requests, *data_requests)
    assert [r[0] for r in results[:-1]] == [404] * 20
    assert results[-1][0] == 206 and results[-1][2] == DATA[:100]
    assert time.monotonic() - t0 < 5


def test_open_served_never_opens_a_fifo_or_device(served: Served) -> None:
    """With a writer-less FIFO a blocking open() would hang forever; stat comes first."""
    for rel in ("fifo", "fifo-alias", "zero"):
        t0 = time.monotonic()
        assert open_served(served.agent.inventory, rel) is None
        assert time.monotonic() - t0 < 1


@pytest.mark.skipif(not hasattr(os, "mknod"), reason="no mknod")
async def test_device_file_inside_dir_is_404(served: Served) -> None:
    if not os.path.exists(os.path.join(served.dir, "zero")):
        pytest.skip("cannot create a device node here (no CAP_MKNOD)")
    status, _, _ = await get(served, "/files/zero", timeout=5)
    assert status == 404
    assert served.agent.inventory.entry("zero") is None


async def test_stalled_half_requests_do_not_block_others_and_are_closed(
        served: Served) -> None:
    """50 connections send half a request line and stall; others are served at once, and
    the stalled ones are closed after KEEPALIVE_TIMEOUT (1 s here, 75 s by default)."""
    stalled = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.agent.port)
        writer.write(b"GET /files/data.bin HT")
        stalled.append((reader, writer))
    await asyncio.gather(*(w.drain() for _, w in stalled))
    t0 = time.monotonic()
    status, _, body = await get(served, "/files/data.bin", timeout=5)
    assert (status, body) == (200, DATA)
    assert time.monotonic() - t0 < 2
    async with asyncio.timeout(15):
        closed = await asyncio.gather(*(r.read() for r, _ in stalled))
    assert all(c == b"" for c in closed), "the server closed every stalled connection"
    for _, w in stalled:
        w.close()
    await healthy(served)


async def test_client_that_stops_reading_is_dropped(served: Served) -> None:
    """A client that asks for 16 MiB and reads nothing holds the server's socket only
    until SEND_STALL_TIMEOUT (1 s here, 60 s by default) after the buffers fill."""
    big = os.path.join(served.dir, "big.bin")
    os.close(os.open(big, os.O_CREAT | os.O_WRONLY))
    os.truncate(big, BIG)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.agent.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(3)  # read nothing: the server's write stalls, then it gives up
    got = 0
    try:
        async with asyncio.timeout(20):
            while chunk := await reader.read(1 << 20):
                got += len(chunk)
    except ConnectionResetError:
        pass
    writer.close()
    assert got < BIG, "the connection was cut, not the whole file sent"
    await healthy(served)
