"""mfetch's own HTTP/1.1 client for GET requests: the data path without aiohttp.

Why not aiohttp here: a range GET's body is most of what mfetch does, and
aiohttp hands it over as a new ``bytes`` object per read (one more copy of
every byte, and Python work per chunk), and costs ~0.2 s to import on every
run. This client receives a body with :class:`asyncio.BufferedProtocol`
straight into two preallocated buffers per connection (``recv_into``: no
object per chunk); the consumer gets a ``memoryview`` of one buffer while the
socket fills the other, so writing and hashing (in a thread, see
client/fetcher.py) overlap with receiving. A body that is only to be written
(nothing to hash) can instead go from the socket to the file by splice(2)
through a pipe (:meth:`Response.splice`): the kernel copies it once, into the
page cache, and Python only says where.

The protocol logic is pure and tested alone (as h11 does it, see
../shared/style.md): :func:`parse_head` parses a response head,
:func:`framing` decides how its body ends (RFC 9112 §6.3), and
:class:`ChunkedDecoder` decodes a chunked body from whatever slices of bytes it
is fed; a request's bytes come from client/http1.py. The I/O around them is
:class:`Connection` (one socket, plain or TLS via asyncio's ssl) and
:class:`WireClient` (keep-alive connections per origin, at most ``per_host`` in
use at once, connect and read timeouts).

Errors, all :class:`OSError` subclasses (so "try again later" for callers)::

    WireError
     ├── ConnectError         cannot connect (.os_error)
     │    └── CertificateError   the server's TLS certificate is not trusted
     ├── Disconnected         closed before the head was complete
     ├── BodyCutShort         closed before the body was complete
     └── BadResponse          not a response mfetch can read (malformed, or framing it refuses)

A read that waits longer than the read timeout raises :class:`TimeoutError`.
Not here, on purpose: proxies (client/http.py keeps aiohttp for those),
request bodies, pipelining, HTTP/2, content decoding (client/stream.py).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
import re
import socket
import ssl
import sys
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from client.http1 import request_head

BUFFER = 1024 * 1024  # the most each of a connection's two receive buffers holds
MIN_BUFFER = 256 * 1024  # each buffer of a connection beyond the budget
# A wake-up mark (SO_RCVLOWAT) not reached in this long: the source slowed down, so the
# mark drops to one byte and what did arrive is read (the scheduler sees it in time).
LOWAT_PATIENCE = 0.5
BUFFER_BUDGET = 16 * 1024 * 1024  # receive buffers of all of a client's connections
# What asyncio's TLS layer may hold decrypted beyond what it has handed over: the
# rest of one record (16 KiB at most), with room to spare. See connection_made.
TLS_RECORD_SLACK = 32 * 1024
# splice(2) moves a body from the socket to the file through a pipe, never through
# Python's memory (Linux; see Connection.splice_in).
SPLICE = hasattr(os, "splice")
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
MAX_HEAD = 64 * 1024  # a response head longer than this is refused
# The most one read takes while a head is awaited, when the body may be spliced.
# Unbounded, it filled both buffers on loopback (the socket already held a MiB of
# the body): a copy through Python, and buffer pages that stay resident. Not under
# TLS (never spliced): on the server's FIN, asyncio's TLS layer hands over only what
# fits in the buffer offered and drops the rest (see Connection.connection_made).
HEAD_READ = 16 * 1024
MAX_FIELDS = 256
MAX_INTERIM = 16  # informational (1xx) responses accepted before the real one
MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions) or a trailer line
# An idle connection is closed after this long (as aiohttp's pool did), before the
# agent's own keep-alive timeout (75 s) would close it under a request on its way.
KEEPALIVE = 15.0


class WireError(OSError):
    """A connection or a response went wrong (base class)."""


class ConnectError(WireError):
    def __init__(self, message: str, os_error: OSError) -> None:
        super().__init__(message)
        self.os_error = os_error


class CertificateError(ConnectError):
    pass


class Disconnected(WireError):
    pass


class BodyCutShort(WireError):
    pass


class BadResponse(WireError):
    pass


# ---- the pure part ---------------------------------------------------------------


class Headers(dict[str, str]):
    """Response fields by lower-case name; lookups ignore case. A field sent more
    than once is joined with ", " (RFC 9110 §5.3)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


@dataclass(frozen=True, slots=True)
class Head:
    version: str  # "1.0" or "1.1"
    status: int
    reason: str
    headers: Headers


