"""client/wire.py: the pure head parser, framing and chunked decoder, then the
client against scripted servers on loopback that send exactly the bytes a test
wants (keep-alive, early close, chunked, 1xx, timeouts, TLS)."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from client import http1, wire
from client.wire import BadResponse, ChunkedDecoder, framing, head_end, parse_head

# ---- pure: head ----------------------------------------------------------------------


def test_parse_head_reads_status_reason_and_fields_case_insensitively():
    h = parse_head(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\n"
                   b"ETag:  \"x\"  \r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert (h.version, h.status, h.reason) == ("1.1", 206, "Partial Content")
    assert h.headers.get("content-range") == "bytes 0-9/100"
    assert h.headers["CONTENT-RANGE"] == "bytes 0-9/100"
    assert "Etag" in h.headers and h.headers.get("ETag") == '"x"'  # OWS stripped
    assert h.headers.get("X-A") == "1, 2"  # repeated fields joined (RFC 9110 §5.3)
    assert h.headers.get("missing") is None


def test_parse_head_accepts_bare_lf_and_an_empty_reason():
    h = parse_head(b"HTTP/1.0 200\nContent-Length: 3\n\n")
    assert (h.version, h.status, h.reason) == ("1.0", 200, "")
    assert h.headers.get("content-length") == "3"


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX: a\r\n  folded\r\n\r\n",  # obs-fold (RFC 9112 §5.2)
    b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",  # whitespace before the colon (§5.1)
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",  # a control character in a value
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"\r\n\r\n",
])
def test_parse_head_refuses_malformed_heads(head):
    with pytest.raises(BadResponse):
        parse_head(head)


def test_head_end_finds_the_empty_line_either_way():
    assert head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody") == 25
    assert head_end(b"HTTP/1.1 200 OK\nA: b\n\nbody") == 22
    assert head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n") == -1
    assert head_end(b"HTTP/1.1 200 OK\nA: b\n\r\nbody") == 23  # mixed line ends
    assert head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\nbody") == 24


# ---- pure: framing ---------------------------------------------------------------------


def _frame(raw: bytes) -> wire.Framing:
    return framing(parse_head(raw))


def test_framing_by_content_length_chunked_or_close():
    assert _frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == wire.Framing(5, False, True)
    assert _frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").length == 5
    assert _frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == \
        wire.Framing(None, True, True)
    assert _frame(b"HTTP/1.1 200 OK\r\n\r\n") == wire.Framing(None, False, False)
    assert _frame(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").length == 0
    assert _frame(b"HTTP/1.1 304 Not Modified\r\n\r\n").length == 0


def test_framing_keep_alive_only_for_http11_without_close():
    assert not _frame(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive
    assert not _frame(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 1\r\n\r\n") \
        .keep_alive
    # Both Transfer-Encoding and Content-Length: chunked wins, the connection is not reused.
    f = _frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
    assert f.chunked and not f.keep_alive


@pytest.mark.parametrize("fields", [
    b"Content-Length: 5, 6", b"Content-Length: -1", b"Content-Length: 0x10",
    b"Content-Length: ", b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, identity",
])
def test_framing_refuses_what_it_cannot_frame_safely(fields):
    with pytest.raises(BadResponse):
        _frame(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n\r\n")


# ---- pure: chunked ------------------------------------------------------------------------

CHUNKED = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"


def _decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder, int]:
    d, out, used = ChunkedDecoder(), bytearray(), 0
    for p in pieces:
        parts, used = d.feed(memoryview(p))
        for part in parts:
            out += part
    return bytes(out), d, used


def test_chunked_body_decodes_whole_or_byte_by_byte():
    data, d, _ = _decode([CHUNKED])
    assert data == b"hello world" and d.done
    data, d, _ = _decode([CHUNKED[i:i + 1] for i in range(len(CHUNKED))])
    assert data == b"hello world" and d.done


def test_chunked_decoder_says_where_the_body_ends():
    data, d, used = _decode([CHUNKED + b"HTTP/1.1 200 OK"])
    assert d.done and used == len(CHUNKED) and data == b"hello world"


def test_chunked_decoder_is_not_done_before_the_last_chunk():
    _, d, _ = _decode([CHUNKED[:-2]])
    assert not d.done


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
    b"3\r\nhello\r\n0\r\n\r\n",  # longer than its size
    b"" + b"1" * 5000 + b"\r\n",  # a size line without end
    b"-1\r\n",
])
def test_chunked_decoder_refuses_malformed_bodies(body):
    with pytest.raises(BadResponse):
        _decode([body])


def test_request_head_has_host_and_an_encoded_target():
    raw = http1.request_head("http://example.org:8080/a b/%41?q=1 2", [("Range", "bytes=0-9")])
    assert raw.startswith(b"GET /a%20b/%41?q=1%202 HTTP/1.1\r\nHost: example.org:8080\r\n")
    assert raw.endswith(b"Range: bytes=0-9\r\n\r\n")
    assert b"Host: [::1]\r\n" in http1.request_head("http://[::1]:80/", [])
    assert b"Host: h\r\n" in http1.request_head("https://h:443/", [])


def test_request_head_takes_the_callers_host_and_encodes_idna():
    raw = http1.request_head("http://h:81/", [("host", "other")])
    assert b"Host: h" not in raw and raw.count(b"host: other\r\n") == 1
    assert b"Host: xn--bcher-kva.example\r\n" in http1.request_head("http://b\u00fccher.example/", [])
    # IDNA 2008 (UTS #46), as yarl and browsers: not IDNA 2003's "fass.de".
    assert b"Host: xn--fa-hia.de\r\n" in http1.request_head("http://fa\u00df.de/", [])


def test_request_head_refuses_a_header_that_would_split_the_request():
    with pytest.raises(ValueError):
        http1.request_head("http://h/", [("X", "a\r\nInjected: 1")])


# ---- on loopback: scripted servers ------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Script"], Awaitable[None]]


class Script:
    """A TCP server on 127.0.0.1 running `handler` for every connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.requests.append(head)
        return head


