"""The agent's HTTP side on a real aiohttp server on 127.0.0.1, port 0."""
from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDict

from agent.app import RunningAgent, start
from agent.config import AgentConfig
from common import agent_api
from common.identity import hash_file
from tests.agent_helpers import eventually, write

DATA = os.urandom(1_000_003)  # 4 pieces of 256 KiB, an odd size
SECRET = b"TOPSECRET outside the served directory"


@dataclass
class Served:
    agent: RunningAgent
    dir: str
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return self.agent.url + path


@pytest.fixture
async def served(tmp_path) -> AsyncIterator[Served]:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "secret.txt", SECRET)
    write(outside / "passwd", SECRET)
    write(d / "data.bin", DATA)
    write(d / "sub" / "small.txt", b"hello\n")
    write(d / "empty", b"")
    write(d / "x.part", b"partial")
    write(d / ".hidden", b"hidden")
    os.symlink(outside / "secret.txt", d / "leak.txt")
    os.symlink(outside, d / "leakdir")
    os.symlink("data.bin", d / "alias.bin")
    os.mkfifo(d / "fifo")
    cfg = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                      settle_seconds=0, rescan_seconds=0.2, hash_workers=1)
    agent = await start(cfg, report=False)
    await eventually(lambda: agent.inventory.entry("data.bin") is not None, what="first scan")
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        yield Served(agent, str(d), http)
    await agent.stop()


