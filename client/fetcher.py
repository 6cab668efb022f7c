"""The I/O shell around the scheduler: connections, range requests, pieces on disk.

Each connection is a worker task that asks the scheduler for work, runs the
range request it is given, and feeds what happens back as events. Bytes
stream through a :class:`PieceSink` that hashes each piece as it arrives and
writes it in place; a piece counts only once its hash matches. A background
task hashes the finished prefix of the file in order, so the whole-file
SHA-256 is ready moments after the last piece.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from client import events as ev
from client import wire
from client.http import (
    TRANSIENT_ERRORS,
    HttpClient,
    changed,
    check_range_response,
    describe,
    origin,
    status_fault,
    validator_of,
)
from client.plan import Plan, SourcePlan
from client.scheduler import Scheduler, SchedulerConfig
from client.storage import ContentKey, PartFile
from common import bitfield
from common.errors import IntegrityError, MfetchError, SourceError
from common.ratelimit import TokenBucket

if TYPE_CHECKING:
    from client.headstart import Early
    from client.http import Body

log = logging.getLogger("mfetch")
_T = TypeVar("_T")
UNKNOWN = -1  # who sent a piece verified in an earlier run: nobody to blame

TICK = 0.1
CHECKPOINT_EVERY = 1.0


@dataclass(frozen=True)
class SourceReport:
    url: str
    kind: str
    bytes: int
    pieces: int
    failures: int
    dropped: str


@dataclass(frozen=True)
class Result:
    path: str
    size: int
    sha256: str
    seconds: float
    sources: tuple[SourceReport, ...]
    notes: tuple[str, ...]
    verified: tuple[str, ...]


@dataclass
class _SourceState:
    url: str
    kind: str
    validator: str
    ranges_seen: bool = False  # has answered a range request with 206


class PieceSink:
    """Turns the body of one response into verified pieces.

    Streaming requests write each chunk in place as it comes (unless the piece
    is already done). Buffered requests (tail duplicates) keep the piece in
    memory and write it only once verified and still needed.

    A chunk to hash, when the loop is behind the network, is hashed and written
    in the fetcher's writer thread (:class:`_Writer`) while the event loop
    receives the next one; otherwise inline. The bookkeeping (scheduler events,
    which piece may be written) stays on the loop.
    """

    def __init__(self, fetcher: Fetcher, fetch: ev.Fetch, skip: int) -> None:
        self.f = fetcher
        self.req = fetch
        self.piece = fetch.first
        self.pos = fetch.first * fetcher.plan.piece_size
        self.skip = skip  # bytes to discard first (a source that ignores ranges)
        # Without piece hashes there is nothing to check a piece against: don't hash.
        self.checking = fetcher.plan.piece_hashes is not None
        self.hasher = hashlib.sha256() if self.checking else None
        # Buffered: the pieces received, the last one still growing.
        self.bufs: list[bytearray] | None = [bytearray()] if fetch.buffered else None

    @property
    def complete(self) -> bool:
        return self.piece >= self.f.sched.request_end(self.req.request)

    @property
    def plain(self) -> bool:
        """Nothing to hash nor to hold: the bytes only go to the file."""
        return self.hasher is None and self.bufs is None

    async def feed(self, data: memoryview | int, behind: bool = False,
                   piped: wire.Response | None = None) -> bool:
        """Take a chunk: a view the caller keeps valid until this returns, or (an int)
        that many bytes waiting in `piped`'s pipe (wire.Response.splice; a plain sink
        only), all of which leave it before this returns. False once the request has
        everything it must deliver. `behind`: more bytes were already waiting when this
        chunk was read (the loop, not the network, is the limit)."""
        f, sched = self.f, self.f.sched
        if isinstance(data, int):
            # Writes still queued for the writer thread come first; from then on, to
            # the end of _drain, nothing yields, so nothing can be queued in between.
            await f.writer.flush()
            if piped is not None and not piped.connection.piping:
                raise wire.BodyCutShort("the connection was lost with bytes in its pipe")
        size = data if isinstance(data, int) else len(data)
        skip = min(self.skip, size)
        self.skip -= skip
        segs = self._cut(size - skip)
        digests: list[bytes] = []
        if isinstance(data, int):
            assert piped is not None and self.plain
            _drain(f.store, piped, skip, segs, size)
        elif segs:
            # The thread only when there is hashing to overlap: for bytes that are only
            # written, a hop per chunk cost more CPU than it saved time (1 GiB on
            # loopback, 2 connections: 2.0 CPU s threaded, 1.5 inline, same wall time).
            digests, self.hasher = await f.writer.run(
                _absorb, f.store, data[skip:], segs, self.hasher, self.bufs,
                busy=behind and self.hasher is not None, nbytes=size - skip)
        counted = 0
        for seg in segs:
            if self.piece >= sched.request_end(self.req.request):
                break
            self.pos += seg.size
            counted += seg.size
            if seg.ends_piece:
                f.emit(ev.BytesReceived(self.req.request, counted))
                counted = 0
                if not await self._piece_complete(digests.pop(0) if digests else None):
                    return False
        if counted:
            f.emit(ev.BytesReceived(self.req.request, counted))
        return not self.complete

    def _cut(self, n: int) -> list[_Seg]:
        """The next `n` bytes of the body, cut at the pieces' ends, up to the request's
        end (bytes beyond it are not this request's any more: it was truncated)."""
        plan, sched, f = self.f.plan, self.f.sched, self.f
        end = sched.request_end(self.req.request)
        segs: list[_Seg] = []
        pos, piece = self.pos, self.piece
        while n and piece < end:
            piece_end = min((piece + 1) * plan.piece_size, plan.size)
            size = min(n, piece_end - pos)
            # Not over a piece already verified and written (by a tail duplicate whose
            # write just ended, before the scheduler heard of it), nor one being written.
            write = self.bufs is None and sched.may_write(self.req.request, piece) \
                and piece not in f.finalizing and not f.store.done[piece]
            segs.append(_Seg(pos, size, write, pos + size == piece_end))
            pos += size
            n -= size
            if pos == piece_end:
                piece += 1
        return segs

    async def _piece_complete(self, digest: bytes | None) -> bool:
        """Check the piece that just ended; False if it was bad."""
        piece, plan, f = self.piece, self.f.plan, self.f
        good = True
        if digest is not None and plan.piece_hashes is not None:
            good = hmac.compare_digest(digest, plan.piece_hashes[piece])
        buf = self.bufs.pop(0) if self.bufs is not None else None
        self.piece += 1
        if not good:
            f.emit(ev.PieceBad(self.req.request, piece))
            return False
        if not f.store.done[piece] and piece not in f.finalizing:
            if buf is None:  # streamed: its bytes are on disk (every job was awaited)
                f.landed(piece, self.req.source)
            else:
                # Through the writer, after any chunk of this piece queued before; no
                # streaming request queues more of it meanwhile (finalizing), and it
                # counts as done only once written, even if this request is cancelled.
                f.finalizing.add(piece)
                source = self.req.source

                def written(job: asyncio.Future[None] | None) -> None:
                    f.finalizing.discard(piece)
                    if job is None or (not job.cancelled() and job.exception() is None):
                        f.landed(piece, source)

                await f.writer.run(f.store.pwrite, piece * plan.piece_size, buf,
                                   nbytes=len(buf), on_done=written)
        f.emit(ev.PieceDone(self.req.request, piece))
        return True


class _Seg(NamedTuple):
    """A slice of a chunk within one piece: where it goes, and what to do with it.
    (A NamedTuple: one is made per chunk, and it is cheaper to make and to define.)"""

    pos: int
    size: int
    write: bool
    ends_piece: bool


def _absorb(store: PartFile, view: memoryview, segs: list[_Seg], hasher: hashlib._Hash | None,
            bufs: list[bytearray] | None) -> tuple[list[bytes], hashlib._Hash | None]:
    """Hash and write (or buffer) `view`, cut in `segs`; returns the digests of the
    pieces they end, in order, and the hasher of the piece that goes on. Runs in the
    writer thread: hashlib and os.pwrite release the GIL on large buffers."""
    digests = []
    at = 0
    for seg in segs:
        data = view[at:at + seg.size]
        at += seg.size
        if hasher is not None:
            hasher.update(data)
        if bufs is not None:
            bufs[-1] += data
        elif seg.write:
            store.pwrite(seg.pos, data)
        if seg.ends_piece:
            if hasher is not None:
                digests.append(hasher.digest())
                hasher = hashlib.sha256()
            if bufs is not None:
                bufs.append(bytearray())
    return digests, hasher


def _drain(store: PartFile, piped: wire.Response, skip: int, segs: list[_Seg],
           size: int) -> None:
    """Move the `size` bytes in `piped`'s pipe out: `segs` to the file (or away, for a
    piece another request wrote), the `skip` before them and whatever is past them
    away. On the loop: the kernel does the copying, and nothing is hashed."""
    if skip:
        piped.pipe_drop(skip)
    for seg in segs:
        if seg.write:
            store.write_piped(piped, seg.pos, seg.size)
        else:
            piped.pipe_drop(seg.size)
    rest = size - skip - sum(seg.size for seg in segs)
    if rest:
        piped.pipe_drop(rest)


class _Writer:
    """One thread that hashes and writes received bytes, in the order handed over.

    With two cores, the event loop receives (recv_into) while this thread copies
    the previous chunk into the page cache and hashes it: both release the GIL.
    One thread, first in first out, keeps the order of writes to a piece: bytes a
    streaming request queued always land before a verified copy queued later.
    A job runs inline when nothing is queued and either it is small (a thread hop
    costs tens of microseconds of CPU: with 32 connections on loopback, most then
    with 64 KiB buffers, sending their chunks to the thread took 11.3 CPU s for
    4 GiB against 7.0 s for main in one, noisy, A/B) or the caller is not
    `busy`: over a slow link the loop waits for the network anyway, and a hop
    would only add CPU (the target is no more CPU than aria2c).
    """

    INLINE = 256 * 1024

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._queued = 0
        self._last: asyncio.Future[Any] | None = None  # the job queued last

    async def run(self, fn: Callable[..., _T], *args: Any, nbytes: int, busy: bool = True,
                  on_done: Callable[[asyncio.Future[Any] | None], None] | None = None) -> _T:
        """fn(*args) in the writer thread (or inline); `on_done` is called on the loop
        with the job's future once it has run (None if run inline), even when the
        caller was cancelled meanwhile."""
        if self._queued == 0 and (nbytes < self.INLINE or not busy):
            result = fn(*args)
            if on_done is not None:
                on_done(None)
            return result
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "mfetch-writer")
        self._queued += 1
        fut = self._last = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        if on_done is not None:
            fut.add_done_callback(on_done)
        try:
            # The job cannot be stopped once queued, and the caller's buffer must stay
            # untouched until it is done: a cancellation waits for it, then goes on.
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise
        finally:
            self._queued -= 1

    async def flush(self) -> None:
        """Wait until every job queued so far has run (at once if none is queued)."""
        if self._queued and self._last is not None:
            await asyncio.wait([self._last])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Fetcher:
    """Runs one download to completion. Construct, then ``await run()``."""

    def __init__(self, plan: Plan, store: PartFile, *, config: SchedulerConfig | None = None,
                 http: HttpClient, done: set[int] | None = None,
                 on_progress: Callable[[Fetcher], None] | None = None,
                 limit: TokenBucket | None = None, rarest_first: bool = False) -> None:
        self.plan = plan
        self.limit = limit  # one bucket for every connection (--limit-rate)
        self.store = store
        self.http = http
        self.sources = [_SourceState(s.url, s.kind, s.validator) for s in plan.sources]
        # Sources on one host:port share its connection cap.
        self.hosts: dict[str, int] = {}
        hosts = self.hosts
        self.sched = Scheduler(plan.pieces, plan.piece_size, plan.size, len(plan.sources),
                               done=done or (), config=config, clock=time.monotonic,
                               hosts=[hosts.setdefault(origin(s.url), len(hosts))
                                      for s in plan.sources],
                               haves=[swarm_have(s, plan.pieces) for s in plan.sources],
                               rarest_first=rarest_first)
        for i, s in enumerate(plan.sources):
            if not s.ranges:
                self.sched.sources[i].ranges = False
                self.sched.sources[i].max_connections = 1
        self.on_progress = on_progress
        self.workers: dict[int, asyncio.Task[None]] = {}
        self.running: dict[int, asyncio.Task[None]] = {}  # request id -> its task
        self.changed = asyncio.Event()
        self.pieces_changed = asyncio.Event()
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.started = time.monotonic()
        self.resumed_bytes = sum(
            min(plan.piece_size, plan.size - i * plan.piece_size) for i in (done or ()))
        self.notes: list[str] = []
        self.delivered_by = [UNKNOWN] * plan.pieces  # who sent each piece (for repair)
        self.blamed: dict[int, str] = {}  # sources found lying after the fact
        self._flushing: asyncio.Future[None] | None = None
        self.writer = _Writer()
        self.spliced = 0  # body bytes moved from a socket to the file by splice(2)
        self.finalizing: set[int] = set()  # verified copies on their way to the disk
        # Answers under way before the start (head start): source, pieces, the body.
        self._adopted: list[tuple[int, int, int, Body]] = []

    def adopt(self, source: int, offset: int, data: memoryview,
              early: Early | None = None) -> tuple[int, bool]:
        """Bytes of the file at `offset` that `source` sent before the fetch began (the
        head start, client/headstart.py): the whole pieces among them are written and
        count as that source's, and the rest of its answer (`early`) goes on as that
        source's first request. Before run(), and only for a plan without piece hashes
        (the pieces are checked as every piece of such a plan is: by the size and
        range of their answer, and by the whole file's digest if one is given).
        Returns how many bytes were written, and whether the rest goes on; raises
        StorageError."""
        plan, store = self.plan, self.store
        if plan.piece_hashes is not None:
            return 0, False
        ps = plan.piece_size
        first = -(-offset // ps)
        end = (offset + len(data)) // ps if offset + len(data) < plan.size else plan.pieces
        used = 0
        for piece in range(first, end):
            if store.done[piece]:
                continue
            a = piece * ps
            b = min(a + ps, plan.size)
            store.pwrite(a, data[a - offset:b - offset])
            store.mark_done(piece)
            self.sched.credit(source, piece)
            self.delivered_by[piece] = source
            used += b - a
        rest = None
        if early is not None and first <= end:  # (else its pieces are bigger than the span)
            # The answer goes on to the end of its span: its whole pieces from here.
            last = plan.pieces if early.span_end >= plan.size else early.span_end // ps
            rest = early.rest(end * ps) if end < last else None
            if rest is not None:
                self._adopted.append((source, end, last, rest))
        return used, rest is not None

    # ---- the loop ---------------------------------------------------------

    async def run(self) -> str:
        """Fetch every piece; returns the hex SHA-256 of the whole file, checked.

        The whole file is hashed only when there is a digest to check it
        against; otherwise "" is returned (hashing costs more CPU than the rest
        of a download, for nothing to compare).
        Raises SourceError when every source failed, IntegrityError when the
        whole file does not match the expected digest, StorageError on disk errors.
        """
        digest = asyncio.create_task(self._hash_in_order()) if self.plan.sha256 else None
        ticker = asyncio.create_task(self._tick())
        try:
            for source, first, end, body in self._adopted:
                f = self.sched.adopt(source, first, end)
                self.sources[source].ranges_seen = True
                self.workers[f.conn] = asyncio.create_task(
                    self._worker(f.conn, source, (f, body)))
            self._adopted.clear()
            self._execute(self.sched.start())
            failure = await self.outcome
        except BaseException:
            if digest:
                digest.cancel()
            raise
        finally:
            ticker.cancel()
            for t in [*self.workers.values(), *self.running.values()]:
                t.cancel()
            await asyncio.gather(ticker, *self.workers.values(), *self.running.values(),
                                 return_exceptions=True)
            self.writer.close()  # nothing is queued: every job was awaited
            await self._checkpoint()
            log.debug("%d bytes came by splice(2), not through Python", self.spliced)
        if failure:
            if digest:
                digest.cancel()
            raise SourceError(failure)
        if digest is None or self.plan.sha256 is None:
            return ""
        self.pieces_changed.set()
        sha = await digest
        if sha != self.plan.sha256 and self.plan.piece_hashes is None:
            # Without piece hashes "done" only meant "received": never resume from it.
            await asyncio.to_thread(self.store.forget)
        if sha != self.plan.sha256 and self.plan.piece_hashes is None and len(self.sources) > 1:
            log.warning("the file's sha256 does not match: finding which source lied")
            urls = [s.url for s in self.sources]
            from client.repair import repair  # only when the whole file is wrong

            fixed = await repair(self.http, self.store, urls, self.plan.size,
                                 self.plan.piece_size, self.delivered_by, self.plan.sha256)
            liar = urls.index(fixed.liar)
            self.blamed[liar] = f"sent wrong bytes ({fixed.pieces} pieces, found by repair)"
            self.notes.append(f"{fixed.liar} sent wrong bytes: {fixed.pieces} pieces were "
                              "fetched again from other sources")
            log.warning("%s", self.notes[-1])
            return self.plan.sha256.hex()
        if sha != self.plan.sha256:
            raise IntegrityError(
                f"the file's sha256 is {sha.hex()}, expected {self.plan.sha256.hex()}; "
                f"kept as {self.store.part.name}")
        return sha.hex()

    def landed(self, piece: int, source: int) -> None:
        """A verified piece is on disk: record it (vouched for at the next checkpoint)."""
        if not self.store.done[piece]:
            self.store.mark_done(piece)
            self.delivered_by[piece] = source
            self.pieces_changed.set()

    def add_source(self, source: SourcePlan) -> int:
        """A source found mid-download (swarming: a peer); returns its index."""
        self.sources.append(_SourceState(source.url, source.kind, source.validator))
        host = self.hosts.setdefault(origin(source.url), len(self.hosts))
        sid, actions = self.sched.add_source(swarm_have(source, self.plan.pieces), host)
        self._execute(actions)
        self.changed.set()
        return sid

    def set_stripe(self, rank: int, count: int) -> None:
        """This fetcher is number `rank` of `count` fetching the content together."""
        self.sched.set_stripe(rank, count)

    def set_have(self, source: int, have: bytearray) -> None:
        """A partial holder's latest pieces (one byte each, 0/1)."""
        self.sched.set_have(source, have)
        self.changed.set()

    def emit(self, event: ev.Event) -> None:
        """Feed an event to the scheduler and carry out what it answers."""
        actions = self.sched.handle(event)
        if actions:
            self._execute(actions)
        if isinstance(event, ev.BytesReceived):
            return
        if self.sched.swarm and not actions and (
                isinstance(event, (ev.Tick, ev.PieceDone))
                or isinstance(event, ev.RequestEnded) and event.fault is None):
            # A swarm has many idle connections: wake them only when work may have
            # come back (they also look again every 0.25 s for the tail's sake).
            return
        self.changed.set()  # a waiting connection may find work now

    def _execute(self, actions: list[ev.Action]) -> None:
        for a in actions:
            match a:
                case ev.OpenConnection(conn, source):
                    self.workers[conn] = asyncio.create_task(self._worker(conn, source))
                case ev.Cancel(request, reason):
                    task = self.running.pop(request, None)
                    if task is not None:
                        log.debug("cancel request %d: %s", request, reason)
                        task.cancel()
                case ev.DropSource(source, reason):
                    self.notes.append(f"dropped {self.sources[source].url}: {reason}")
                    log.warning("dropping %s: %s", self.sources[source].url, reason)
                case ev.Finished():
                    if not self.outcome.done():
                        self.outcome.set_result("")
                case ev.Failed(reason):
                    if not self.outcome.done():
                        self.outcome.set_result(self._failure_text())
                case ev.Fetch() | ev.Wait() | ev.CloseConnection() | ev.Truncate():
                    pass  # handled by the worker that asked, or read through request_end

    async def _worker(self, conn: int, source: int,
                      first: tuple[ev.Fetch, Body] | None = None) -> None:
        """Connection `conn`'s loop: ask for work, do it, until told to close.
        `first`: a request under way already, and its answer (see adopt)."""
        if first is not None:
            await self._carry_out(*first)
        while True:
            actions = self.sched.handle(ev.ConnectionIdle(conn))
            mine = next((a for a in actions if getattr(a, "conn", None) == conn
                         and isinstance(a, (ev.Fetch, ev.Wait, ev.CloseConnection))), None)
            self._execute([a for a in actions if a is not mine])
            if isinstance(mine, ev.Fetch):
                log.debug("%.3f conn %d fetches pieces %d-%d%s", time.monotonic() - self.started,
                          conn, mine.first, mine.end - 1, " (duplicate)" if mine.buffered else "")
                await self._carry_out(mine)
            elif isinstance(mine, ev.Wait):
                self.changed.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                # (Ctrl-C) that lands just as the wait ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await self.changed.wait()
            else:
                self.workers.pop(conn, None)
                return

    async def _carry_out(self, f: ev.Fetch, answer: Body | None = None) -> None:
        task = asyncio.create_task(self._request(f, answer))
        self.running[f.request] = task
        await asyncio.wait([task])
        self.running.pop(f.request, None)
        if task.cancelled():
            self.emit(ev.RequestEnded(f.request, None))

    async def _request(self, f: ev.Fetch, answer: Body | None = None) -> None:
        try:
            fault = await self._fetch_range(f, answer)
        except SourceError as e:  # e.g. a redirect loop: this source is no good
            fault = ev.Fault(ev.FaultKind.FATAL, str(e))
        except MfetchError as e:  # the local disk: the whole download stops
            if not self.outcome.done():
                self.outcome.set_exception(e)
            return
        if fault is not None:
            log.debug("request %d to %s failed: %s", f.request, self.sources[f.source].url,
                      fault.message)
        self.emit(ev.RequestEnded(f.request, fault))

    async def _fetch_range(self, f: ev.Fetch, answer: Body | None = None) -> ev.Fault | None:
        """Fetch `f`'s pieces; `answer`: its answer under way already, checked (see adopt)."""
        plan, src = self.plan, self.sources[f.source]
        start = f.first * plan.piece_size
        end = min(f.end * plan.piece_size, plan.size)
        ranged = self.sched.sources[f.source].ranges
        if answer is not None:
            try:
                return await self._stream(f, answer, 0)
            except TRANSIENT_ERRORS as e:
                return ev.Fault(ev.FaultKind.TRANSIENT, describe(e))
            finally:
                answer.release()
        headers = {}
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
            if src.validator:
                headers["If-Range"] = src.validator
        try:
            # Agents and swarm peers (partial holders) are both named by the tracker.
            named_agent = src.kind in ("agent", "peer")
            async with self.http.get(src.url, headers, agent=named_agent) as resp:
                if resp.status == 200 and ranged:
                    if src.ranges_seen or changed(src.validator, resp.headers):
                        return ev.Fault(ev.FaultKind.FATAL, "the file changed on the server")
                    self.emit(ev.RangesIgnored(f.request))
                    return None
                if resp.status not in (200, 206):
                    return status_fault(resp.status, resp.reason, resp.headers)
                if resp.status == 206:
                    bad = check_range_response(resp.headers, start, end, plan.size, src.validator)
                    if bad:
                        return bad
                    src.ranges_seen = True
                    if not src.validator:
                        src.validator = validator_of(resp.headers)
                elif resp.content_length not in (None, plan.size):
                    return ev.Fault(ev.FaultKind.FATAL,
                                    f"now says the file has {resp.content_length} bytes")
                elif changed(src.validator, resp.headers):
                    return ev.Fault(ev.FaultKind.FATAL, "the file changed on the server")
                return await self._stream(f, resp, 0 if ranged else start)
        except MfetchError:
            raise
        except TRANSIENT_ERRORS as e:
            return ev.Fault(ev.FaultKind.TRANSIENT, describe(e))

    async def _stream(self, f: ev.Fetch, resp: Body, skip: int) -> ev.Fault | None:
        """Feed `resp`'s body to `f`'s pieces (after `skip` bytes that come before them)."""
        sink = PieceSink(self, f, skip=skip)
        length = resp.content_length
        # Bytes that are only written (no piece hash to check, no rate to keep) go from
        # the socket to the file by splice(2) whenever the response allows.
        piped = resp if isinstance(resp, wire.Response) and sink.plain \
            and self.limit is None else None
        try:
            while True:
                if length is not None:
                    resp.set_lowat(_low_water(length - resp.received,
                                              self.sched.connection_rate(f.conn)))
                if piped is not None:
                    n = await piped.splice()
                    if n is not None:
                        self.spliced += n
                        if not n or not await sink.feed(n, piped=piped):
                            break
                        continue
                chunk = await resp.read_view()
                if chunk is None:
                    break
                if self.limit is not None:
                    if not await self._feed_limited(sink, f.request, chunk):
                        break
                elif not await sink.feed(chunk, behind=not resp.waited):
                    break
        finally:
            resp.set_lowat(1)
        if not sink.complete:
            return ev.Fault(ev.FaultKind.TRANSIENT, "the response ended early")
        return None

    async def _feed_limited(self, sink: PieceSink, request: int, chunk: memoryview) -> bool:
        """sink.feed(chunk), in slices paced by the shared bucket. While a slice
        waits, the scheduler is told the request is held (not stalled); the
        socket is not read meanwhile, so TCP slows the source down to our rate."""
        assert self.limit is not None
        step = self.limit.slice
        for i in range(0, len(chunk), step):
            part = chunk[i:i + step]
            wait = self.limit.reserve(len(part))
            if wait > 0:
                self.emit(ev.Throttled(request, True))
                await asyncio.sleep(wait)
                self.emit(ev.Throttled(request, False))
            if not await sink.feed(part):
                return False
        return True

    async def _tick(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            self.emit(ev.Tick())
            if self.on_progress:
                self.on_progress(self)
            idle = self._flushing is None or self._flushing.done()
            if idle and time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY:
                # In the background: a slow fdatasync must not hold up stall detection.
                last_checkpoint = time.monotonic()
                snap = self.store.snapshot()
                if snap is not None:
                    self._flushing = asyncio.ensure_future(
                        asyncio.to_thread(self.store.checkpoint, snap))

    async def _checkpoint(self) -> None:
        """Flush and vouch for the verified pieces, off the event loop.

        A checkpoint in a thread cannot be cancelled, so one in flight is
        awaited (shielded) before another starts: two never race on the
        control file, and the last one of a run sees everything.
        """
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        snap = self.store.snapshot()
        if snap is not None and self.store.fd >= 0:
            self._flushing = asyncio.ensure_future(asyncio.to_thread(self.store.checkpoint, snap))
            await asyncio.shield(self._flushing)

    async def _hash_in_order(self) -> bytes:
        """SHA-256 of the whole file, read back in order as the done prefix grows."""
        h = hashlib.sha256()
        plan, done = self.plan, self.store.done
        nxt = 0
        while nxt < plan.pieces:
            end = nxt
            while end < plan.pieces and done[end]:
                end += 1
            if end == nxt:
                self.pieces_changed.clear()
                await self.pieces_changed.wait()
                continue
            a, b = nxt * plan.piece_size, min(end * plan.piece_size, plan.size)
            await asyncio.to_thread(_hash_range, self.store, h, a, b)
            nxt = end
        return h.digest()

    def _failure_text(self) -> str:
        lines = []
        for i, s in enumerate(self.sources):
            lines.append(f"{s.url}: {self.sched.sources[i].dropped or 'failed'}")
        if len(lines) == 1:
            return lines[0]
        return "every source failed: " + "; ".join(lines)

    def report(self) -> tuple[SourceReport, ...]:
        return tuple(
            SourceReport(s.url, s.kind, st.bytes, st.pieces, st.failures,
                         self.blamed.get(i, st.dropped))
            for i, (s, st) in enumerate((s, self.sched.stats(i))
                                        for i, s in enumerate(self.sources)))


LOWAT_SECONDS = 0.2


def _low_water(left: int, rate: float) -> int:
    """How many bytes of a body to wait for before waking up (SO_RCVLOWAT).

    Over a slow or shaped link the kernel would report the socket readable for
    every few kilobytes, and each wake-up costs far more in Python than the
    bytes it carries. The mark is at most what is left of this response (the
    tail can never get stuck below it) and ~0.2 s of the connection's measured
    rate; the connection clamps it to its buffer (1 MiB at most). A source that
    slows down is still heard within wire.LOWAT_PATIENCE (the mark then drops);
    it goes back to 1 before the connection returns to the pool.

    Measured on `make bench`'s heterogeneous case (384 MiB, four mirrors), the
    process's CPU went from ~1.8 s with a 50 ms / 256 KiB mark to ~1.2 s.
    """
    return max(1, min(left, int(rate * LOWAT_SECONDS)))


def _hash_range(store: PartFile, h: hashlib._Hash, start: int, end: int) -> None:
    block = 4 * 1024 * 1024
    while start < end:
        data = store.pread(start, min(block, end - start))
        if not data:
            raise IntegrityError("the partial file is shorter than expected")
        h.update(data)
        start += len(data)


def content_key(plan: Plan) -> ContentKey:
    return ContentKey(plan.size, plan.piece_size, plan.sha256.hex() if plan.sha256 else "",
                      plan.root.hex() if plan.root else "",
                      {s.url: s.validator for s in plan.sources if s.validator})


def swarm_have(source: SourcePlan, pieces: int) -> bytearray | None:
    """A partial holder's pieces, one byte each; None for a full holder (or a bitfield
    that does not fit this content, which the plan has already left out)."""
    if not source.have:
        return None
    return bitfield.unpack(source.have, pieces)