@contextlib.asynccontextmanager
async def scripted(handler: Handler, ssl_context: ssl.SSLContext | None = None
                   ) -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        try:
            await handler(reader, writer, script)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/f", script
    finally:
        server.close()


def client(**kw) -> wire.WireClient:
    kw.setdefault("connect_timeout", 30)
    kw.setdefault("read_timeout", 30)
    return wire.WireClient(tls=kw.pop("tls", ssl.create_default_context), **kw)


def keep_alive(body: bytes, extra: bytes = b"") -> Handler:
    async def handler(reader, writer, script):
        while await script.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra)
                         + body)
            await writer.drain()
    return handler


async def test_keep_alive_reuses_one_connection():
    body = bytes(range(256)) * 4096  # 1 MiB: several buffers' worth
    async with scripted(keep_alive(body)) as (url, script):
        c = client()
        for _ in range(3):
            async with await c.get(url, []) as r:
                assert r.status == 200 and r.content_length == len(body)
                assert await r.read() == body
        await c.close()
    assert script.connections == 1 and len(script.requests) == 3
    assert c.connections_opened == 1


async def test_a_body_not_read_to_its_end_closes_the_connection():
    size = 8 * wire.BUFFER  # more than a connection's buffers hold
    async with scripted(keep_alive(b"x" * size)) as (url, script):
        c = client()
        async with await c.get(url, []) as r:
            assert await r.read(10) == b"x" * 10
        async with await c.get(url, []) as r:
            assert len(await r.read()) == size
        await c.close()
    assert script.connections == 2


async def test_a_kept_connection_the_server_closed_is_replaced_transparently():
    async def once(reader, writer, script):  # one answer per connection, then close
        if await script.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with scripted(once) as (url, script):
        c = client()
        for _ in range(3):
            async with await c.get(url, []) as r:
                assert await r.read() == b"ok"
            await asyncio.sleep(0.05)  # let the close arrive (either way it must work)
        await c.close()
    assert script.connections == 3


async def test_a_body_cut_short_raises():
    async def cut(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()

    async with scripted(cut) as (url, _):
        c = client()
        async with await c.get(url, []) as r:
            with pytest.raises(wire.BodyCutShort):
                await r.read()
        await c.close()


async def test_a_close_before_any_answer_is_disconnected():
    async def hang_up(reader, writer, script):
        await script.read_request(reader)

    async with scripted(hang_up) as (url, _):
        c = client()
        with pytest.raises(wire.Disconnected):
            await c.get(url, [])
        await c.close()


async def test_chunked_answer_is_decoded_and_the_connection_kept():
    async def chunked(reader, writer, script):
        while await script.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (CHUNKED[:7], CHUNKED[7:20], CHUNKED[20:]):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)

    async with scripted(chunked) as (url, script):
        c = client()
        for _ in range(2):
            async with await c.get(url, []) as r:
                assert r.content_length is None
                assert await r.read() == b"hello world"
        await c.close()
    assert script.connections == 1


