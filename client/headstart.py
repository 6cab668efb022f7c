"""The head start: the first bytes flow while Python is still starting up.

From exec to its first request mfetch spends ~0.2 s loading: the interpreter and
site ~50 ms, asyncio ~95 ms, mfetch's own modules ~45 ms (measured on make
bench's machine). Over four mirrors at 370 Mbit/s that is 9 MB not fetched, 2%
of make bench's four-mirror case. So the console script, before it imports any
of that, asks each mirror on the command line for a different span of the file
(mirror i for bytes [i*SPAN, (i+1)*SPAN)), on a plain socket in a thread of its
own, and the answers gather in memory while the rest loads. Then client/cli.py:

- takes each answer's head as that mirror's probe (size, validator, ranges),
  but only if the request sent is byte for byte the one the configured client
  would have sent first (same headers, no proxy); otherwise the answer is
  thrown away and the mirror is probed as usual;
- hands the whole pieces among the body bytes received to the fetcher, as that
  mirror's first pieces (client/fetcher.py ``Fetcher.adopt``), and the rest of
  the answer, still coming on the same connection, as that mirror's first
  request (:class:`EarlyBody`, read on the event loop from then on).

It starts only when nothing could make an early request wrong: every target a
plain ``http://`` URL without credentials, only flags that change no request,
no proxy, rate limit or user agent set in the environment or in the config file
(which is only searched for those words here: YAML loads later), and no control
file of an earlier run in the output's folder (a resume has pieces already). Anything
unusual in an answer (a redirect, no byte ranges, a slow or broken server) just
means that mirror is probed as usual, which reports it properly. `mfetch -v`
says what the head start brought.

This module imports nothing heavier than ``mmap``, on purpose: every millisecond
before the early requests go out is a millisecond the mirrors sit idle.
"""
from __future__ import annotations

import _socket  # not socket: it imports selectors and enum, 16 ms before any request
import _thread  # not threading: it imports functools and collections, 6 ms
import itertools
import mmap
import os
import sys
import time

from client.http1 import BASE_HEADERS, USER_AGENT, request_head, split_plain

TYPE_CHECKING = False  # not typing's: importing typing costs 10 ms here
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from client.http import HttpClient, Probe
    from client.plan import Plan

SPAN = 8 * 1024 * 1024  # asked of each mirror: ~0.3 s at 200 Mbit/s, more than start-up
SPANS_BUDGET = 32 * 1024 * 1024  # all spans together (memory, until the pieces are written)
MIN_SPAN = 1024 * 1024
MAX_HEAD = 64 * 1024  # room for the answer's head (client/wire.py refuses longer ones)
MAX_MIRRORS = 16
CONNECT_TIMEOUT = 2.0
POLL = 0.01  # how often a reading thread looks whether it is to stop
JOIN_TIMEOUT = 1.0
SWITCH_INTERVAL = 0.0005  # the GIL's, while the early requests are read (default 5 ms)
# After its first bytes, a reading thread wakes up only once this many have come
# (SO_RCVLOWAT), or after EARLY_PATIENCE with what did, not for every few segments,
# each a fight for the GIL.
EARLY_MARK = 64 * 1024
EARLY_PATIENCE = 0.05  # with nothing at the mark for this long, what did come is read

# Flags that change no request (anything else, or a --flag=value form: no head start).
_PLAIN_FLAGS = frozenset({"--json", "-q", "--quiet", "-v", "--verbose", "--force", "--sync"})
_VALUE_FLAGS = frozenset({"-o", "--output", "--sha256", "--connections", "--max-connections",
                          "--max-host-connections", "--stall-timeout"})
# Settings that would change the early requests (or the rate they may take).
_SETTINGS = ("proxy", "limit_rate", "user_agent")