_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def head_end(data: bytes | bytearray) -> int:
    """Where the head in `data` ends (just past its empty line), or -1 if not yet.
    A bare LF ends lines too (RFC 9112 §2.2 lets a recipient accept it), so the head
    ends at the first LF followed by an empty line: LF LF, or LF CR LF."""
    a, b = data.find(b"\n\r\n"), data.find(b"\n\n")
    ends = [i + n for i, n in ((a, 3), (b, 2)) if i >= 0]
    return min(ends) if ends else -1


def parse_head(data: bytes | bytearray) -> Head:
    """Parse a response head (status line and fields, up to and including the empty
    line). Strict: obs-fold, a field name that is not a token (or has whitespace
    before its colon), control characters and a malformed status line are refused
    (RFC 9112 §4, §5). Raises BadResponse."""
    lines = bytes(data).split(b"\n")
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise BadResponse("an empty response")
    m = _STATUS.fullmatch(lines[0])
    if not m:
        raise BadResponse(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    if len(lines) - 1 > MAX_FIELDS:
        raise BadResponse(f"more than {MAX_FIELDS} header fields")
    headers = Headers()
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadResponse("a folded header line (obs-fold)")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadResponse(f"a malformed header line: {line[:60]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadResponse(f"a control character in header {name.decode()!r}")
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        old = dict.get(headers, key)
        dict.__setitem__(headers, key, text if old is None else f"{old}, {text}")
    return Head("1." + m.group(1).decode(), int(m.group(2)),
                (m.group(3) or b"").decode("latin-1"), headers)


@dataclass(frozen=True, slots=True)
class Framing:
    """How a response body ends: `length` bytes, chunked, or at close (neither)."""

    length: int | None
    chunked: bool
    keep_alive: bool  # the connection may carry another request afterwards


def framing(head: Head) -> Framing:
    """RFC 9112 §6.3, for the response to a GET. Raises BadResponse for what it
    cannot frame safely (an unknown transfer-coding, a bad Content-Length)."""
    h = head.headers
    tokens = {t.strip().lower() for t in (h.get("connection") or "").split(",")}
    keep = head.version == "1.1" and "close" not in tokens
    if 100 <= head.status < 200 or head.status in (204, 304):
        return Framing(0, False, keep)
    te = h.get("transfer-encoding")
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise BadResponse(f"a transfer-coding mfetch does not decode: {te!r}")
        # With Content-Length too, the message may be smuggled: not reused (§6.3 ¶3).
        return Framing(None, True, keep and "content-length" not in h)
    cl = h.get("content-length")
    if cl is not None:
        values = {v.strip() for v in cl.split(",")}
        if len(values) != 1 or not all(c in "0123456789" for c in next(iter(values))) \
                or not next(iter(values)):
            raise BadResponse(f"a bad Content-Length: {cl!r}")
        return Framing(int(next(iter(values))), False, keep)
    return Framing(None, False, False)  # until the server closes the connection


class ChunkedDecoder:
    """A chunked body (RFC 9112 §7.1), decoded from slices fed in any sizes.

    ``feed(view)`` returns the data inside it as slices of `view` (no copy) and
    how many bytes of it belong to the body; ``done`` once the last chunk and
    the trailer section are through. Raises BadResponse on anything malformed.
    """

    def __init__(self) -> None:
        self.done = False
        self._left = 0  # data bytes left in this chunk
        self._line = bytearray()
        self._state = "size"  # size, data, data-end, trailer

    def feed(self, view: memoryview) -> tuple[list[memoryview], int]:
        out: list[memoryview] = []
        i, n = 0, len(view)
        while i < n and not self.done:
            if self._state == "data":
                take = min(self._left, n - i)
                out.append(view[i:i + take])
                i += take
                self._left -= take
                if not self._left:
                    self._state = "data-end"
                continue
            j = _find_lf(view, i)
            stop = n if j < 0 else j + 1
            self._line += view[i:stop]
            i = stop
            if len(self._line) > MAX_CHUNK_LINE:
                raise BadResponse("a chunk-size or trailer line too long")
            if j < 0:
                break
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            self._on_line(line)
        return out, i

    def _on_line(self, line: bytes) -> None:
        if self._state == "data-end":
            if line:
                raise BadResponse("a chunk longer than its size")
            self._state = "size"
        elif self._state == "size":
            size = line.split(b";", 1)[0].strip(b" \t")
            if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
                raise BadResponse(f"a bad chunk size: {line[:40]!r}")
            self._left = int(size, 16)
            self._state = "data" if self._left else "trailer"
        elif not line:  # the empty line that ends the trailer section
            self.done = True


def _find_lf(view: memoryview, start: int) -> int:
    # memoryview has no find(); a bytes copy of a short window is cheap (lines are short).
    window = bytes(view[start:start + MAX_CHUNK_LINE + 2])
    j = window.find(b"\n")
    return -1 if j < 0 else start + j


# ---- the I/O -----------------------------------------------------------------------


Buffer = bytearray | mmap.mmap  # a receive buffer: buffer()'s, or a test's bytearray


def buffer(size: int) -> mmap.mmap:
    """A receive buffer of anonymous private memory. A page costs RSS only once bytes
    land in it (a bytearray is zeroed, so all of it at once), and freeing it gives the
    memory back (glibc's heap keeps freed blocks). A spliced body never enters the
    buffers: with sixteen mirrors about 1 MiB of them was resident, where bytearrays
    held 34 MiB."""
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    except OSError as e:  # as a bytearray's would be: never taken for a network error
        raise MemoryError(f"no memory for a receive buffer: {e.strerror}") from None


class Connection(asyncio.BufferedProtocol):
    """One socket. Bytes land in one of two buffers; :meth:`take` hands the filled
    one to the reader (valid until the next take) and the socket goes on filling
    the other. Reading pauses when both are full, so memory stays at 2 x size."""

    def __init__(self, key: str, read_timeout: float | None,
                 bufs: tuple[Buffer, Buffer] | None = None) -> None:
        self.key = key
        self.read_timeout = read_timeout
        self._bufs = bufs or (buffer(BUFFER), buffer(BUFFER))
        self.size = len(self._bufs[0])
        self.owns_buffers = True  # until they are given back to the client's spares
        self._cur = 0
        self._fill = 0
        self.want: int | None = None  # at most this many more bytes are read (None: any)
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.sock: socket.socket | None = None
        self._lowat = 1
        self._timer: asyncio.TimerHandle | None = None
        self._spill = bytearray(256)
        self._spilled = False  # the last get_buffer() handed out _spill
        self._stray = False  # bytes came that no response asked for: never reuse
        self.raw_sock: socket.socket | None = None
        self.idle_since = 0.0
        self.waited = True  # the last take() found nothing received nor queued in the socket
        # splice_in's: a pipe (read end, write end), its size, a duplicate of the socket's
        # descriptor to wait on, and how many bytes wait in the pipe to be moved out.
        self._pipe: tuple[int, int] | None = None
        self._pipe_size = 0
        self._dup = -1
        self._watching: asyncio.AbstractEventLoop | None = None  # _dup is watched
        self._stale = False  # bytes were spliced since the selector last reported _dup
        self.piped = 0
        self.splices = SPLICE

    # -- asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.raw_sock = transport.get_extra_info("socket")
        if transport.get_extra_info("sslcontext") is None:  # TLS: the socket carries records
            self.sock = self.raw_sock
            return
        # On a FIN read while reading is paused, asyncio's TLS layer hands over, once
        # reading resumes, only what fits in the buffer offered, and drops the rest
        # (a close-delimited body came back short). Resuming offers a whole buffer, and
        # the FIN is read only while the layer holds less than its read high-water
        # mark (256 KiB by default), plus the rest of one record: keep that mark a
        # record below a buffer.
        get = getattr(transport, "get_read_buffer_limits", None)
        set_ = getattr(transport, "set_read_buffer_limits", None)
        if get is not None and set_ is not None and get()[1] + TLS_RECORD_SLACK > self.size:
            set_(high=self.size - TLS_RECORD_SLACK)

    def get_buffer(self, sizehint: int) -> memoryview:
        end = self.size if self.want is None else min(self.size, self._fill + self.want)
        if end <= self._fill:
            # Nothing more is wanted (or room is gone) but asyncio still reads: a byte
            # beyond the response (or a FIN) is on its way. asyncio refuses an empty
            # buffer, so take it aside; the connection is then not reused.
            self._pause()
            self._spilled = True
            return memoryview(self._spill)
        self._spilled = False  # (a read into _spill may have found nothing)
        return memoryview(self._bufs[self._cur])[self._fill:end]

    def buffer_updated(self, nbytes: int) -> None:
        if self._spilled:
            self._stray = True
            self._spilled = False
            return
        self._fill += nbytes
        if self.want is not None:
            self.want -= nbytes
        if self._fill >= self.size or self.want == 0:
            self._pause()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._exc is None:
            self._exc = exc
        self._close_pipe()  # the duplicate would keep the socket open (CLOSE_WAIT)
        self._wake()

    # -- the reader's side
    @property
    def usable(self) -> bool:
        """Idle, open, and nothing unexpected arrived (a pooled connection): nothing
        received and nothing waiting in the socket either, so bytes a server sent after
        a body are never read as the next response."""
        return (self.transport is not None and not self.transport.is_closing()
                and not self._eof and self._exc is None and self._fill == 0
                and not self._stray and self.piped == 0 and _readable(self.raw_sock) == 0)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise Disconnected("the connection is closed")
        self.transport.write(data)

    async def take(self) -> memoryview:
        """The bytes received since the last take (the buffer that held those is the
        socket's again); empty at the end of the stream. Raises TimeoutError after
        read_timeout without a byte, or the connection's error."""
        self.waited = self._fill == 0 and self._queued() < MIN_BUFFER
        while self._fill == 0:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return memoryview(b"")
            if self._paused and (self.want is None or self.want > 0):
                self._resume()
            await self._wait()
        buf, n = self._bufs[self._cur], self._fill
        self._cur ^= 1
        self._fill = 0
        if self._paused and (self.want is None or self.want > 0):
            self._resume()
        return memoryview(buf)[:n]

    def idle(self) -> None:
        """Back in the pool: read anything (so a close or stray bytes are noticed)."""
        self.want = None
        self._close_pipe()  # (a pipe per response: none held by idle connections)
        self.set_lowat(1)
        self.idle_since = asyncio.get_running_loop().time()
        if self._paused:
            self._resume()

    def set_lowat(self, value: int) -> None:
        """Wake up only once `value` bytes are readable (SO_RCVLOWAT; see fetcher), or
        a buffer's worth (a pipe's while splicing), or after LOWAT_PATIENCE with
        whatever came."""
        value = min(value, self._pipe_size if self._pipe is not None else self.size)
        if self.sock is not None and value != self._lowat:
            if set_rcvlowat(self.sock, value):
                self._lowat = value
            else:
                self.sock, self._lowat = None, 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._close_pipe()
        self.splices = False

    # -- splice: the body from the socket to the file, not through Python
    @property
    def may_splice(self) -> bool:
        """Bodies may be spliced on this connection: plain TCP (not TLS), and the
        kernel has not refused."""
        return self.splices and self.sock is not None

    def can_splice(self) -> bool:
        """splice_in may be used now: it may splice, nothing received into the
        buffers that would come first, and no error or end seen yet."""
        return (self.may_splice and self._fill == 0
                and not self._eof and self._exc is None and self.transport is not None
                and not self.transport.is_closing())

    async def splice_in(self, limit: int) -> int | None:
        """Move up to `limit` bytes (at most a pipe's worth) from the socket into this
        connection's pipe, waiting for them as take() does (the wake-up mark, the read
        timeout); 0 at the end of the stream. They stay there until pipe_to() or
        pipe_drop() moves them out, which must happen before the next call. None if
        the kernel will not splice this socket (`splices` turns False: read as usual).

        The kernel moves the pages from the socket to the pipe and copies them from the
        pipe into the page cache: one copy instead of recv_into's and pwrite's two, and
        neither through Python's memory. The transport stops reading meanwhile; it
        reads again once the connection is idle."""
        assert self.piped == 0 and self._fill == 0 and self.raw_sock is not None
        if self._pipe is None and not self._open_pipe():
            return None
        self._pause()
        # Below the wake-up mark, wait (as the transport would) rather than take a few
        # bytes now: each wake-up costs more in Python than the bytes it brings.
        ready, woke = _readable(self.raw_sock) >= self._lowat, False
        while True:
            if self._exc is not None:
                raise self._exc
            sock = self.raw_sock.fileno()  # -1 once closed (the number may be reused)
            if self._eof or sock < 0 or self._pipe is None:
                return 0
            if not ready:
                await self._wait_readable()
                ready = woke = True
                continue
            try:
                n = os.splice(sock, self._pipe[1], min(limit, self._pipe_size),
                              flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                if woke:
                    # Readable, yet nothing to splice: urgent data (MSG_OOB) stops
                    # splice(2) for good while poll still says readable (and FIONREAD
                    # says 0). recv skips it.
                    self._no_splice()
                    return None
                ready = False
                continue
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._no_splice()
                return None
            self.piped = n
            self._stale = n > 0 and self._watching is not None
            return n

    def _no_splice(self) -> None:
        """This connection cannot splice: it reads as usual from now on."""
        self.splices = False
        self._close_pipe()

    @property
    def piping(self) -> bool:
        """The pipe is open (the connection was not lost since bytes went into it)."""
        return self._pipe is not None

    def pipe_to(self, fd: int, offset: int, n: int) -> None:
        """Move `n` of the bytes in the pipe to file `fd` at `offset`. Raises OSError
        (the file's: a full disk...); a file system that cannot take a splice gets
        them by read and pwrite."""
        self._move_out(fd, offset, n)

    def pipe_drop(self, n: int) -> None:
        """Throw away `n` of the bytes in the pipe (a piece another request wrote, the
        bytes before the first piece from a source that ignores ranges)."""
        self._move_out(_devnull(), None, n)

    def _move_out(self, fd: int, offset: int | None, n: int) -> None:
        if self._pipe is None or not 0 <= n <= self.piped:
            raise _dry()
        pipe, done = self._pipe[0], 0
        while done < n:
            try:
                k = os.splice(pipe, fd, n - done,
                              offset_dst=None if offset is None else offset + done)
            except BlockingIOError:
                k = 0
            except OSError as e:
                if offset is None or e.errno not in (errno.EINVAL, errno.EOPNOTSUPP,
                                                     errno.ENOSYS):
                    raise
                k = _read_write(pipe, fd, offset + done, n - done)
            if k <= 0:
                raise _dry()
            self.piped -= k
            done += k

    def _open_pipe(self) -> bool:
        """The pipe, 1 MiB (a pipe holds 16 pages by default) and non-blocking (a
        miscount raises instead of hanging), and a duplicate of the socket's
        descriptor: asyncio watches the transport's own descriptor for the transport
        only. False (and `splices` False) if the system will not give them."""
        assert self.raw_sock is not None
        try:
            self._pipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._dup = os.dup(self.raw_sock.fileno())
            self._pipe_size = fcntl.fcntl(self._pipe[1], F_SETPIPE_SZ, BUFFER)
        except OSError:
            # No descriptors to spare, or a pipe that cannot grow (beyond the user's
            # pipe pages, /proc/sys/fs/pipe-user-pages-soft): with 16 pages, splicing
            # would wake up far more often than reading does.
            self._no_splice()
            return False
        return True

    def _close_pipe(self) -> None:
        """Close the pipe and the duplicate (after the selector forgets it: a closed
        number is soon another file's). Bytes still in the pipe are lost with it: the
        connection is then never used again (`piped` stays, see usable)."""
        self._unwatch()
        fds = (*(self._pipe or ()), self._dup)
        self._pipe, self._dup = None, -1  # first: never closed twice
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    async def _wait_readable(self) -> None:
        """Wait until the socket is readable (at the wake-up mark), as _wait() does.
        The duplicate stays watched from one wait to the next: adding it to asyncio's
        selector and removing it again for each chunk was a tenth of the time mfetch
        spent in Python with sixteen mirrors. _close_pipe() forgets it, and so does
        _on_readable() when no one waits."""
        if self._watching is None:
            loop = asyncio.get_running_loop()
            loop.add_reader(self._dup, self._on_readable)
            self._watching, self._stale = loop, False
        await self._wait()

    def _on_readable(self) -> None:
        if self._waiter is None:
            # No one waits (the bytes are being moved, or the response was left): forget
            # the duplicate until the next wait, or the selector would report it on
            # every turn of the loop.
            self._unwatch()
        elif self._stale:
            # Reported before the last splice took the bytes (the selector is polled
            # before the woken reader runs): not news. If it was, the selector, level-
            # triggered, says so again on the next turn.
            self._stale = False
        else:
            self._wake()

    def _unwatch(self) -> None:
        if self._watching is not None:
            self._watching.remove_reader(self._dup)
            self._watching = None

    def _queued(self) -> int:
        """Bytes waiting in the socket, not yet read (0 under TLS or if unknown)."""
        return 0 if self.sock is None else _readable(self.sock)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        fut = self._waiter = loop.create_future()
        if self._lowat > 1:
            patience = LOWAT_PATIENCE if self.read_timeout is None \
                else min(LOWAT_PATIENCE, self.read_timeout)
            self._timer = loop.call_later(patience, self._impatient, fut, patience)
        elif self.read_timeout is not None:
            self._timer = loop.call_later(self.read_timeout, _expire, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _impatient(self, fut: asyncio.Future[None], waited: float) -> None:
        """The wake-up mark was not reached in time: wake for any byte from now on
        (setting the mark makes the kernel report the socket readable at once if bytes
        are waiting, since Linux 4.18; before, at the next byte), and let the read
        timeout run the rest of its course."""
        self.set_lowat(1)
        self._timer = None
        if self.read_timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, self.read_timeout - waited), _expire, fut)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()


def set_rcvlowat(sock: socket.socket, value: int) -> bool:
    """SO_RCVLOWAT on `sock`: reads wake up only once `value` bytes are waiting. False
    if the socket refuses (then the caller stops trying)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
        return True
    except OSError:
        return False


_null = -1


def _devnull() -> int:
    """/dev/null, open for writing (bytes spliced away go there)."""
    global _null
    if _null < 0:
        _null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return _null


def _read_write(pipe: int, fd: int, offset: int, n: int) -> int:
    """Up to `n` bytes from `pipe` to `fd` at `offset`, through memory."""
    try:
        data = os.read(pipe, n)
    except BlockingIOError:
        return 0
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


def _dry() -> RuntimeError:
    return RuntimeError("mfetch bug: the pipe holds fewer bytes than counted")


def _readable(sock: socket.socket | None) -> int:
    """Bytes waiting in `sock`'s receive queue (FIONREAD; 0 if unknown or closed)."""
    if sock is None or sock.fileno() < 0:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4),
                              sys.byteorder)
    except OSError:
        return 0