async def test_a_body_delimited_by_close_is_read_and_not_reused():
    async def until_close(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")

    async with scripted(until_close) as (url, script):
        c = client()
        for _ in range(2):
            async with await c.get(url, []) as r:
                assert await r.read() == b"all of it"
        await c.close()
    assert script.connections == 2


async def test_informational_answers_are_skipped():
    async def early_hints(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")

    async with scripted(early_hints) as (url, _):
        c = client()
        async with await c.get(url, []) as r:
            assert r.status == 200 and await r.read() == b"abc"
        await c.close()


async def test_bytes_beyond_the_body_are_never_read_as_the_body_nor_reused():
    async with scripted(keep_alive(b"abc", b"")) as (_url, _script):
        async def extra(reader, writer, s):
            while await s.read_request(reader) is not None:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcXYZ")
        async with scripted(extra) as (url2, script2):
            c = client()
            for _ in range(2):
                async with await c.get(url2, []) as r:
                    assert await r.read() == b"abc"
            await c.close()
    assert script2.connections == 2


async def test_a_head_longer_than_one_heads_read_is_read_whole():
    pad = b"X-Pad: " + b"a" * (3 * wire.HEAD_READ) + b"\r\n"
    body = os.urandom(wire.HEAD_READ)
    async with scripted(keep_alive(body, pad)) as (url, script):
        c = client()
        for _ in range(2):  # and the connection is kept
            async with await c.get(url, []) as r:
                assert len(r.headers["x-pad"]) == 3 * wire.HEAD_READ
                assert await r.read() == body
        await c.close()
    assert script.connections == 1


async def test_an_endless_head_is_refused():
    async def endless(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (wire.MAX_HEAD + 10))
        await writer.drain()
        await asyncio.sleep(30)

    async with scripted(endless) as (url, _):
        c = client()
        with pytest.raises(BadResponse):
            await c.get(url, [])
        await c.close()


async def test_a_silent_server_times_out():
    gone = asyncio.Event()

    async def silent(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await writer.drain()
        await gone.wait()

    async with scripted(silent) as (url, _):
        c = client(read_timeout=0.2)
        with pytest.raises(TimeoutError):
            async with await c.get(url, []) as r:
                await r.read()
        gone.set()
        await c.close()


async def test_a_refused_connection_is_a_connect_error():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    c = client()
    with pytest.raises(wire.ConnectError):
        await c.get(f"http://127.0.0.1:{port}/", [])
    await c.close()


async def test_per_host_limit_holds_a_request_until_one_is_released():
    async with scripted(keep_alive(b"abc")) as (url, script):
        c = client(per_host=1)
        first = await c.get(url, [])
        second = asyncio.ensure_future(c.get(url, []))
        await asyncio.sleep(0.1)
        assert not second.done()  # waits for the one connection allowed
        assert await first.read() == b"abc"
        first.release()
        async with await second as r:
            assert await r.read() == b"abc"
        await c.close()
    assert script.connections == 1


async def test_tls_with_a_test_ca(tmp_path):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    body = b"secret bytes" * 50_000
    async with scripted(keep_alive(body), ssl_context=server_ctx) as (url, script):
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        c = client(tls=lambda: trusting)
        for _ in range(2):
            async with await c.get(url, []) as r:
                assert await r.read() == body
        await c.close()
        assert script.connections == 1
        stranger = client(tls=ssl.create_default_context)
        with pytest.raises(wire.CertificateError):
            await stranger.get(url, [])
        await stranger.close()


@contextlib.asynccontextmanager
async def tls_answer_then_close(answer: bytes) -> AsyncIterator[tuple[str, wire.WireClient]]:
    """A TLS server (a thread, a test CA) that reads one request's head, sends `answer`
    all at once and closes: the FIN comes while the client is still behind. Yields its
    URL and a client that trusts it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        with server_ctx.wrap_socket(sock, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            tls.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    c = client(tls=lambda: trusting)
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/", c
    finally:
        await c.close()
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "close-delimited"])
async def test_tls_answer_with_a_long_head_then_a_close_is_read_whole(length):
    # On the FIN, asyncio's TLS layer hands over one read's worth of what it decrypted
    # and drops the rest: reads under TLS must not be bounded as a head's are for splice.
    body = os.urandom(100_000)
    answer = (b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-Pad: %s\r\n%s\r\n%s"
              % (b"a" * 2 * wire.HEAD_READ,
                 b"Content-Length: %d\r\n" % len(body) if length else b"", body))
    async with tls_answer_then_close(answer) as (url, c), await c.get(url, []) as r:
        assert await r.read() == body


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "close-delimited"])
@pytest.mark.parametrize("size", [1_000_000, 2_750_000])
@pytest.mark.parametrize("buffers", [None, 64 * 1024], ids=["1-MiB-buffers", "64-KiB-buffers"])
async def test_tls_answer_to_a_slow_reader_then_a_close_is_read_whole(length, size, buffers,
                                                                      monkeypatch):
    # asyncio's TLS layer, on a FIN read while the reader is paused, hands over once it
    # resumes only what fits in the buffer offered, and drops the rest. A reader slower
    # than the link fills both buffers and pauses; the FIN comes meanwhile. Resuming
    # frees a whole buffer, and the connection keeps the layer's high-water mark a TLS
    # record below that. Without that, 64 KiB buffers lose bytes here.
    if buffers is not None:
        monkeypatch.setattr(wire, "BUFFER_BUDGET", 0)  # every buffer MIN_BUFFER...
        monkeypatch.setattr(wire, "MIN_BUFFER", buffers)  # ... of this size
    body = os.urandom(size)
    answer = (b"HTTP/1.1 200 OK\r\nConnection: close\r\n%s\r\n%s"
              % (b"Content-Length: %d\r\n" % len(body) if length else b"", body))
    got = bytearray()
    async with tls_answer_then_close(answer) as (url, c), await c.get(url, []) as r:
        conn = r.connection
        assert conn.size == (buffers or wire.BUFFER)
        assert conn.transport is not None
        assert conn.transport.get_read_buffer_limits()[1] <= conn.size - wire.TLS_RECORD_SLACK
        while (v := await r.read_view()) is not None:
            got += v
            await asyncio.sleep(0.02)  # a slow disk
    assert len(got) == len(body) and got == body


async def test_views_stay_valid_until_the_next_read():
    # The reader keeps a view while the socket fills the other buffer.
    body = bytes(range(256)) * 20_000
    async with scripted(keep_alive(body)) as (url, _):
        c = client()
        got = bytearray()
        async with await c.get(url, []) as r:
            while (v := await r.read_view()) is not None:
                copy = bytes(v)
                await asyncio.sleep(0)  # the socket may fill the other buffer meanwhile
                assert bytes(v) == copy
                got += v
        assert got == body
        await c.close()


# ---- mfetch's data path over scripted servers ------------------------------------------


def range_server(data: bytes, *, mode: str) -> Handler:
    """Answers range requests for `data`: mode "ignore" (200, whole file), "chunked"
    (206, chunked body), "cut-first" (the first 206 answer stops half-way, closed)."""
    import re

    async def handler(reader, writer, script):
        while (req := await script.read_request(reader)) is not None:
            m = re.search(rb"\r\nRange: bytes=(\d+)-(\d+)\r\n", req)
            if mode == "ignore" or not m:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: \"v1\"\r\n\r\n"
                             % len(data) + data)
                await writer.drain()
                continue
            a, b = int(m.group(1)), int(m.group(2)) + 1
            head = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
                    b"ETag: \"v1\"\r\n" % (a, b - 1, len(data)))
            if mode == "chunked":
                writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(a, b, 100_000):
                    part = data[i:min(b, i + 100_000)]
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif mode == "cut-first" and len(script.requests) == 2:  # after the probe
                writer.write(head + b"Content-Length: %d\r\n\r\n" % (b - a) + data[a:(a + b) // 2])
                await writer.drain()
                return
            else:
                writer.write(head + b"Content-Length: %d\r\n\r\n" % (b - a) + data[a:b])
            await writer.drain()
    return handler


async def _mfetch(*args: str) -> tuple[int, str]:
    from tests import procs

    p = await asyncio.create_subprocess_exec(
        procs.command("mfetch"), *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(p.communicate(), 300)
    return p.returncode or 0, err.decode()


@pytest.mark.parametrize("mode", ["ignore", "chunked", "cut-first"])
async def test_mfetch_data_path_gets_the_right_file(tmp_path, mode):
    import os

    data = os.urandom(3 * 1024 * 1024 + 12345)
    async with scripted(range_server(data, mode=mode)) as (url, script):
        code, err = await _mfetch(url, "-o", str(tmp_path / "out"), "-q")
    assert code == 0, err
    assert (tmp_path / "out").read_bytes() == data
    if mode == "cut-first":
        assert script.connections >= 2  # the cut connection was not reused


def test_mfetch_never_imports_aiohttp_without_a_proxy():
    # aiohttp costs ~0.2 s of start-up; only --proxy needs it (tests/test_http_options.py
    # covers that path). client.swarm and client.background are loaded by plain runs too.
    import subprocess
    import sys

    code = ("import sys, client.cli, client.swarm, client.background, client.stream, "
            "client.repair; sys.exit(1 if 'aiohttp' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_receive_buffer_refused_by_the_kernel_is_a_memory_error(monkeypatch):
    # Anonymous mappings, not zeroed bytearrays: a spliced body never enters them.
    # A mapping refused is a lack of memory, not a network error to retry elsewhere.
    buf = wire.buffer(wire.BUFFER)
    assert len(buf) == wire.BUFFER and buf[:4] == b"\0" * 4

    def refuse(*a, **kw):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(wire.mmap, "mmap", refuse)
    with pytest.raises(MemoryError, match="receive buffer"):
        wire.buffer(wire.BUFFER)


async def test_a_closed_connections_buffers_go_to_the_next_one():
    # Connections that close mid-body (cancelled requests) must not each allocate new
    # buffers: glibc keeps freed blocks, and the heap would grow (peak RSS).
    size = 8 * wire.BUFFER
    async with scripted(keep_alive(b"x" * size)) as (url, script):
        c = client()
        buffers = []
        for _ in range(4):
            async with await c.get(url, []) as r:
                buffers.append(r.connection._bufs)
                assert await r.read(10) == b"x" * 10  # then closed, not read to its end
        assert script.connections == 4
        assert all(b is buffers[0] for b in buffers)  # one pair of buffers, passed on
        assert c._buffered == 2 * wire.BUFFER
        await c.close()


# ---- found in review -------------------------------------------------------------------


async def test_connections_opened_at_once_share_the_buffer_budget():
    async with scripted(keep_alive(b"abc")) as (url, _):
        c = client()
        responses = await asyncio.gather(*(c.get(url, []) for _ in range(20)))
        # Each sees the buffers the others reserved: 20 x 2 MiB would be 40 MiB.
        assert c._buffered <= wire.BUFFER_BUDGET + 20 * 2 * wire.MIN_BUFFER
        for r in responses:
            async with r:
                assert await r.read() == b"abc"
        await c.close()


async def test_bytes_queued_after_a_body_keep_the_connection_out_of_the_pool():
    sent = asyncio.Event()

    async def stray(reader, writer, script):
        if script.connections > 1:  # the connection made anew: a plain answer
            while await script.read_request(reader) is not None:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
            return
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the body apart from the head: read to its exact end
        writer.write(b"abc")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
        await writer.drain()
        sent.set()
        await script.read_request(reader)

    async with scripted(stray) as (url, script):
        c = client()
        async with await c.get(url, []) as r:
            assert await r.read() == b"abc"
            await sent.wait()
            await asyncio.sleep(0.1)  # the stray answer is in the socket, unread
        async with await c.get(url, []) as r:
            assert await r.read() == b"good"
        await c.close()
    assert script.connections == 2


async def test_a_post_is_not_sent_again_when_its_kept_connection_drops():
    async def answer_once(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await script.read_request(reader)  # the second: dropped unanswered

    async with scripted(answer_once) as (url, script):
        c = client()
        async with await c.request("POST", url, [], b"{}") as r:
            assert await r.read() == b"ok"
        with pytest.raises(wire.Disconnected):
            await c.request("POST", url, [], b"{}")
        await c.close()
    assert sum(b"POST /" in req for req in script.requests) == 2  # (a body precedes the 2nd)


async def test_a_whole_answer_then_close_logs_no_asyncio_error(caplog):
    async def close_after(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        await writer.drain()

    async with scripted(close_after) as (url, _):
        c = client()
        async with await c.get(url, []) as r:
            await asyncio.sleep(0.2)  # the FIN arrives while the response is held
            assert await r.read() == b"abc"
        await c.close()
    assert not [x for x in caplog.records if x.name == "asyncio" and x.levelname == "ERROR"]


async def test_informational_heads_longer_than_the_head_limit_in_one_read():
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: <" + b"a" * 8000 + b">\r\n\r\n"

    async def hints(reader, writer, script):
        await script.read_request(reader)
        writer.write(hint * 12 + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")

    async with scripted(hints) as (url, _):
        c = client()
        async with await c.get(url, []) as r:
            assert r.status == 200 and await r.read() == b"abc"
        await c.close()


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 17,  # more than wire.MAX_INTERIM
])
async def test_a_switch_or_endless_informational_answers_are_refused(interim):
    async def answer(reader, writer, script):
        await script.read_request(reader)
        writer.write(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")

    async with scripted(answer) as (url, _):
        c = client()
        with pytest.raises(BadResponse):
            await c.get(url, [])
        await c.close()


async def test_a_head_request_has_no_body_whatever_its_length_says():
    async def head_then_get(reader, writer, script):
        while (req := await script.read_request(reader)) is not None:
            body = b"" if req.startswith(b"HEAD") else b"x" * 100
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body)

    async with scripted(head_then_get) as (url, script):
        c = client(read_timeout=30)
        async with await c.request("HEAD", url, []) as r:
            assert r.content_length == 0 and await r.read() == b""
        async with await c.get(url, []) as r:
            assert await r.read() == b"x" * 100
        await c.close()
    assert script.connections == 1


def test_a_read_into_the_spill_that_found_nothing_does_not_eat_the_next_bytes():
    # asyncio may ask for a buffer and then find nothing to read (a spurious wake-up):
    # the spill handed out then must not make the next real bytes count as stray.
    conn = wire.Connection("k", None, (bytearray(16), bytearray(16)))
    conn.want = 0
    assert len(conn.get_buffer(-1)) > 0  # the spill (asyncio refuses an empty buffer)
    conn.want = None  # back in the pool, reading again; the spill read found nothing
    view = conn.get_buffer(-1)
    view[:3] = b"abc"
    conn.buffer_updated(3)
    assert conn._fill == 3 and not conn._stray


def _trickle(first: bytes, gone: asyncio.Event) -> Handler:
    """Answers a 1 MB body: the head, `first` 0.1 s later, then nothing until `gone`."""
    async def handler(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(first)
        await writer.drain()
        await gone.wait()
    return handler


async def test_bytes_below_the_wake_up_mark_are_read_after_the_patience(monkeypatch):
    # A source that slows down must still be heard: with a mark of 512 KiB and 1000
    # bytes waiting, the read returns those bytes after LOWAT_PATIENCE, long before the
    # read timeout, and the mark is back to one byte.
    monkeypatch.setattr(wire, "LOWAT_PATIENCE", 0.6)
    gone = asyncio.Event()
    async with scripted(_trickle(b"a" * 1000, gone)) as (url, _):
        c = client(read_timeout=30)
        async with await c.get(url, []) as r:
            r.set_lowat(512 * 1024)
            t0 = time.monotonic()
            chunk = await r.read_view()
            waited = time.monotonic() - t0
            assert chunk is not None and bytes(chunk) == b"a" * 1000
            assert waited >= 0.5  # the mark held while the bytes waited below it
            assert waited < 10  # the patience (0.6 s here), not the 30 s read timeout
            assert r._conn._lowat == 1
        gone.set()
        await c.close()


async def _silent_read(monkeypatch, patience: float, read_timeout: float) -> float:
    """How long a read under a 512 KiB wake-up mark took to time out on a source that
    sends a head and then nothing."""
    monkeypatch.setattr(wire, "LOWAT_PATIENCE", patience)
    gone = asyncio.Event()
    async with scripted(_trickle(b"", gone)) as (url, _):
        c = client(read_timeout=read_timeout)
        async with await c.get(url, []) as r:
            r.set_lowat(512 * 1024)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await r.read_view()
            waited = time.monotonic() - t0
        gone.set()
        await c.close()
    return waited


async def test_a_silent_source_still_times_out_under_a_wake_up_mark(monkeypatch):
    waited = await _silent_read(monkeypatch, patience=0.1, read_timeout=0.5)
    assert waited >= 0.45  # the whole read timeout, not the patience


def test_the_wake_up_mark_is_never_above_a_buffer():
    conn = wire.Connection("k", None, (bytearray(4096), bytearray(4096)))
    a, b = socket.socketpair()
    try:
        conn.sock = a
        conn.set_lowat(1 << 20)
        assert conn._lowat == 4096
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 4096
    finally:
        a.close()
        b.close()


async def test_the_probes_connection_serves_the_first_request():
    # The probe reads its one-byte body, so its connection goes back to the pool: the
    # download's first request to that source saves a handshake (a TLS one, on the
    # Internet: two round trips).
    from client.http import HttpClient, HttpOptions, probe

    data = bytes(range(256)) * 64
    async with scripted(range_server(data, mode="plain")) as (url, script):
        async with HttpClient(HttpOptions(), connect_timeout=5, read_timeout=10,
                              per_host=2) as http:
            p = await probe(http, url)
            assert p.size == len(data) and p.ranges
            async with http.get(url, {"Range": "bytes=0-99"}) as resp:
                assert resp.status == 206 and await resp.read() == data[:100]
    assert len(script.requests) == 2 and script.connections == 1


async def test_json_into_a_closed_pipe_ends_quietly(tmp_path):
    # The file is fetched; the summary cannot be written: exit 1, no traceback.
    from tests import procs

    data = bytes(range(256)) * 64
    r, w = os.pipe()
    os.close(r)
    try:
        async with scripted(range_server(data, mode="plain")) as (url, _):
            p = await asyncio.create_subprocess_exec(
                procs.command("mfetch"), url, "-o", str(tmp_path / "out"), "--json",
                stdout=w, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(p.communicate(), 300)
    finally:
        os.close(w)
    assert p.returncode == 1 and b"Traceback" not in err, err
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.parametrize("after_head", ["close", "silence"])
async def test_a_probe_needs_only_the_head(after_head, monkeypatch):
    # Reading the probe's byte is only to reuse its connection: a body cut short or
    # slow to come costs that connection, not the source.
    from client import http
    from client.http import HttpClient, HttpOptions, probe

    monkeypatch.setattr(http, "PROBE_BODY_TIMEOUT", 0.2)
    gone = asyncio.Event()

    async def head_only(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/1000\r\n"
                     b"Content-Length: 1\r\n\r\n")
        await writer.drain()
        if after_head == "silence":
            await gone.wait()

    async with scripted(head_only) as (url, _):
        async with HttpClient(HttpOptions(), connect_timeout=5, read_timeout=10,
                              per_host=2) as http_client:
            p = await asyncio.wait_for(probe(http_client, url), 5)
        gone.set()
    assert p.size == 1000 and p.ranges


def test_the_exit_skips_no_thread_pool_shutdown():
    # entry() ends like Python's exit: an idle thread pool nobody shut down must not
    # keep the process waiting (its workers wait for the pools' exit hook).
    import subprocess
    import sys

    code = ("import concurrent.futures as cf, client.cli as c\n"
            "pool = cf.ThreadPoolExecutor(1); pool.submit(int).result()\n"
            "c.main = lambda head=None: 3\n"
            "c.entry()\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert r.returncode == 3, r.stderr


async def test_a_read_timeout_shorter_than_the_patience_still_holds(monkeypatch):
    waited = await _silent_read(monkeypatch, patience=5.0, read_timeout=0.2)
    assert waited < 4  # the read timeout, not the patience


def test_a_plain_url_split_by_hand_gives_urllibs_request():
    # request_head splits plain URLs without urllib (for the head start, before any
    # heavy import); whenever it does, the bytes must be those of the urllib path.
    import itertools

    hosts = ["h", "a.example", "10.0.0.1", "x-y.z", "H.example", "b\u00fccher.de", "[::1]",
             "u:p@h", "h?x", ""]
    ports = ["", ":80", ":443", ":8080", ":080", ":0", ":65536", ":", ":x"]
    paths = ["", "/", "/a/b.iso", "/a b", "/%41%zz", "/a?q=1&r=/x?", "/a?", "/a#frag?x",
             "/~u/(x);y=1,z:@!$'*+", "/a%2Fb", "/\u00e9", "/a\tb", "?q", "#f"]
    split = 0
    for scheme, host, port, path in itertools.product(["http", "https", "HTTP", "ftp"],
                                                       hosts, ports, paths):
        url = f"{scheme}://{host}{port}{path}"
        plain = http1.split_plain(url)
        if plain is None:
            continue
        split += 1
        assert plain == http1.split_any(url), url
    assert split > 100  # the hand-split path is taken for the common URLs


# ---- splice: a body from the socket to a file through a pipe ------------------------

needs_splice = pytest.mark.skipif(not wire.SPLICE, reason="splice(2) is Linux's")


async def _splice_body(r: wire.Response, fd: int) -> tuple[int, int]:
    """Write r's body to `fd` from offset 0 as the fetcher does: spliced whenever the
    response allows, read otherwise. (bytes in all, bytes spliced)"""
    at = spliced = 0
    while True:
        n = await r.splice()
        if n is None:
            v = await r.read_view()
            if v is None:
                return at, spliced
            os.pwrite(fd, v, at)
            at += len(v)
        elif n == 0:
            return at, spliced
        else:
            r.pipe_to(fd, at, n)
            at, spliced = at + n, spliced + n


@needs_splice
async def test_a_spliced_body_is_whole_and_its_connection_kept(tmp_path):
    body = os.urandom(6 * wire.BUFFER + 12345)
    async with scripted(keep_alive(body)) as (url, script):
        c = client()
        for i in range(2):
            fd = os.open(tmp_path / f"out{i}", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                async with await c.get(url, []) as r:
                    got, spliced = await _splice_body(r, fd)
            finally:
                os.close(fd)
            assert got == len(body) and (tmp_path / f"out{i}").read_bytes() == body
            # Only the body's bytes read with the head went the usual way: the server
            # had sent megabytes, yet nothing more entered a buffer.
            assert spliced >= len(body) - wire.HEAD_READ
            # Back in the pool, it holds no pipe nor duplicate (which would keep the
            # socket from closing when the server closes it).
            (conn,) = c._idle[next(iter(c._idle))]
            assert conn._pipe is None and conn._dup == -1
        await c.close()
    assert script.connections == 1 and c.connections_opened == 1


def _head_then(parts: list[bytes], *, end: asyncio.Event | None = None) -> Handler:
    """A 1 MB body's head, then each of `parts` 0.1 s apart (the client is waiting in a
    splice by then); then it closes, or waits for `end`."""
    async def handler(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        await writer.drain()
        for part in parts:
            await asyncio.sleep(0.1)
            writer.write(part)
            await writer.drain()
        if end is not None:
            await end.wait()
    return handler


@needs_splice
async def test_a_spliced_body_cut_short_raises_and_the_pipe_is_emptied(tmp_path):
    async with scripted(_head_then([b"a" * 1000])) as (url, _):
        c = client()
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            async with await c.get(url, []) as r:
                assert await r.splice() == 1000  # waited for them, in the pipe
                r.pipe_to(fd, 0, 1000)
                with pytest.raises(wire.BodyCutShort):
                    await _splice_body(r, fd)
                assert r.connection.piped == 0
        finally:
            os.close(fd)
        await c.close()
    assert (tmp_path / "out").read_bytes() == b"a" * 1000


@needs_splice
async def test_a_silent_source_times_out_in_a_splice(monkeypatch):
    monkeypatch.setattr(wire, "LOWAT_PATIENCE", 0.1)
    end = asyncio.Event()
    async with scripted(_head_then([], end=end)) as (url, _):
        c = client(read_timeout=0.5)
        async with await c.get(url, []) as r:
            r.set_lowat(512 * 1024)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await r.splice()
            assert time.monotonic() - t0 >= 0.45  # the read timeout, not the patience
            conn, dup = r.connection, r.connection._dup
        # Left, the response's connection forgets its duplicate: out of the selector
        # (a number soon another file's), and closed.
        assert dup >= 0 and dup not in asyncio.get_running_loop()._selector.get_map()
        assert conn._watching is None and conn._dup == -1
        end.set()
        await c.close()


@needs_splice
async def test_a_body_in_parts_is_spliced_with_its_duplicate_watched_once(monkeypatch):
    # Each part is waited for. The duplicate stays in the selector from one wait to the
    # next (adding and removing it per chunk cost a tenth of the CPU), and the report
    # the selector made before a splice took the bytes must not wake the next wait:
    # woken for nothing, the splice would find nothing and take it for urgent data.
    parts = [b"a" * 1000, b"b" * 2000, b"c" * 3000, b"d" * 4000]
    end = asyncio.Event()
    async with scripted(_head_then(parts, end=end)) as (url, _):
        c = client(read_timeout=30)
        async with await c.get(url, []) as r:
            loop = asyncio.get_running_loop()
            added = []
            real = loop.add_reader
            monkeypatch.setattr(loop, "add_reader", lambda fd, cb, *a: (added.append(fd),
                                                                        real(fd, cb, *a)))
            got = 0
            while got < sum(map(len, parts)):
                n = await r.splice()
                assert n, "the connection stopped splicing"
                r.pipe_drop(n)
                got += n
            assert r.connection.splices and len(added) == 1
        end.set()
        await c.close()


@needs_splice
async def test_a_duplicate_readable_while_no_one_waits_is_forgotten_till_the_next_wait():
    # Bytes that come while the response is not waited on would have the (level-
    # triggered) selector report the duplicate on every turn of the loop.
    end = asyncio.Event()
    async with scripted(_head_then([b"a" * 1000, b"b" * 2000], end=end)) as (url, _):
        c = client(read_timeout=30)
        async with await c.get(url, []) as r:
            assert await r.splice() == 1000
            r.pipe_drop(1000)
            conn = r.connection
            assert conn._watching is not None  # watched since the wait
            await asyncio.sleep(0.4)  # the b's come meanwhile
            assert conn._watching is None
            assert await r.splice() == 2000
            r.pipe_drop(2000)
        end.set()
        await c.close()


@needs_splice
async def test_a_connection_closed_under_a_waiting_splice_ends_it():
    end = asyncio.Event()
    async with scripted(_head_then([], end=end)) as (url, _):
        c = client()
        r = await c.get(url, [])
        conn = r.connection
        waiting = asyncio.ensure_future(r.splice())
        await asyncio.sleep(0.2)
        assert not waiting.done() and conn._watching is not None
        await c.close()
        with pytest.raises(wire.BodyCutShort):
            await asyncio.wait_for(waiting, 10)
        assert conn._watching is None and conn._dup == -1 and conn._pipe is None
        r.release()
        end.set()


@needs_splice
def test_bytes_a_file_system_refuses_to_splice_are_written_all_the_same(tmp_path,
                                                                          monkeypatch):
    conn = wire.Connection("k", None, (bytearray(4096), bytearray(4096)))
    a, b = socket.socketpair()
    real = os.splice

    def no_splice_to_files(src, dst, count, offset_src=None, offset_dst=None, flags=0):
        if offset_dst is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(src, dst, count, offset_src, offset_dst, flags)

    monkeypatch.setattr(os, "splice", no_splice_to_files)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        conn.raw_sock = a
        assert conn._open_pipe()
        b.sendall(b"0123456789")
        assert asyncio.run(conn.splice_in(10)) == 10
        conn.pipe_to(fd, 5, 6)
        conn.pipe_drop(4)
        assert conn.piped == 0
        assert (tmp_path / "out").read_bytes() == b"\0" * 5 + b"012345"
    finally:
        os.close(fd)
        conn.close()
        a.close()
        b.close()


@needs_splice
async def test_mfetch_splices_a_plain_mirrors_bytes_to_the_file(tmp_path):
    # Without piece hashes, bytes are only written: all but what came with each
    # answer's head (and the head start's, client/headstart.py) go from the socket to
    # the file by splice(2), not through Python.
    data = os.urandom(48 * 1024 * 1024 + 12345)
    async with scripted(range_server(data, mode="plain")) as (url, _):
        code, err = await _mfetch(url, "-o", str(tmp_path / "out"), "-v")
    assert code == 0, err
    assert (tmp_path / "out").read_bytes() == data
    spliced = int(re.search(r"(\d+) bytes came by splice\(2\)", err).group(1))
    assert spliced >= len(data) // 2, err[-2000:]


@needs_splice
async def test_a_splice_waits_for_its_wake_up_mark(monkeypatch):
    # 1000 bytes already waiting, under a 512 KiB mark: no wake-up for them until the
    # patience runs out (each wake-up costs more in Python than such a chunk brings).
    monkeypatch.setattr(wire, "LOWAT_PATIENCE", 0.6)
    end = asyncio.Event()
    async with scripted(_head_then([b"a" * 1000], end=end)) as (url, _):
        c = client(read_timeout=30)
        async with await c.get(url, []) as r:
            r.set_lowat(512 * 1024)
            await asyncio.sleep(0.3)  # the bytes are in, below the mark
            t0 = time.monotonic()
            assert await r.splice() == 1000
            waited = time.monotonic() - t0
            r.pipe_drop(1000)
            assert 0.2 < waited < 10
        end.set()
        await c.close()


@needs_splice
async def test_urgent_data_ends_splicing_and_the_body_is_read_as_usual():
    # splice(2) stops at a TCP urgent byte for good while poll says readable; recv
    # skips it. The connection must fall back to reading, not spin nor time out.
    a, b = b"a" * 5000, b"b" * 7000

    async def handler(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(a) + len(b)))
        await writer.drain()
        for part in (a, None, b):
            await asyncio.sleep(0.1)
            if part is None:
                raw = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
                raw.send(b"!", socket.MSG_OOB)
                raw.close()
            else:
                writer.write(part)
                await writer.drain()
        await asyncio.sleep(5)

    async with scripted(handler) as (url, _):
        c = client(read_timeout=3)
        async with await c.get(url, []) as r:
            conn = r.connection
            got = bytearray()
            while True:
                n = await asyncio.wait_for(r.splice(), 2.5)
                if n is None:
                    break
                r.pipe_drop(n)
                got += b"a" * n  # (a splice can only bring a's bytes)
            while (v := await r.read_view()) is not None:
                got += v
        await c.close()
    assert bytes(got) == a + b and not conn.splices


@needs_splice
async def test_a_pipe_that_cannot_grow_means_reading_as_usual(monkeypatch, tmp_path):
    # Beyond the user's pipe pages a pipe keeps 16 pages or fewer, and splicing through
    # it would wake up far more often than reading: the connection reads instead.
    real = wire.fcntl.fcntl

    def refuse(fd, cmd, arg=0):
        if cmd == wire.F_SETPIPE_SZ:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(fd, cmd, arg)

    monkeypatch.setattr(wire.fcntl, "fcntl", refuse)
    body = os.urandom(4 * wire.BUFFER)

    async def late_body(reader, writer, script):
        await script.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        await asyncio.sleep(0.1)  # the client is splicing by then
        writer.write(body)
        await writer.drain()
        await end.wait()

    end = asyncio.Event()
    async with scripted(late_body) as (url, _):
        c = client()
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            async with await c.get(url, []) as r:
                conn = r.connection
                assert await r.splice() is None
                assert not conn.splices and conn._pipe is None and conn._dup == -1
                got, spliced = await _splice_body(r, fd)
        finally:
            os.close(fd)
        end.set()
        await c.close()
    assert spliced == 0 and got == len(body)
    assert (tmp_path / "out").read_bytes() == body