class Early:
    """One mirror's early request and what has come back so far."""

    __slots__ = (
        "adopted",
        "body_end",
        "buf",
        "ended",
        "error",
        "first",
        "got",
        "head_len",
        "probe",
        "request",
        "sock",
        "span",
        "stopping",
        "thread",
        "url",
    )

    def __init__(self, url: str, first: int, span: int = SPAN) -> None:
        self.url = url
        self.first = first  # the span asked for begins here
        self.span = span
        self.request = request_head(url, [("User-Agent", USER_AGENT), *BASE_HEADERS.items(),
                                          ("Range", self.range)])
        # Anonymous memory: pages cost RSS only once bytes land in them.
        self.buf = mmap.mmap(-1, MAX_HEAD + span, flags=mmap.MAP_PRIVATE)
        self.got = 0  # bytes of the answer (head and body) in buf
        self.sock: _socket.socket | None = None
        self.error: OSError | None = None
        self.thread: _Thread | None = None
        self.stopping = False
        self.ended = False  # the thread is done reading (end of answer, error, or stop)
        self.head_len = 0  # set by probe(): the head's length, when the answer is usable
        self.body_end = 0  # ... and where its body ends in buf, when the body is usable too
        self.probe: Probe | None = None
        self.adopted = False  # an EarlyBody reads the rest (and owns socket and buffer)

    @property
    def range(self) -> str:
        return f"bytes={self.first}-{self.first + self.span - 1}"

    @property
    def span_end(self) -> int:
        """Where in the file the answer's body ends (with probe(), once usable)."""
        return self.first + self.body_end - self.head_len

    def free(self) -> None:
        """Give the buffer's memory back; if a view of it is still held (a caller's,
        or a traceback's being unwound), the memory goes with that view instead."""
        if not self.buf.closed:
            try:
                self.buf.close()
            except BufferError:
                pass

    def rest(self, offset: int) -> EarlyBody | None:
        """The rest of this answer from file offset `offset` on, to read on the event
        loop (after :meth:`HeadStart.stop`), or None if there is none to read."""
        if not self.body_end or self.sock is None or self.error is not None \
                or not self.first <= offset <= self.first + min(self.got, self.body_end) \
                - self.head_len or self.got >= self.body_end:
            return None
        return EarlyBody(self, offset)


