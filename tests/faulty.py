"""A fault-injecting HTTP server: a real aiohttp server on loopback that serves one
file with byte ranges, and misbehaves on purpose.

    FaultyServer(data, cut_after=N)        close the connection after N body bytes (each response)
    FaultyServer(data, stall_after=N)      stop sending after N body bytes, keep the connection
    FaultyServer(data, trickle=BPS)        send at most BPS bytes per second (all connections)
    FaultyServer(data, lie=True)           send other bytes of the right length
    FaultyServer(data, change_after=K)     from request K on, serve other content (new ETag)
    FaultyServer(data, shift_range=D)      answer with a Content-Range D bytes off
    FaultyServer(data, extra=N)            send N bytes more than the range asked for
    FaultyServer(data, total_shift=D)      after the first answer, claim a total size D bytes off
    FaultyServer(data, huge_header=N)      add an N-byte header to every answer
    FaultyServer(data, gzip=True)          gzip-encode every body despite Accept-Encoding
    FaultyServer(data, auth=(USER, PW))    401 unless basic auth with these credentials
    FaultyServer(data, cookie=(NAME, V))   403 unless this cookie is sent
    FaultyServer(data, redirect_to=URL)    302 to URL for every request
    FaultyServer(data, ssl_context=CTX)    serve HTTPS

`headers_seen` keeps each request's headers.

`requests` counts requests served; `sent` counts body bytes written.
"""
from __future__ import annotations

import asyncio
import base64
import gzip as _gzip
import hashlib
import ssl

from aiohttp import web

from common.http_ranges import content_range, parse_range
from tests.servers import AppServer

CHUNK = 64 * 1024


_XOR_5A = bytes(i ^ 0x5A for i in range(256))  # translate tables: fast on big bodies
_XOR_FF = bytes(i ^ 0xFF for i in range(256))


class FaultyServer:
    def __init__(self, data: bytes, *, cut_after: int | None = None,
                 stall_after: int | None = None, trickle: float | None = None,
                 lie: bool = False, change_after: int | None = None, shift_range: int = 0,
                 extra: int = 0, gzip: bool = False, auth: tuple[str, str] | None = None,
                 cookie: tuple[str, str] | None = None, redirect_to: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, total_shift: int = 0,
                 huge_header: int = 0) -> None:
        self.data = data
        self.cut_after, self.stall_after, self.trickle = cut_after, stall_after, trickle
        self.lie, self.change_after, self.shift_range = lie, change_after, shift_range
        self.extra, self.gzip = extra, gzip
        self.auth, self.cookie, self.redirect_to = auth, cookie, redirect_to
        self.total_shift, self.huge_header = total_shift, huge_header
        self.requests = 0
        self.sent = 0
        self.headers_seen: list[dict[str, str]] = []
        self._free_at = 0.0
        self.server = AppServer(self._handle, ssl_context=ssl_context)
        self.url = f"{self.server.url}/file.bin"

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FaultyServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _current(self) -> tuple[bytes, str]:
        data = self.data
        if self.change_after is not None and self.requests > self.change_after:
            data = data.translate(_XOR_5A)  # the file was replaced on the server
        return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.headers_seen.append(dict(request.headers))
        if self.redirect_to:
            raise web.HTTPFound(self.redirect_to)
        expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode() \
            if self.auth else None
        if expected and request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
        if self.cookie and request.cookies.get(self.cookie[0]) != self.cookie[1]:
            return web.Response(status=403)
        data, etag = self._current()
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        span = None
        header = request.headers.get("Range")
        if header and request.headers.get("If-Range", etag) == etag:
            try:
                span = parse_range(header, len(data))
            except ValueError:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        start, end = span if span else (0, len(data))
        body = data[start:end]
        if self.lie:
            body = body.translate(_XOR_FF)
        if span:
            total = len(data) + (self.total_shift if self.requests > 1 else 0)
            headers["Content-Range"] = content_range(start + self.shift_range,
                                                     end + self.shift_range, total)
        if self.huge_header:
            headers["X-Padding"] = "x" * self.huge_header
        if self.extra:
            body += data[end:end + self.extra] or b"\0" * self.extra
        if self.gzip:
            body = _gzip.compress(body, 1)
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=206 if span else 200, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            await self._send(request, resp, body)
        except ConnectionError:
            pass  # the client hung up: its choice
        return resp

    async def _send(self, request: web.Request, resp: web.StreamResponse, body: bytes) -> None:
        written = 0
        for i in range(0, len(body), CHUNK):
            piece = body[i:i + CHUNK]
            if self.cut_after is not None and written + len(piece) > self.cut_after:
                await resp.write(piece[: max(0, self.cut_after - written)])
                assert request.transport is not None
                request.transport.close()  # the connection dies mid-body
                return
            if self.stall_after is not None and written + len(piece) > self.stall_after:
                await resp.write(piece[: max(0, self.stall_after - written)])
                await asyncio.sleep(3600)  # silence; the client must give up on us
            await resp.write(piece)
            written += len(piece)
            self.sent += len(piece)
            if self.trickle:  # one uplink, shared by every connection
                now = asyncio.get_running_loop().time()
                self._free_at = max(now, self._free_at) + len(piece) / self.trickle
                await asyncio.sleep(self._free_at - now)