def _connect_error(e: OSError, host: str, port: int) -> ConnectError:
    where = f"cannot connect to {host}:{port}"
    if isinstance(e, ssl.SSLCertVerificationError):
        return CertificateError(f"{where}: {e.verify_message}", e)
    if isinstance(e, ssl.SSLError):
        return ConnectError(f"{where}: TLS: {e.reason or e}", e)
    return ConnectError(f"{where}: {e.strerror or e}", e)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Response:
    """A response whose head has arrived. Read the body with :meth:`read_view` (or
    :meth:`read`), then :meth:`release` (``async with`` does): the connection goes
    back to the pool only if the body was read to its end."""

    def __init__(self, client: WireClient, conn: Connection, url: str, head: Head,
                 frame: Framing, first: memoryview) -> None:
        self._client, self._conn = client, conn
        self.url = url
        self.status = head.status
        self.reason: str | None = head.reason
        self.headers = head.headers
        self.version = head.version
        self.content_length: int | None = frame.length if not frame.chunked else None
        self._frame = frame
        self._left = frame.length  # body bytes still to come (None: unknown)
        self._chunked = ChunkedDecoder() if frame.chunked else None
        self._queue: list[memoryview] = []
        self._reusable = frame.keep_alive
        self._done = False
        self._released = False
        self._pending: memoryview | None = None  # the rest of a view read() split
        self.received = 0  # body bytes handed out so far
        self.waited = True  # the last read_view() had to wait for the network
        if self._left is not None:
            if len(first) > self._left:  # more than the body: not this response's bytes
                self._reusable = False
                first = first[:self._left]
            self._left -= len(first)
            conn.want = self._left
            if not self._left:
                conn._pause()  # the whole body came with the head: read no further
        if first and self._chunked is not None:
            self._dechunk(first)
        elif first:
            self._queue.append(first)
        self._check_end()

    @property
    def connection(self) -> Connection:
        return self._conn

    async def read_view(self) -> memoryview | None:
        """The next part of the body, valid until the next call (or release); None at
        its end. Raises BodyCutShort, BadResponse, TimeoutError, OSError."""
        while not self._queue:
            if self._done:
                return None
            raw = await self._conn.take()
            self.waited = self._conn.waited
            if not raw:
                if self._left is None and self._chunked is None:
                    self._done = True  # delimited by the close (RFC 9112 §6.3 ¶8)
                    continue
                self._reusable = False
                raise BodyCutShort("the response body was cut short")
            if self._chunked is not None:
                self._dechunk(raw)
            else:
                if self._left is not None:
                    if len(raw) > self._left:
                        self._reusable = False
                        raw = raw[:self._left]
                    self._left -= len(raw)
                self._queue.append(raw)
            self._check_end()
        view = self._queue.pop(0)
        self.received += len(view)
        return view

    async def splice(self) -> int | None:
        """Move the next part of the body (at most a pipe's worth) into the connection's
        pipe instead of a buffer (Connection.splice_in); move it out with pipe_to() or
        pipe_drop(). Its length, 0 at the end of the body; None when this response
        cannot be spliced now (TLS, no length, chunked, bytes already in a buffer):
        read_view() then. Raises as read_view() does."""
        if self._queue or self._chunked is not None or self._left is None \
                or self._pending is not None:
            return None
        if self._done:
            return 0
        conn = self._conn
        if not conn.can_splice():
            return None
        n = await conn.splice_in(self._left)
        if n is None:
            return None
        if not n:
            self._reusable = False
            raise BodyCutShort("the response body was cut short")
        self._left -= n
        conn.want = self._left
        self.received += n
        self.waited = True
        self._check_end()
        return n

    def pipe_to(self, fd: int, offset: int, n: int) -> None:
        self._conn.pipe_to(fd, offset, n)

    def pipe_drop(self, n: int) -> None:
        self._conn.pipe_drop(n)

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the body (all of it when n < 0) as a copy; b"" at its end."""
        if n < 0:
            out = bytearray()
            while (v := await self.read_view()) is not None:
                out += v
            return bytes(out)
        if self._pending is None:
            v = await self.read_view()
            if v is None:
                return b""
            self._pending = v
        v, self._pending = self._pending[:n], (self._pending[n:] or None)
        return bytes(v)

    def set_lowat(self, value: int) -> None:
        self._conn.set_lowat(value)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._client._release(self._conn, self._reusable and self._done and not self._queue)

    async def __aenter__(self) -> Response:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def _dechunk(self, raw: memoryview) -> None:
        assert self._chunked is not None
        parts, used = self._chunked.feed(raw)
        if used < len(raw):
            self._reusable = False  # bytes after the last chunk
        self._queue.extend(p for p in parts if p)

    def _check_end(self) -> None:
        if self._left == 0 or (self._chunked is not None and self._chunked.done):
            self._done = True


class WireClient:
    """Keep-alive connections per origin (scheme, host, port), at most `per_host` in
    use at a time for each. `tls` returns the SSL context for https origins."""

    def __init__(self, *, connect_timeout: float | None, read_timeout: float | None,
                 tls: Callable[[], ssl.SSLContext], per_host: int | None = None) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._tls = tls
        self._per_host = per_host
        self._idle: dict[str, list[Connection]] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._all: set[Connection] = set()
        self.connections_opened = 0  # for tests: keep-alive reuse is visible
        # Receive buffers, in use or spare: a closed connection's go to the next one,
        # so churning connections never grow the heap (glibc keeps freed blocks:
        # fragments of 1 MiB buffers made peak RSS 92 MiB, not 55). Sizes come from
        # a budget: BUFFER while it lasts, MIN_BUFFER beyond it.
        self._buffered = 0
        self._spare: list[tuple[Buffer, Buffer]] = []

    async def get(self, url: str, headers: Iterable[tuple[str, str]]) -> Response:
        """Send GET `url` and wait for its head (1xx answers are skipped). Raises
        ValueError (a header or URL that cannot be sent), the WireError family,
        TimeoutError."""
        return await self.request("GET", url, headers)

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]],
                      body: bytes = b"") -> Response:
        """As get(), for any method; a `body` goes with a Content-Length (small JSON
        calls to the local agent)."""
        u = urlsplit(url)
        tls = u.scheme == "https"
        port = u.port or (443 if tls else 80)
        host = u.hostname or ""
        key = f"{u.scheme}://{host}:{port}"
        if body or method in ("POST", "PUT"):
            headers = [*headers, ("Content-Length", str(len(body)))]
        data = request_head(url, headers, method) + body
        gate = None
        if self._per_host:
            gate = self._gates.setdefault(key, asyncio.Semaphore(self._per_host))
            await gate.acquire()
        try:
            for attempt in range(2):
                conn, reused = self._pooled(key), True
                if conn is None:
                    conn, reused = await self._connect(key, host, port, tls), False
                try:
                    return await self._exchange(conn, url, data, method)
                except (Disconnected, ConnectionError):
                    self._drop(conn)
                    # A kept-alive connection the server closed meanwhile: once more, anew,
                    # but only GET and HEAD (idempotent, RFC 9110 §9.2.2): a POST may
                    # have been acted on already.
                    if not reused or attempt or method not in ("GET", "HEAD"):
                        raise
                except BaseException:
                    self._drop(conn)
                    raise
            raise AssertionError("unreachable")
        except BaseException:
            if gate is not None:
                gate.release()
            raise

    async def close(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()

    def _pooled(self, key: str) -> Connection | None:
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < KEEPALIVE:
                return conn
            self._drop(conn)
        return None

    async def _connect(self, key: str, host: str, port: int, tls: bool) -> Connection:
        loop = asyncio.get_running_loop()
        conn = self._new_connection(key)
        try:
            ctx = self._tls() if tls else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (Ctrl-C)
            # that lands just as the connection is made.
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: conn, host, port, ssl=ctx,
                                             server_hostname=host if tls else None)
        except BaseException as e:
            conn.close()
            self._give_back(conn)
            if isinstance(e, OSError) and not isinstance(e, TimeoutError):
                raise _connect_error(e, host, port) from None
            raise
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._all.add(conn)
        self.connections_opened += 1
        return conn

    def _new_connection(self, key: str) -> Connection:
        """A connection with a spare pair of buffers, else new ones: big while the
        budget allows (fewer wake-ups per byte, what loopback speed needs), the
        smallest beyond it (32 connections stay within a few MiB)."""
        if self._spare:  # the biggest first
            return Connection(key, self.read_timeout, self._spare.pop())
        size = max(MIN_BUFFER, min(BUFFER, (BUFFER_BUDGET - self._buffered) // 2))
        self._buffered += 2 * size
        return Connection(key, self.read_timeout, (buffer(size), buffer(size)))

    def _give_back(self, conn: Connection) -> None:
        """A closed connection's buffers, for the next one (never read again: closed).
        Spares never outnumber the most connections open at once: memory stays at
        its peak, never grows with churn."""
        if conn.owns_buffers:
            conn.owns_buffers = False
            self._spare.append(conn._bufs)
            self._spare.sort(key=lambda pair: len(pair[0]))

    async def _exchange(self, conn: Connection, url: str, data: bytes,
                        method: str = "GET") -> Response:
        conn.write(data)
        acc = bytearray()  # the head so far (at most MAX_HEAD + 4 bytes are copied)
        interim = 0
        bounded = conn.may_splice
        while True:
            conn.want = HEAD_READ if bounded else None
            raw = await conn.take()
            if not raw:
                raise Disconnected("the server closed the connection" if not acc else
                                   "the server closed the connection within the head")
            pos = 0  # raw[:pos] is in acc
            while True:
                take = min(len(raw) - pos, MAX_HEAD + 4 - len(acc))
                acc += raw[pos:pos + take]
                pos += take
                end = head_end(acc)
                if end < 0 or end > MAX_HEAD:
                    if len(acc) > MAX_HEAD:
                        raise BadResponse(f"a response head longer than {MAX_HEAD} bytes")
                    break  # all of raw is in acc: read on
                head = parse_head(acc[:end])
                body_start = pos - (len(acc) - end)  # where the body begins in raw
                if not 100 <= head.status < 200:
                    conn.want = None  # (the body's length, if it has one: Response's)
                    if bounded:
                        # Nothing more is read until the body is asked for (take()
                        # reads on), so none of it enters a buffer if it is spliced.
                        conn._pause()
                    frame = framing(head)
                    if method == "HEAD":  # no body, whatever the fields say (RFC 9110 §9.3.2)
                        frame = Framing(0, False, frame.keep_alive)
                    return Response(self, conn, url, head, frame, raw[body_start:])
                if head.status == 101:
                    raise BadResponse("101 Switching Protocols in answer to a plain request")
                interim += 1  # informational (100, 103): the real answer follows
                if interim > MAX_INTERIM:
                    raise BadResponse(f"more than {MAX_INTERIM} informational responses")
                del acc[:]
                acc += raw[body_start:pos]  # what followed that head, already taken
                # (raw[pos:] is copied on the next turn)

    def _release(self, conn: Connection, reusable: bool) -> None:
        gate = self._gates.get(conn.key)
        if gate is not None:
            gate.release()
        if reusable and conn.usable:
            conn.idle()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        conn.close()
        self._all.discard(conn)
        self._give_back(conn)