class HeadStart:
    """Early requests to some mirrors, each read by a thread until :meth:`stop`."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.began = time.monotonic()
        span = span_for(len(urls))
        self.early = [Early(u, i * span, span) for i, u in enumerate(urls)]
        self._lock = _thread.allocate_lock()
        self._views: list[memoryview] = []  # handed out by pieces(), released by close()
        self.stopped = False
        # While the main thread imports (holding the GIL), a reading thread back from
        # a system call (connected, bytes in) would wait up to the switch interval
        # (5 ms) for the GIL at every step: time lost before each early request, and
        # an unread receive buffer that holds back TCP's ramp-up.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            for e in self.early:
                e.thread = _Thread(self._fetch, e)
        except BaseException:  # no thread to spare: the ones started stop, nothing stays
            self.close()
            raise

    def _fetch(self, e: Early) -> None:
        try:
            self._read(e)
        finally:
            e.ended = True

    def _read(self, e: Early) -> None:
        plain = split_plain(e.url)
        assert plain is not None  # see _mirrors
        try:
            sock = _connect(plain[1], plain[2])
        except OSError as err:
            e.error = err
            return
        with self._lock:
            if e.stopping:
                sock.close()
                return
            e.sock = sock
        view = memoryview(e.buf)
        try:
            sock.sendall(e.request)
            # Woken every POLL to see whether stop() was called: the socket stays
            # open, for the fetcher to read the rest of the answer.
            sock.settimeout(POLL)
            mark = 1  # the socket's wake-up mark (0: the kernel takes none, so 1)
            waited = 0.0  # since the last bytes
            while e.got < len(view) and not e.stopping:
                try:
                    n = sock.recv_into(view[e.got:])
                except TimeoutError:
                    # Nothing at the mark for a while: a head that came in parts, the
                    # end of the answer, or a slow link. Take what came, then wait on.
                    waited += POLL
                    if mark > 1 and waited >= EARLY_PATIENCE:
                        mark = _set_mark(sock, 1, mark)
                    continue
                if not n:
                    break
                e.got += n
                waited = 0.0
                want = max(1, min(EARLY_MARK, len(view) - e.got))
                if mark and mark != want:
                    mark = _set_mark(sock, want, mark)
            # The fetcher, if it takes the rest of the answer, counts on a mark of 1
            # (an error here means it does not take it).
            if mark > 1 and _set_mark(sock, 1, mark) > 1:
                raise OSError("the early socket's wake-up mark cannot be lowered")
        except OSError as err:
            e.error = err
        finally:
            view.release()

    def stop(self) -> None:
        """Stop reading (what was received stays, and the connections stay open);
        a thread still connecting is left to notice on its own."""
        if self.stopped:
            return
        self.stopped = True
        sys.setswitchinterval(self._switch)
        with self._lock:
            for e in self.early:
                e.stopping = True
        for e in self.early:
            if e.sock is not None and e.thread is not None:
                e.thread.join(POLL + JOIN_TIMEOUT)
                if e.thread.is_alive():  # cannot happen: it looks every POLL; never trust it
                    e.head_len = e.body_end = 0

    def close(self) -> None:
        """Close what the fetcher did not take over, and give back its memory (the
        views :meth:`pieces` returned end here)."""
        self.stop()
        for view in self._views:
            view.release()
        for e in self.early:
            if e.sock is not None:
                e.sock.close()
            if not e.adopted and (e.thread is None or not e.thread.is_alive()):
                e.free()

    # ---- after start-up (client/cli.py); heavy modules are loaded by now ----

    async def probe(self, http: HttpClient, url: str, patience: float) -> Probe | None:
        """The probe the early answer from `url` makes, or None (then probe as usual):
        None if no early request went there, if it is not exactly what `http` would
        have sent first, or if it failed, or its answer is unusable or incomplete
        after `patience` seconds (a normal probe's wait for its head). The body
        waits for :meth:`pieces`, if it is exactly the span asked for (the same
        checks as the fetcher's, client/http.py check_range_response)."""
        import asyncio
        import logging

        from client import wire
        from client.http import check_range_response, probe_answer
        from common.errors import SourceError

        e = next((e for e in self.early if e.url == url), None)
        if e is None:
            return None
        end, why = -1, ""
        if http.first_request(e.url, {"Range": e.range}) != e.request:
            why = "the configured client sends another request"
        else:
            deadline = asyncio.get_running_loop().time() + patience
            # Usually the head is in long before this runs; else it comes on the early
            # connection sooner than on a new one (which would wait just as long).
            while (end := wire.head_end(e.buf[:min(e.got, MAX_HEAD)])) < 0 and not e.ended \
                    and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
            if end < 0:
                why = f"no complete answer ({e.error or 'none'})"
        if not why:
            try:
                head = wire.parse_head(e.buf[:end])
                length = wire.framing(head).length
                e.probe = probe_answer(e.url, e.url, head.status, head.reason, head.headers,
                                       length, e.first)
            except (wire.BadResponse, SourceError) as err:
                why = str(err)
        if why or e.probe is None:
            logging.getLogger("mfetch").debug("head start: %s: not used (%s)", e.url, why)
            return None
        e.head_len = end
        size = e.probe.size
        if head.status == 206 and length is not None and size is not None:
            span_end = min(e.first + e.span, size)
            bad = check_range_response(head.headers, e.first, span_end, size,
                                       e.probe.validator)
            if bad is None and length == span_end - e.first:
                e.body_end = end + length
            elif bad is not None:
                logging.getLogger("mfetch").debug("head start: %s: body not used (%s)",
                                                  e.url, bad.message)
        return e.probe

    def pieces(self, plan: Plan) -> list[tuple[int, int, memoryview, Early]]:
        """Stop the threads, and return what the mirrors in `plan` sent of the file:
        (source, offset, bytes, early) per mirror, the bytes valid until
        :meth:`close`; ``early.rest()`` continues the answer."""
        self.stop()
        urls = [s.url for s in plan.sources]
        out = []
        for e in self.early:
            if e.body_end and e.url in urls and e.probe is not None \
                    and e.probe.size == plan.size:
                whole = memoryview(e.buf)
                data = whole[e.head_len:min(e.got, e.body_end)]
                self._views += [data, whole]
                out.append((urls.index(e.url), e.first, data, e))
        return out


class EarlyBody:
    """The rest of an early answer, from file offset `offset` on, read on the event
    loop: it reads like client/http.py's Response, as client/fetcher.py streams
    one. The bytes already received come first; then the early buffer is given
    back and the rest is received into one of wire.MIN_BUFFER bytes. Owns the
    connection from now on."""

    def __init__(self, e: Early, offset: int) -> None:
        import asyncio
        import socket

        from client import wire

        self._asyncio, self._wire = asyncio, wire  # loaded by now: kept, not looked up

        assert e.sock is not None and e.thread is not None and not e.thread.is_alive()
        self.e = e
        e.adopted = True
        self.sock = socket.socket(fileno=e.sock.detach())
        self.sock.setblocking(False)
        e.sock = None
        self.pos = e.head_len + offset - e.first  # the early bytes still to hand out
        self.early_end = min(e.got, e.body_end)
        self.left = e.span_end - offset  # body bytes still to hand out
        self.content_length: int | None = self.left
        self.received = 0
        self.waited = False
        self._lowat = 1
        self._early_view: memoryview | None = None
        # Outside wire's budget (client/wire.py), so the small size: one per mirror.
        self._size = min(wire.MIN_BUFFER, max(1, self.left))
        self._buf: mmap.mmap | None = None

    async def read_view(self) -> memoryview | None:
        if self.left <= 0:
            return None
        if self.pos < self.early_end:
            view = self._early_view = memoryview(self.e.buf)[self.pos:self.early_end]
            self.pos = self.early_end
            self.waited = False
        else:
            self._forget_early()
            if self._buf is None:
                self._buf = self._wire.buffer(self._size)
            loop = self._asyncio.get_running_loop()
            # As wire.Connection does: a mark not reached soon drops to one byte, which
            # wakes the wait up with what came. (Not a timeout around the receive: one
            # that fires as bytes land would drop them.)
            impatient = loop.call_later(self._wire.LOWAT_PATIENCE, self.set_lowat, 1) \
                if self._lowat > 1 else None
            try:
                room = memoryview(self._buf)[:min(len(self._buf), self.left)]
                n = await loop.sock_recv_into(self.sock, room)
            finally:
                if impatient is not None:
                    impatient.cancel()
            if not n:
                return None
            view = room[:n]
            self.waited = True
        self.left -= len(view)
        self.received += len(view)
        return view

    def set_lowat(self, value: int) -> None:
        """Wake up only once `value` bytes are readable (see client/fetcher.py), or
        after wire.LOWAT_PATIENCE with whatever came."""
        value = min(value, self._size, max(1, self.left))
        if value != self._lowat and self._wire.set_rcvlowat(self.sock, value):
            self._lowat = value

    def release(self) -> None:
        self.sock.close()
        self._forget_early()

    def _forget_early(self) -> None:
        """The early bytes are handed out and used: give their memory back."""
        if self._early_view is not None:
            self._early_view.release()
            self._early_view = None
        self.e.free()


class _Thread:
    """A thread started on _thread, with threading.Thread's join() and is_alive()."""

    __slots__ = ("_running",)

    def __init__(self, target: Callable[[Early], None], arg: Early) -> None:
        self._running = _thread.allocate_lock()  # held while the thread runs
        self._running.acquire()
        try:
            _thread.start_new_thread(self._run, (target, arg))
        except BaseException:
            self._running.release()
            raise

    def _run(self, target: Callable[[Early], None], arg: Early) -> None:
        try:
            target(arg)
        finally:
            self._running.release()

    def join(self, timeout: float = -1) -> None:
        if self._running.acquire(timeout=timeout):
            self._running.release()

    def is_alive(self) -> bool:
        return self._running.locked()


def _set_mark(sock: _socket.socket, mark: int, now: int) -> int:
    """Set `sock`'s wake-up mark (SO_RCVLOWAT; poll, and so a recv with a timeout,
    waits for that many bytes) from `now` to `mark`. Returns the mark in effect:
    `mark`, or if the kernel refuses, `now` (0 if that is 1: no mark, a wake-up for
    every few segments as without one)."""
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVLOWAT, mark)
    except OSError:
        return now if now > 1 else 0
    return mark


def _connect(host: str, port: int) -> _socket.socket:
    """A connected TCP socket (blocking): socket.create_connection, with _socket.
    The host goes to getaddrinfo as bytes (split_plain's are ASCII): a str is
    encoded with the idna codec, whose first import (re, stringprep, unicodedata)
    cost 14 ms before the first early request."""
    error: OSError = OSError(f"{host}: no address")
    for family, kind, proto, _, address in _socket.getaddrinfo(host.encode("ascii"), port, 0,
                                                                _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
            return sock
        except OSError as err:
            error = err
            sock.close()
    raise error


def begin(argv: Sequence[str], environ: Mapping[str, str]) -> HeadStart | None:
    """Send the early requests if `argv` is a plain fetch of http:// mirrors (see the
    module docstring), else None."""
    urls = _mirrors(argv)
    if not urls or any(environ.get(f"MFETCH_{s.upper()}") for s in _SETTINGS):
        return None
    if _config_mentions_settings(environ) or _resuming(argv):
        return None
    try:
        return HeadStart(urls)
    except (OSError, RuntimeError):  # no memory or threads to spare: no head start
        return None


def span_for(mirrors: int) -> int:
    """The span asked of each of `mirrors` mirrors: SPAN, less with many (all of
    them within SPANS_BUDGET), a power of two (so that it holds whole pieces)."""
    span = SPAN
    while span > MIN_SPAN and span * mirrors > SPANS_BUDGET:
        span //= 2
    return span


def _resuming(argv: Sequence[str]) -> bool:
    """Whether a download to the same output may be resumed (its control file is
    there): the early spans would fetch pieces it already has."""
    out = None
    for flag, value in itertools.pairwise(argv):
        if flag in ("-o", "--output"):
            out = value
    if out and not os.path.isdir(out):
        return os.path.exists(out + ".mfetch")
    try:
        return any(name.endswith(".mfetch") for name in os.listdir(out or "."))
    except OSError:
        return False


def _mirrors(argv: Sequence[str]) -> list[str]:
    """The http:// mirrors of a plain fetch, one per host:port, or [] if anything
    else is asked."""
    targets = []
    args = iter(argv)
    for a in args:
        if a in _PLAIN_FLAGS:
            continue
        if a in _VALUE_FLAGS:
            next(args, None)
            continue
        if a.startswith("-"):
            return []
        targets.append(a)
    urls: list[str] = []
    hosts: set[tuple[str, int]] = set()
    for t in targets:
        host = _plain_http(t)
        if host is None:
            return []
        if host not in hosts and len(urls) < MAX_MIRRORS:
            hosts.add(host)
            urls.append(t)
    return urls


def _plain_http(url: str) -> tuple[str, int] | None:
    """(host, port) of a plain http:// URL (http1.split_plain: no credentials, a
    lower-case ASCII host, nothing to quote), else None."""
    plain = split_plain(url)
    if plain is None or plain[0] != "http":
        return None
    return plain[1], plain[2]


def _config_mentions_settings(environ: Mapping[str, str]) -> bool:
    """Whether the config file (client/config.py finds it the same way) may set
    something in _SETTINGS: a word search, and any backslash (an escape can spell a
    key in a quoted YAML string), so at worst a false alarm."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    try:
        with open(os.path.join(base, "mfetch", "config.yaml"), "rb") as f:
            text = f.read(1 << 20).lower()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cli reports it; no head start meanwhile
    # A backslash may escape a key's letters in a quoted YAML key: then no guessing.
    return b"\\" in text or any(s.encode() in text or s.replace("_", "-").encode() in text
                                 for s in _SETTINGS)


def entry() -> None:
    """The mfetch console script: the head start, then everything else."""
    head = begin(sys.argv[1:], os.environ)
    from client import cli

    cli.entry(head)