async def get(s: Served, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with s.http.get(s.url(path), headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def raw_request(s: Served, request_line: str) -> bytes:
    """Send a request exactly as written (no client-side path normalization)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", s.agent.port)
    writer.write(f"{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_healthz(served: Served) -> None:
    status, _, body = await get(served, "/healthz")
    assert (status, body) == (200, b"ok")


async def test_whole_file_with_validators(served: Served) -> None:
    status, h, body = await get(served, "/files/data.bin")
    assert status == 200 and body == DATA
    assert h["Accept-Ranges"] == "bytes"
    assert h["ETag"] == agent_api.etag_for(hashlib.sha256(DATA).digest())
    assert h["Content-Length"] == str(len(DATA))
    assert "Last-Modified" in h


@pytest.mark.parametrize("header,start,end", [
    ("bytes=0-99", 0, 100),                  # first bytes
    ("bytes=500000-500099", 500000, 500100),  # middle
    ("bytes=-100", len(DATA) - 100, len(DATA)),  # suffix
    ("bytes=999000-", 999000, len(DATA)),    # open-ended
    ("bytes=999999-5000000", 999999, len(DATA)),  # last past EOF is clipped
])
async def test_ranges(served: Served, header: str, start: int, end: int) -> None:
    status, h, body = await get(served, "/files/data.bin", Range=header)
    assert status == 206
    assert body == DATA[start:end]
    assert h["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert h["Content-Length"] == str(end - start)


@pytest.mark.parametrize("header", ["bytes=2000000-", "bytes=1000003-1000010", "bytes=10-5",
                                    "bytes=-0", "bytes=abc", "bytes=1-2-3"])
async def test_unsatisfiable_or_malformed_is_416(served: Served, header: str) -> None:
    status, h, body = await get(served, "/files/data.bin", Range=header)
    assert status == 416
    assert h["Content-Range"] == f"bytes */{len(DATA)}"
    assert DATA[:16] not in body


@pytest.mark.parametrize("header", ["items=0-5", "bytes=0-1,5-6"])
async def test_range_not_understood_gives_whole_file(served: Served, header: str) -> None:
    status, _, body = await get(served, "/files/data.bin", Range=header)
    assert status == 200 and body == DATA


async def test_empty_file(served: Served) -> None:
    assert (await get(served, "/files/empty"))[::2] == (200, b"")
    status, h, _ = await get(served, "/files/empty", Range="bytes=0-")
    assert status == 416 and h["Content-Range"] == "bytes */0"


async def test_head(served: Served) -> None:
    async with served.http.head(served.url("/files/data.bin")) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(DATA))
        assert r.headers["ETag"] == agent_api.etag_for(hashlib.sha256(DATA).digest())
        assert await r.read() == b""
    async with served.http.head(served.url("/files/data.bin"),
                                headers={"Range": "bytes=10-19"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
        assert r.headers["Content-Length"] == "10"


async def test_if_range(served: Served) -> None:
    _, h, _ = await get(served, "/files/data.bin")
    etag, lm = h["ETag"], h["Last-Modified"]
    for validator in (etag, lm):
        status, _, body = await get(served, "/files/data.bin", Range="bytes=0-9",
                                    **{"If-Range": validator})
        assert (status, body) == (206, DATA[:10])
    for stale in ('"' + "0" * 64 + '"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT", "garbage"):
        status, _, body = await get(served, "/files/data.bin", Range="bytes=0-9",
                                    **{"If-Range": stale})
        assert (status, body) == (200, DATA)


async def test_no_etag_once_file_changed_until_rehashed(served: Served) -> None:
    path = os.path.join(served.dir, "sub", "small.txt")
    write(path, b"changed!!\n", mtime=1_000_000)
    status, h, body = await get(served, "/files/sub/small.txt")
    assert body == b"changed!!\n"
    if "ETag" in h:  # only once the inventory has rehashed it, and then the right one
        assert h["ETag"] == agent_api.etag_for(hashlib.sha256(b"changed!!\n").digest())


async def test_concurrent_ranges_join_into_the_file(served: Served) -> None:
    third = len(DATA) // 3
    spans = [(0, third), (third, 2 * third), (2 * third, len(DATA))]
    results = await asyncio.gather(*(get(served, "/files/data.bin", Range=f"bytes={a}-{b - 1}")
                                     for a, b in spans))
    assert all(r[0] == 206 for r in results)
    assert b"".join(r[2] for r in results) == DATA


async def test_pieces(served: Served) -> None:
    ident, pieces = hash_file(os.path.join(served.dir, "data.bin"))
    status, h, body = await get(served, f"/pieces/{ident.sha256.hex()}")
    assert status == 200 and body == pieces
    assert h[agent_api.PIECE_SIZE_HEADER] == str(ident.piece_size)
    assert h["Content-Type"] == "application/octet-stream"
    ident.check_piece_list(body)
    assert (await get(served, "/pieces/" + "ab" * 32))[0] == 404
    assert (await get(served, "/pieces/nothex"))[0] == 404


async def test_symlink_inside_dir_is_served(served: Served) -> None:
    status, _, body = await get(served, "/files/alias.bin", Range="bytes=0-9")
    assert (status, body) == (206, DATA[:10])


@pytest.mark.parametrize("path", [
    "/files/../x", "/files/%2e%2e/x", "/files/%2E%2E/outside/secret.txt",
    "/files/a%2f..%2f..%2fetc/passwd", "/files/sub/..%2f..%2foutside/secret.txt",
    "/files/%2e%2e%2foutside%2fsecret.txt", "/files/leak.txt", "/files/leakdir/secret.txt",
    "/files/leakdir/passwd", "/files//etc/passwd", "/files/%00", "/files/data.bin%00",
    "/files/sub", "/files/fifo", "/files/x.part", "/files/.hidden", "/files/nope",
    "/files/", "/files/%2Fetc%2Fpasswd",
])
async def test_nothing_outside_dir_is_served(served: Served, path: str) -> None:
    url = served.url("") + path
    async with served.http.get(yarl_raw(url)) as r:
        body = await r.read()
    assert r.status in (403, 404), (path, r.status)
    assert SECRET not in body and b"root:" not in body


@pytest.mark.parametrize("target", ["/files/../../etc/passwd", "/files/../outside/secret.txt",
                                    "/files/sub/../../outside/secret.txt",
                                    "/files/leakdir/../../outside/secret.txt",
                                    "/files/./data.bin"])
async def test_raw_traversal_over_a_socket(served: Served, target: str) -> None:
    response = await raw_request(served, f"GET {target} HTTP/1.1")
    status = int(response.split(b" ", 2)[1])
    assert status in (403, 404), response[:200]
    assert SECRET not in response and b"root:" not in response


async def test_inventory_skips_what_is_not_served(served: Served) -> None:
    expected = {"data.bin", "sub/small.txt", "empty", "alias.bin"}

    def held() -> set[str]:
        return {e.path for e in served.agent.inventory.snapshot()}

    # Files enter one by one as they are hashed (a loaded machine may be slow): wait for
    # the served ones, then make sure nothing else came in with them.
    await eventually(lambda: held() >= expected, what="every servable file hashed")
    await asyncio.sleep(0.5)  # a couple of rescans
    assert held() == expected


def yarl_raw(url: str):  # type: ignore[no-untyped-def]
    """A URL aiohttp sends exactly as written (no dot-segment removal, no re-quoting)."""
    import yarl
    return yarl.URL(url, encoded=True)
