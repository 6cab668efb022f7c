"""The scheduler: which connection fetches which pieces from which source.

A pure core in the manner of h11: it takes events (:mod:`client.events`) and
answers with actions, and never touches a socket, a file or the real clock
(``clock`` is injected). The policy:

- Pull, don't push. An idle connection asks for work, so faster connections
  take more: throughput weighting is measured, not guessed.
- A request covers about ``request_seconds`` of its connection's measured
  rate, in whole pieces, and never more than that connection's fair share of
  what is left, so a slow source holds little at the end.
- Connections per source start at ``initial_connections`` and grow one at a
  time while each addition raises that source's throughput (the bytes it
  delivered over a span) by ``adapt_gain``, up to ``max_connections_per_source``,
  and never beyond ``max_connections_per_host`` over all the sources on one host
  (``hosts`` says which sources share one); an addition that did not is undone.
- A source that answers "busy" (503/429 with Retry-After, e.g. an agent's
  per-client cap) keeps its work but loses a connection: its cap for this
  download drops below what it had. Only busy answers to a single connection
  count as failures.
- Requests the shell holds back for a local rate limit (``Throttled``) are not
  stalled: the stall clock stops while they are held.
- The tail: when nothing is unclaimed, an idle connection that would finish
  sooner takes the far part of the slowest request (the victim is truncated),
  or duplicates the piece expected to finish last; the first verified copy wins
  and the other request is cancelled. Before that, in the end game, a
  connection takes no piece that faster connections would all fetch well
  before it had one (it would only be the last to arrive). What starting a
  request costs (a split or a duplicate pays it) is each source's measured
  wait for its first bytes.
- Faults: a request with no bytes for ``stall_timeout`` (or none at all within
  ``first_byte_timeout``) fails; failures back off exponentially with jitter;
  ``max_failures`` failures in a row, any fatal fault, or one bad piece drop
  the source, and its work returns to the pool.
- Swarming: a source may be a partial holder (a peer's download in progress)
  with a bitfield of the pieces it has, which can grow (:meth:`Scheduler.set_have`),
  and sources can join mid-download (:meth:`Scheduler.add_source`). A partial
  holder is only ever asked for pieces it has. Once any partial holder is known,
  pieces are chosen rarest first: the fewest live sources hold them, ties broken
  at random, so fetchers that start together ask the origin for different
  pieces. A full holder (the origin) is then asked only for pieces no live
  partial holder has, and does not take over a peer's requests: its uplink is
  what the whole swarm shares, so each byte should leave it about once. A peer
  that fails or lies is dropped, and what only it had becomes the origin's again;
  and when no piece has arrived for ``stripe_patience`` (a peer that is alive
  but stuck), these rules give way until one does.
  Requests are at most ``swarm_request_pieces`` pieces, so verified pieces (and
  the news of them) reach the peers sooner; and for the same reason there is
  one connection per partial holder (``swarm_peer_connections``) and the
  origin's connections are shared among the fetchers (see ``_limit``): a piece
  can be passed on only once it is whole, and an uplink split among many
  requests makes each of them slow to finish.
- Stripes: fetchers cannot see each other's requests in flight, only verified
  pieces, so two of them may ask the origin for the same piece at once. With
  :meth:`Scheduler.set_stripe` (this fetcher is number ``rank`` of ``count``
  fetchers sharing the content, an order every one of them computes alike from
  the tracker's answer), a full holder is asked only for the blocks of
  ``swarm_request_pieces`` pieces in this fetcher's stripe, lowest first (so
  the swarm gets the file roughly in order, as the whole-file hash reads it);
  the other stripes come from their fetchers through the peers. Only when no
  piece has arrived for ``stripe_patience`` (a stripe's fetcher stalled or
  left) is the origin asked for the other stripes too.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from client.events import (
    Action,
    BytesReceived,
    Cancel,
    CloseConnection,
    ConnectionIdle,
    DropSource,
    Event,
    Failed,
    Fault,
    FaultKind,
    Fetch,
    Finished,
    OpenConnection,
    PieceBad,
    PieceDone,
    RangesIgnored,
    RequestEnded,
    Throttled,
    Tick,
    Truncate,
    Wait,
)

NO_OWNER = -1
LATENCY_WEIGHT = 0.25  # of each new sample in a source's smoothed latency

# With -v, every decision (not Wait) with the time since start, and the rates twice a
# second: enough to see after the fact where a download lost time.
log = logging.getLogger("mfetch.scheduler")


class SchedulerConfig(NamedTuple):
    """The scheduler's settings. (NamedTuples here, and plain classes with slots for
    the mutable state below, not dataclasses: defining those took ~7 ms of every
    run's start-up.)"""

    initial_connections: int = 2
    max_connections_per_source: int = 6
    max_connections_per_host: int = 6  # over every source on one host (host:port)
    request_seconds: float = 1.5
    max_request_bytes: int = 64 * 1024 * 1024
    rate_window: float = 0.5
    adapt_interval: float = 0.75
    # Keep adding connections only while the last one raised throughput 15%: the
    # k-th connection to a source that caps each one adds 1/(k-1), 20% for the 6th.
    adapt_gain: float = 1.15
    stall_timeout: float = 8.0
    first_byte_timeout: float = 15.0
    max_failures: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 15.0
    tail_margin: float = 1.5  # a thief must be this much faster than its victim
    latency_guess: float = 0.05  # cost of starting a request, until a source's is measured
    # Off under a local rate limit: a duplicate then only halves the useful rate, since
    # both copies pass through the same bucket (splitting a range still happens).
    tail_duplicates: bool = True
    tail_copies: int = 2  # most duplicate copies of one piece at a time
    # At the very end a connection takes no piece that faster ones would all fetch
    # this many times sooner (see Scheduler._others_finish_first).
    endgame_margin: float = 1.25
    # A request keeps what its rate fetches in this many times the expected rest of
    # the download; the pieces beyond go back to the pool.
    release_margin: float = 2.0
    swarm_request_pieces: int = 4  # most pieces per request when swarming: news spreads sooner
    # Most connections to one partial holder. Every fetcher asks every peer, so a peer's
    # uplink is shared by all their requests; the fewer at once, the sooner each piece is
    # whole at the fetcher, and only a whole (verified) piece can be passed on.
    swarm_peer_connections: int = 1
    stripe_patience: float = 2.0  # no piece for this long: ask the origin outside our stripe
    # Only partial holders left and a piece none of them has, for this long: fail
    # (re-locating every second may still bring a holder in before that).
    orphan_timeout: float = 60.0


class RateMeter:
    """Bytes per second over windows of ``window`` seconds, smoothed (EWMA).

    Windows with no bytes count as zero while the connection has a request in
    flight, so a stalled stream's rate decays. Between requests the meter is
    stopped (:meth:`stop`, :meth:`resume`): a connection waiting for work is not
    slow, and one that waited through the tail must still count as fast when it
    may take over a stalled request's pieces.
    """

    def __init__(self, window: float, now: float) -> None:
        self.window = window
        self.start = now
        self.bytes = 0
        self.rate = 0.0
        self.samples = 0
        self.first_byte: float | None = None
        self.total = 0
        self.stopped: float | None = None  # since when no request is in flight
        # value()'s last answer and for when: the end game asks every connection's
        # rate many times per event, at the same instant. Whatever changes the
        # meter forgets it.
        self._at: float | None = None
        self._value = 0.0

    def add(self, n: int, now: float) -> None:
        self._at = None
        self._roll(now)
        self.bytes += n
        self.total += n
        if self.first_byte is None:
            self.first_byte = now

    def value(self, now: float) -> float:
        if self.stopped is not None:
            now = self.stopped  # time stands still between requests
        if now == self._at:
            return self._value
        self._roll(now)
        if self.samples == 0 and self.first_byte is not None and now - self.first_byte >= 0.02:
            # Before the first full window: a provisional rate, so requests grow at once.
            value = self.total / (now - self.first_byte)
        else:
            value = self.rate
        self._at, self._value = now, value
        return value

    def stop(self, now: float) -> None:
        """No request in flight from now on."""
        if self.stopped is None:
            self._at = None
            self._roll(now)
            self.stopped = now

    def resume(self, now: float) -> None:
        """A request is in flight again: the idle time is left out of every window."""
        if self.stopped is not None:
            self._at = None
            idle = now - self.stopped
            self.start += idle
            if self.first_byte is not None:
                self.first_byte += idle
            self.stopped = None

    def _roll(self, now: float) -> None:
        elapsed = now - self.start
        if elapsed < self.window:
            return
        sample = self.bytes / elapsed
        self.rate = sample if self.samples == 0 else 0.5 * sample + 0.5 * self.rate
        self.samples += 1
        self.start, self.bytes = now, 0


class _Source:
    __slots__ = (
        "blocked_until",
        "bytes",
        "conns",
        "dropped",
        "failures",
        "have",
        "id",
        "in_a_row",
        "latency",
        "mark_at",
        "mark_bytes",
        "max_connections",
        "pieces",
        "ranges",
        "rate_before_add",
        "saturated",
        "target",
    )

    def __init__(self, id: int, max_connections: int, latency: float) -> None:
        self.id = id
        self.max_connections = max_connections
        self.latency = latency  # from a request's start to its first bytes, smoothed
        self.conns: set[int] = set()
        self.target = 0
        self.failures = 0
        self.in_a_row = 0
        self.blocked_until = 0.0
        self.dropped = ""  # why, once dropped
        self.ranges = True
        self.bytes = 0
        self.pieces = 0
        self.mark_at = 0.0  # the span _adapt measures (adapt_interval long) began then,
        self.mark_bytes = 0  # when the source had delivered this many bytes
        self.rate_before_add = 0.0
        self.saturated = False
        self.have: bytearray | None = None  # a partial holder's pieces (0/1 each); None: all

    def holds(self, piece: int) -> bool:
        return self.have is None or bool(self.have[piece])


class _Conn:
    __slots__ = ("id", "last_count", "last_recent", "meter", "request", "source")

    def __init__(self, id: int, source: int, meter: RateMeter) -> None:
        self.id = id
        self.source = source
        self.meter = meter
        self.request: int | None = None
        self.last_count = 0  # pieces in its last request (slow start doubles it)
        self.last_recent: float | None = None  # what its last request carried lately


class _Request:
    __slots__ = (
        "arrivals",
        "buffered",
        "conn",
        "cursor",
        "end",
        "first",
        "got",
        "got_in_cursor",
        "held",
        "id",
        "last_byte",
        "marks",
        "source",
        "started",
        "timed",
    )

    def __init__(self, id: int, conn: int, source: int, first: int, end: int,
                 buffered: bool, started: float, cursor: int, timed: bool) -> None:
        self.id = id
        self.conn = conn
        self.source = source
        self.first = first
        self.end = end
        self.buffered = buffered
        self.started = started
        self.cursor = cursor  # first piece of [first, end) this request has not finished
        self.got = 0  # bytes received
        self.arrivals = 0  # how many times bytes arrived (got / arrivals: a typical chunk)
        self.got_in_cursor = 0  # bytes received of the piece at `cursor`
        self.last_byte: float | None = None
        self.held = False  # held back by the shell's rate limit: not stalled
        # Whether its wait for the first bytes is the source's latency: not on a new
        # connection (the connect comes first) nor after our own rate limit held it.
        self.timed = timed
        # Two marks (time, got), at least a rate window apart: what it received lately.
        self.marks: list[tuple[float, int]] = []

    def recent_rate(self, now: float, window: float) -> float | None:
        """Bytes/s over the last one to two `window`s of this request alone; None
        while it is younger than `window`. A request that stalls shows 0 here within
        two windows, when its connection's smoothed rate has only halved."""
        if not self.marks:
            self.marks = [(self.started, 0), (self.started, 0)]
        if now - self.marks[1][0] >= window:
            self.marks = [self.marks[1], (now, self.got)]
        t0, got0 = self.marks[0]
        if now - self.started < window or now <= t0:
            return None
        return (self.got - got0) / (now - t0)


class SourceStats(NamedTuple):
    """What one source did, for the summary."""

    bytes: int
    pieces: int
    failures: int
    dropped: str
    connections: int


class Scheduler:
    """Decides the work of every connection; see the module docstring.

    ``piece_sizes(i)`` gives the size of piece ``i``; ``done`` holds pieces
    already verified (a resumed download). ``sources`` is how many sources
    there are, numbered from 0.
    """

    def __init__(
        self,
        pieces: int,
        piece_size: int,
        size: int,
        sources: int,
        *,
        done: Iterable[int] = (),
        config: SchedulerConfig | None = None,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        hosts: Iterable[int] | None = None,
        haves: Sequence[bytes | bytearray | None] = (),
        rarest_first: bool = False,
    ) -> None:
        """`haves[i]`, when given and not None, makes source i a partial holder with
        those pieces (one byte per piece, 0/1). `rarest_first` chooses pieces rarest
        first (random among equals) from the start, as when a partial holder is known:
        for a fetcher that shares its download, so that fetchers starting together
        ask the origin for different pieces before they know of each other."""
        if piece_size <= 0 or pieces != -(-size // piece_size):
            raise ValueError(f"{size} bytes do not make {pieces} pieces of {piece_size}")
        self.cfg = config or SchedulerConfig()
        self.clock = clock
        self.rng = rng or random.Random()
        self.pieces = pieces
        self.piece_size = piece_size
        self.size = size
        self.done = bytearray(pieces)
        for i in done:
            self.done[i] = 1
        self.left = pieces - sum(self.done)
        self.owner = [NO_OWNER] * pieces  # the one request streaming a piece to disk
        self._unclaimed = self.left  # pieces neither done nor owned (kept by _own/_disown)
        self.dups: dict[int, set[int]] = {}  # piece -> buffered requests copying it
        self.sources = [_Source(i, self.cfg.max_connections_per_source, self.cfg.latency_guess)
                        for i in range(sources)]
        # Which host each source is on (equal numbers: one host, one connection cap).
        self.host_of = list(hosts) if hosts is not None else list(range(sources))
        self.avail = [0] * pieces  # how many live sources hold each piece
        self.swarm = rarest_first  # or a partial holder was ever known: rarest first
        self._counted: set[int] = set()  # sources whose pieces `avail` counts
        self._orphan_since: float | None = None  # since when a piece has no live holder
        self.stripe: tuple[int, int] | None = None  # (rank, count) among the fetchers
        self._origin_stripes = 0  # stripes with pieces still only at the origin (as seen here)
        self._last_piece = clock()  # when the last piece was verified (stripe patience)
        self._started = False
        self._t0 = self._traced_rates = 0.0  # for the -v log
        for src, have in zip(self.sources, list(haves) + [None] * (sources - len(haves))):
            self._set_have(src, have)
        self.conns: dict[int, _Conn] = {}
        self.requests: dict[int, _Request] = {}
        self._next_id = 0
        self._low = 0  # no unclaimed piece below this index
        self.finished = False
        self.failed = ""

    # ---- public surface -------------------------------------------------

    def start(self) -> list[Action]:
        """The first actions: open connections, or Finished if nothing is left."""
        self._started = True
        self._t0 = self.clock()
        if self.left == 0:
            self.finished = True
            return [Finished()]
        now = self.clock()
        out: list[Action] = []
        for s in self.sources:
            s.target = self._initial_target(s)
            s.mark_at, s.mark_bytes = now, s.bytes
            out += self._open_up_to_target(s)
        return out

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; get the actions it calls for."""
        out = self._handle(event)
        if log.isEnabledFor(logging.DEBUG):
            self._trace(event, out)
        return out

    def _trace(self, event: Event, out: list[Action]) -> None:
        t = self.clock() - self._t0
        for a in out:
            if not isinstance(a, Wait):
                log.debug("%.3f %s: %s", t, type(event).__name__, a)
        if isinstance(event, Tick) and t >= self._traced_rates + 0.5:
            self._traced_rates = t
            log.debug("%.3f rates MB/s (connections, latency) %s; %d pieces left", t, ", ".join(
                f"{s.id}: {self.source_rate(s.id) / 1e6:.1f} ({len(s.conns)}, "
                f"{s.latency * 1000:.0f} ms)"
                for s in self.sources if not s.dropped), self.left)

    def _handle(self, event: Event) -> list[Action]:
        if self.finished or self.failed:
            if isinstance(event, ConnectionIdle):
                return [CloseConnection(event.conn)]
            return []
        match event:
            case ConnectionIdle(conn):
                return self._on_idle(conn)
            case BytesReceived(rid, n):
                self._on_bytes(rid, n)
                return []
            case PieceDone(rid, piece):
                return self._on_piece_done(rid, piece)
            case PieceBad(rid, piece):
                req = self.requests.get(rid)
                if req is None:
                    return []
                return self._drop(req.source, f"sent a bad piece (#{piece})")
            case RequestEnded(rid, fault):
                return self._on_request_ended(rid, fault)
            case RangesIgnored(rid):
                return self._on_ranges_ignored(rid)
            case Throttled(rid, held):
                req = self.requests.get(rid)
                if req is not None:
                    req.held = held
                    req.timed &= not held
                    if not held and req.last_byte is not None:
                        req.last_byte = self.clock()  # the stall clock restarts now
                return []
            case Tick():
                return self._on_tick()
        raise TypeError(f"unknown event {event!r}")

    def add_source(self, have: bytes | bytearray | None = None,
                   host: int | None = None) -> tuple[int, list[Action]]:
        """A source found mid-download (a partial holder when `have` is given), on
        `host` (as in ``hosts``; None: a host of its own): its id, and the connections
        to open for it."""
        src = _Source(len(self.sources), self.cfg.max_connections_per_source,
                      self.cfg.latency_guess)
        self.sources.append(src)
        self.host_of.append(max(self.host_of, default=-1) + 1 if host is None else host)
        self._set_have(src, have)
        if not self._started or self.finished or self.failed:
            return src.id, []
        src.target = self._initial_target(src)
        src.mark_at = self.clock()
        return src.id, self._open_up_to_target(src)

    def credit(self, source: int, piece: int) -> None:
        """`piece` came from `source` before the start (the head start,
        client/headstart.py): done, and counted as that source's work."""
        if self._started:
            raise RuntimeError("credit() is for pieces that came before start()")
        if self.done[piece]:
            return
        self.done[piece] = 1
        self.left -= 1
        self._unclaimed -= 1
        src = self.sources[source]
        src.pieces += 1
        src.bytes += self._piece_bytes(piece)

    def adopt(self, source: int, first: int, end: int) -> Fetch:
        """A request under way before the start (the rest of a head start's answer,
        client/headstart.py): a connection of `source` already streaming pieces
        [first, end). The shell carries out the Fetch returned as any other; the
        connection counts toward the source's initial connections."""
        if self._started:
            raise RuntimeError("adopt() is for requests made before start()")
        conn = self._new_conn(self.sources[source])
        conn.last_count = end - first
        return self._fetch(conn, first, end, buffered=False)

    def set_have(self, source: int, have: bytes | bytearray) -> None:
        """A partial holder's latest bitfield (one byte per piece, 0/1). Ignored for a
        full holder. Its connections find the new pieces when they next ask for work."""
        src = self.sources[source]
        if src.have is not None:
            self._set_have(src, have)

    def set_stripe(self, rank: int, count: int) -> None:
        """This fetcher is number `rank` (from 0) of `count` sharing the content."""
        if not 0 <= rank < count:
            raise ValueError(f"stripe {rank} of {count}")
        self.stripe = (rank, count) if count > 1 else None
        self._origin_stripes = count
        self._count_origin_stripes()

    def holds(self, source: int, piece: int) -> bool:
        return self.sources[source].holds(piece)

    def request_end(self, request: int) -> int:
        """Where `request` must stop now (it may have been truncated)."""
        req = self.requests.get(request)
        return req.end if req else 0

    def is_done(self, piece: int) -> bool:
        return bool(self.done[piece])

    def may_write(self, request: int, piece: int) -> bool:
        """Whether `request` is the one streaming request that may write `piece` now."""
        return not self.done[piece] and self.owner[piece] == request

    def connection_rate(self, conn: int) -> float:
        """The measured bytes/s of a connection (0 when unknown)."""
        c = self.conns.get(conn)
        return c.meter.value(self.clock()) if c else 0.0

    def stats(self, source: int) -> SourceStats:
        s = self.sources[source]
        return SourceStats(s.bytes, s.pieces, s.failures, s.dropped, len(s.conns))

    def source_rate(self, source: int) -> float:
        """What a source carries now: the rates of its connections with a request in
        flight (an idle connection's meter keeps its rate for its next request)."""
        now = self.clock()
        return sum(c.meter.value(now) for cid in self.sources[source].conns
                   if (c := self.conns[cid]).request is not None)

    # ---- events ---------------------------------------------------------

    def _on_idle(self, cid: int) -> list[Action]:
        conn = self.conns.get(cid)
        if conn is None:
            return [CloseConnection(cid)]
        src = self.sources[conn.source]
        if src.dropped or len(src.conns) > min(src.target, self._limit(src)):
            return self._close(conn)
        if conn.request is not None:  # the shell lost track; treat as ended
            return self._on_request_ended(conn.request, None) + [Wait(cid)]
        now = self.clock()
        if src.blocked_until > now:
            return [Wait(cid)]
        span = self._claim(conn, now)
        if span is not None:
            return [self._fetch(conn, *span, buffered=False)]
        return self._steal(conn, now)

    def _on_bytes(self, rid: int, n: int) -> None:
        req = self.requests.get(rid)
        if req is None:
            return
        now = self.clock()
        if req.last_byte is None and req.timed:
            src = self.sources[req.source]
            src.latency += LATENCY_WEIGHT * (now - req.started - src.latency)
        req.got += n
        req.arrivals += 1
        req.got_in_cursor += n
        req.last_byte = now
        req.recent_rate(now, self.cfg.rate_window)  # keeps its marks a window apart
        self.conns[req.conn].meter.add(n, now)
        self.sources[req.source].bytes += n

    def _on_piece_done(self, rid: int, piece: int) -> list[Action]:
        req = self.requests.get(rid)
        out: list[Action] = []
        if req is not None:
            req.cursor = piece + 1
            req.got_in_cursor = 0
            src = self.sources[req.source]
            src.in_a_row = 0
        if self.done[piece]:
            return out
        if self.owner[piece] == NO_OWNER:
            self._unclaimed -= 1
        self.done[piece] = 1
        self.left -= 1
        self._last_piece = self.clock()
        if req is not None:
            self.sources[req.source].pieces += 1
        # The first verified copy wins: cancel the others' work on this piece.
        rivals = set(self.dups.pop(piece, ()))
        if self.owner[piece] not in (NO_OWNER, rid):
            rivals.add(self.owner[piece])
        self.owner[piece] = NO_OWNER
        for other in rivals - {rid}:
            r = self.requests.get(other)
            if r is None:
                continue
            if r.buffered or r.end <= piece + 1:
                out += self._end_request(r, Cancel(r.id, f"piece {piece} arrived elsewhere first"))
            elif r.cursor == piece:
                # A streaming owner that is on the finished piece skips it and carries on;
                # one still below it will pass over it (its sink writes nothing there).
                r.cursor, r.got_in_cursor = piece + 1, 0
        if self.left == 0:
            self.finished = True
            out += [Cancel(r.id, "download complete") for r in list(self.requests.values())
                    if r.id != rid]
            out.append(Finished())
        return out

    def _on_request_ended(self, rid: int, fault: Fault | None) -> list[Action]:
        req = self.requests.get(rid)
        if req is None:
            return []
        src = self.sources[req.source]
        out = self._end_request(req, None)
        if fault is None:
            return out
        src.failures += 1
        if fault.kind is FaultKind.BUSY:
            return out + self._on_busy(src, fault)
        src.in_a_row += 1
        if fault.kind is FaultKind.FATAL or src.in_a_row >= self.cfg.max_failures:
            return out + self._drop(src.id, fault.message)
        delay = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (src.in_a_row - 1))
        src.blocked_until = self.clock() + delay * self.rng.uniform(0.5, 1.5)
        return out

    def _on_busy(self, src: _Source, fault: Fault) -> list[Action]:
        """The source wants fewer connections: one less, for the rest of this download."""
        now = self.clock()
        current = min(src.target, len(src.conns))  # refusals at once: one less each
        if current > 1:
            src.max_connections = src.target = current - 1
            src.saturated = True
            return []  # the connection that was refused closes when it next asks for work
        # One connection and still busy: wait as asked; that counts as a failure in a row.
        src.in_a_row += 1
        if src.in_a_row >= self.cfg.max_failures:
            return self._drop(src.id, f"{fault.message} (busy {src.in_a_row} times in a row)")
        delay = max(fault.retry_after,
                    min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (src.in_a_row - 1)))
        src.blocked_until = now + delay * self.rng.uniform(1.0, 1.5)
        return []

    def _on_ranges_ignored(self, rid: int) -> list[Action]:
        req = self.requests.get(rid)
        if req is None:
            return []
        src = self.sources[req.source]
        others = [s for s in self.sources if s is not src and not s.dropped and s.ranges]
        if others:
            return self._drop(src.id, "ignores byte ranges")
        # The only source: one connection streaming the whole file from byte 0.
        src.ranges = False
        src.max_connections = src.target = 1
        out: list[Action] = []
        for r in list(self.requests.values()):
            if r.source == src.id:
                out += self._end_request(r, Cancel(r.id, "source ignores ranges"))
        return out

    def _on_tick(self) -> list[Action]:
        now = self.clock()
        out: list[Action] = []
        for req in list(self.requests.values()):
            if req.held:
                continue  # waiting for our own rate limit, not for the source
            heard = req.last_byte is not None
            quiet_since = req.last_byte if req.last_byte is not None else req.started
            limit = self.cfg.stall_timeout if heard else self.cfg.first_byte_timeout
            if now - quiet_since > limit:
                what = "stalled" if heard else "sent no first byte"
                out.append(Cancel(req.id, f"{what} for {limit:g}s"))
                out += self._on_request_ended(
                    req.id, Fault(FaultKind.TRANSIENT, f"{what} for {limit:g}s")
                )
        self._count_origin_stripes()
        out += self._release_far_pieces(now)
        for src in self.sources:
            if not src.dropped:
                out += self._adapt(src, now)
        if not self.finished and all(s.dropped for s in self.sources):
            self.failed = "no source left: " + "; ".join(
                f"source {s.id} {s.dropped}" for s in self.sources
            )
            out.append(Failed(self.failed))
        elif not self.finished and self._orphaned(now):
            missing = [p for p in range(self.pieces) if not self.done[p] and not self.avail[p]]
            self.failed = (f"no live source has {len(missing)} of the pieces left (first: "
                           f"{missing[0]}) for {self.cfg.orphan_timeout:g}s: only partial "
                           "holders are left and none of them has those")
            out.append(Failed(self.failed))
        return out

    def _orphaned(self, now: float) -> bool:
        """Whether some unfinished piece has had no live holder for orphan_timeout (only
        partial holders left, none with it: it can only come from a source yet to join)."""
        if any(not s.dropped and s.have is None for s in self.sources):
            self._orphan_since = None  # a whole holder is live: every piece is available
            return False
        avail, done = self.avail, self.done
        if all(done[p] or avail[p] for p in range(self.pieces)):
            self._orphan_since = None
            return False
        if self._orphan_since is None:
            self._orphan_since = now
        return now - self._orphan_since >= self.cfg.orphan_timeout

    # ---- policy ---------------------------------------------------------

    def _claim(self, conn: _Conn, now: float) -> tuple[int, int] | None:
        """The next unclaimed run of pieces for `conn`, sized to its rate."""
        src = self.sources[conn.source]
        while self._low < self.pieces and (self.done[self._low] or self.owner[self._low] != NO_OWNER):
            self._low += 1
        if self._low >= self.pieces:
            return None
        first = self._low
        rarity = 0
        if self.swarm:
            picked = self._rarest(src)
            if picked is None:
                return None
            first, rarity = picked
        if not src.ranges:  # streams from the start: as far as nobody else owns
            end = first
            while end < self.pieces and (self.done[end] or self.owner[end] == NO_OWNER):
                end += 1
            return first, end
        rate = self._conn_rate(conn, now)
        want = rate * self.cfg.request_seconds
        if self.swarm:
            want = min(want, self.cfg.swarm_request_pieces * self.piece_size)
        # Never more than this connection's share of what is left, so the tail is short.
        unclaimed = self._unclaimed_bytes()
        total = sum(self._conn_rate(c, now) for c in self.conns.values()) or rate
        if not self.swarm and self._others_finish_first(conn, rate, unclaimed, total, now):
            return None
        want = min(want, unclaimed * rate / total if total > 0 else want)
        want = min(want, self.cfg.max_request_bytes)
        count = max(1, int(want // self.piece_size))
        if conn.meter.samples == 0 and conn.last_count and not self.swarm:
            # Slow start: until a full window is measured, each request may double the last.
            cap = max(1, int(min(unclaimed * 0.5, self.cfg.max_request_bytes) // self.piece_size))
            count = max(count, min(2 * conn.last_count, cap))
        conn.last_count = count
        end = first
        while end < self.pieces and end - first < count and not self.done[end] \
                and self.owner[end] == NO_OWNER \
                and (not self.swarm or src.holds(end) and 0 <= self._rank(src, end) <= rarity):
            end += 1
        return first, end

    def _others_finish_first(self, conn: _Conn, rate: float, unclaimed: int, total: float,
                             now: float) -> bool:
        """The end game: whether the faster connections, each once done with what it
        has, would fetch every unclaimed piece before `conn` (at `rate`) had one.
        Then `conn` had better take none: its piece would be the last to arrive,
        the rest waiting for it or for a duplicate started late. (Each margin
        on the safe side: a wrong "no" only costs a duplicate, a wrong "yes" a wait.)"""
        if conn.meter.samples == 0 or rate <= 0:
            return False  # its rate is a guess yet
        mine = (self.piece_size / rate + self.sources[conn.source].latency) \
            / self.cfg.endgame_margin
        if unclaimed > total * mine:
            return False  # not the end yet: everyone has work for longer than that
        pieces = unclaimed // self.piece_size
        for c in self.conns.values():
            src = self.sources[c.source]
            if c is conn or src.dropped or not src.ranges or src.blocked_until > now \
                    or src.in_a_row or c.meter.samples == 0:
                continue
            if c.request is None and len(src.conns) > min(src.target, self._limit(src)):
                continue  # one of these is to close when idle, not take work
            r = self._idle_rate(c, now)
            if r <= rate:
                continue
            busy = 0.0
            if c.request is not None:
                req = self.requests[c.request]
                busy = self._piece_time_left(req, now) if req.buffered \
                    else self._time_left(req, now)
            spare = mine - busy - src.latency
            if spare > 0:
                pieces -= int(spare * r / self.piece_size)
                if pieces <= 0:
                    return True
        return False

    def _rank(self, src: _Source, piece: int) -> int:
        """How much `src` should avoid `piece`, lower first: the rarer first; -1 when not
        at all (a full holder, a piece outside this fetcher's stripe, and no patience
        lost yet)."""
        a = self.avail[piece]
        if self.stripe is not None and src.have is None:
            rank, count = self.stripe
            if (piece // self.cfg.swarm_request_pieces) % count != rank:
                if not self._starving():
                    return -1
                a += len(self.sources) + 1
        return a

    def _rarest(self, src: _Source) -> tuple[int, int] | None:
        """An unclaimed piece `src` holds that the fewest live sources hold (random
        among equals), and that count; None if `src` holds no unclaimed piece.

        From a full holder with a stripe, the lowest such piece: every fetcher then
        takes its stripe from the origin in file order, so the swarm gets the file
        roughly in order and the whole-file hash, which must read it in order, keeps
        up instead of reading most of the file after the last piece (in random order,
        1 to 6 s from the last piece to the digest in a bench-swarm run at load 9)."""
        best, best_avail, ties = None, 0, 0
        done, owner, avail = self.done, self.owner, self.avail
        full = self._live_full() if src.have is None and not self._starving() else -1
        in_order = full >= 0 and self.stripe is not None
        for p in range(self._low, self.pieces):
            if done[p] or owner[p] != NO_OWNER or not src.holds(p):
                continue
            a = avail[p]
            if a > full >= 0:
                continue  # a full holder: only what no peer has
            a = self._rank(src, p)
            if a < 0:
                continue
            if best is None or a < best_avail:
                best, best_avail, ties = p, a, 1
            elif a == best_avail and not in_order:
                ties += 1
                if self.rng.randrange(ties) == 0:
                    best = p
        return None if best is None else (best, best_avail)

    def _steal(self, conn: _Conn, now: float) -> list[Action]:
        """Nothing unclaimed: split the slowest request or duplicate a piece.

        Victims are tried from the one expected to finish last: the first whose
        far part this connection would finish sooner is split; failing that, the
        first whose current piece nobody copies yet and this connection would
        clearly win is duplicated. Several idle connections thus take on several
        slow requests at once, not queue up behind the slowest one.
        """
        my_rate = self._idle_rate(conn, now)
        if my_rate <= 0:
            return [Wait(conn.id)]
        thief = self.sources[conn.source]
        victims: list[tuple[float, float, _Request]] = []  # (time left, rate, request)
        for req in self.requests.values():
            if req.buffered or req.source == conn.source and not self.sources[req.source].ranges:
                continue
            if not (thief.holds(req.cursor) or thief.holds(req.end - 1)):
                continue  # a partial holder can help only with pieces it has
            if self.swarm and thief.have is None and self.sources[req.source].have is not None \
                    and not self._starving():
                continue  # the origin does not redo a peer's work
            if self.swarm and now - req.started < self.cfg.request_seconds:
                # Many peer connections sit idle in a swarm: give a request time to show
                # its rate before copying it, or every new request gets a twin.
                continue
            rate = self._request_rate(req, now)
            left = self._time_left(req, now, rate)
            if left > 0:
                victims.append((left, rate, req))
        victims.sort(key=lambda v: v[0], reverse=True)
        latency = thief.latency
        for victim_left, v_rate, victim in victims:
            # Split: pieces the victim has not started, shared so both end together.
            spare = victim.end - (victim.cursor + 1)
            if spare >= 1:
                share = my_rate / (my_rate + v_rate) if v_rate > 0 else 1.0
                # No more than a normal request's worth: a stalled victim's range is then
                # handed out in portions, each to whoever is idle and fastest, not all to
                # the first thief (which may be slow itself).
                portion = max(1, int(my_rate * self.cfg.request_seconds // self.piece_size))
                take = min(int(spare * share), portion)
                while take >= 1 and not all(thief.holds(p) for p in range(victim.end - take,
                                                                           victim.end)):
                    take -= 1
                if take >= 1 and take * self.piece_size / my_rate + latency < victim_left:
                    cut = victim.end - take
                    victim.end = cut
                    for p in range(cut, cut + take):
                        self._disown(p)
                    return [Truncate(victim.id, cut),
                            self._fetch(conn, cut, cut + take, buffered=False)]
            # Duplicate the piece the victim is working on, if we would clearly beat it
            # and every copy already under way (a copy on a connection that has
            # stalled since must not shut out a better one): at most two copies.
            piece = victim.cursor
            copies = self.dups.get(piece, ())
            if self.cfg.tail_duplicates and piece < victim.end and not self.done[piece] \
                    and len(copies) < self.cfg.tail_copies and thief.holds(piece):
                mine = (self._piece_bytes(piece) / my_rate + latency) * self.cfg.tail_margin
                if mine < self._piece_time_left(victim, now, v_rate) and all(
                        mine < self._piece_time_left(self.requests[c], now) for c in copies):
                    return [self._fetch(conn, piece, piece + 1, buffered=True)]
        return [Wait(conn.id)]

    def _release_far_pieces(self, now: float) -> list[Action]:
        """Truncate every request that holds more than it can fetch while the rest of
        the download takes place, and put its far pieces back in the pool.

        The rest takes about T = (unclaimed bytes + what requests have left) / (the
        summed rates of every connection). A request keeps its current piece and as
        many more as its own recent rate carries in ``release_margin`` × T. A
        request whose source stalls (no byte lately, or only a trickle) thus hands
        back its range within a few tenths of a second, and the other connections
        take those pieces in requests sized to their own rates while the pool still
        has work for everyone, rather than later, in the tail, piece by piece.
        """
        if self.swarm or not self.requests:
            return []  # peers hold only some pieces: the swarm rules decide who asks for what
        rates: dict[int, float] = {}
        total = 0.0
        work = 0
        healthy = 0
        for c in self.conns.values():
            src = self.sources[c.source]
            if src.dropped or not src.ranges:
                continue
            req = self.requests.get(c.request) if c.request is not None else None
            if req is not None and not req.buffered:
                rates[req.id] = r = self._request_rate(req, now)
                work += max(0, (req.end - req.cursor) * self.piece_size - req.got_in_cursor)
                healthy += r >= 0.5 * self._conn_rate(c, now)
            elif src.blocked_until <= now and not src.in_a_row:
                r = self._idle_rate(c, now)  # waiting for work: it will take some
            else:
                continue  # a failing source's idle connections will take none
            total += r
        if total <= 0 or not healthy:
            # Every request slowed at once: more likely our own process stalled (a busy
            # machine) than every source together; and if it is every source, there
            # is nobody to hand the pieces to anyway.
            return []
        rest = (work + self._unclaimed_bytes()) / total * self.cfg.release_margin
        out: list[Action] = []
        for rid, rate in rates.items():
            req = self.requests[rid]
            if req.held or now - req.started < self.cfg.rate_window:
                continue  # our own rate limit; or too young to judge
            keep = req.cursor + 1 + int(rate * rest // self.piece_size)
            if keep >= req.end:
                continue
            cut, req.end = req.end, keep
            for p in range(keep, cut):
                if self.owner[p] == rid:
                    self._disown(p)
                    self._low = min(self._low, p)
            out.append(Truncate(rid, keep))
        return out

    def _adapt(self, src: _Source, now: float) -> list[Action]:
        """Grow a source's connections while each new one raises its throughput.

        Throughput is what the source delivered over a span of ``adapt_interval``
        (its byte count), not the sum of its connections' meters: that sum moves
        whenever a request starts or ends, and with each wake-up's chunk, by more
        than the gain asked for (16 tbf-shaped mirrors, where one connection fills
        each link, ended with 3 to 5 connections each, and the spare ones cost 40%
        of the CPU). A connection that did not buy ``adapt_gain`` is closed again.
        """
        if now < src.blocked_until or not src.ranges:
            # A span counts only time the source could work: a backoff would make the
            # connection added last look useless.
            src.mark_at, src.mark_bytes = now, src.bytes
            return []
        src.target = min(src.target, self._limit(src))  # a stripe may have come since
        out = self._open_up_to_target(src)
        if now < src.mark_at + self.cfg.adapt_interval or src.saturated \
                or src.target >= self._limit(src):
            return out
        if self._unclaimed_bytes() == 0:
            return out
        rate = (src.bytes - src.mark_bytes) / max(now - src.mark_at, 1e-9)
        src.mark_at, src.mark_bytes = now, src.bytes
        if src.rate_before_add and rate < src.rate_before_add * self.cfg.adapt_gain:
            src.saturated = True  # the last connection bought nothing: stop adding,
            src.target = max(1, src.target - 1)  # and let it go
            return out
        if self._host_connections(src) >= self.cfg.max_connections_per_host:
            return out  # the host is at its cap: nothing to try
        src.rate_before_add = rate
        src.target += 1
        return out + self._open_up_to_target(src)

    # ---- helpers --------------------------------------------------------

    def _fetch(self, conn: _Conn, first: int, end: int, *, buffered: bool) -> Fetch:
        rid = self._new_id()
        # A connection that has received before is open: its requests wait one round
        # trip (an adopted request's first bytes were already in, too).
        req = _Request(rid, conn.id, conn.source, first, end, buffered, self.clock(), first,
                       timed=conn.meter.first_byte is not None)
        self.requests[rid] = req
        conn.request = rid
        conn.meter.resume(req.started)
        for p in range(first, end):
            if buffered:
                self.dups.setdefault(p, set()).add(rid)
            elif not self.done[p]:
                self._own(p, rid)
        return Fetch(rid, conn.id, conn.source, first, end, buffered)

    def _end_request(self, req: _Request, action: Action | None) -> list[Action]:
        """Forget `req`; its unfinished pieces go back to the pool."""
        self.requests.pop(req.id, None)
        conn = self.conns.get(req.conn)
        if conn is not None and conn.request == req.id:
            conn.request = None
            now = self.clock()
            measured = self._measured_rate(req, now)
            if measured is not None:  # else what the one before showed still stands
                conn.last_recent = measured
            conn.meter.stop(now)
        for p in range(req.first, req.end):  # by ownership: a cursor can never orphan a piece
            if self.owner[p] == req.id:
                self._disown(p)
                self._low = min(self._low, p)
            dups = self.dups.get(p)
            if dups is not None:
                dups.discard(req.id)
                if not dups:
                    del self.dups[p]
        return [action] if action else []

    def _drop(self, sid: int, reason: str) -> list[Action]:
        src = self.sources[sid]
        if src.dropped:
            return []
        src.dropped = reason
        for p in range(self.pieces):
            if src.holds(p):
                self.avail[p] -= 1
        out: list[Action] = [DropSource(sid, reason)]
        for req in list(self.requests.values()):
            if req.source == sid:
                out += self._end_request(req, Cancel(req.id, f"source dropped: {reason}"))
        for cid in list(src.conns):
            out += self._close(self.conns[cid])
        return out

    def _close(self, conn: _Conn) -> list[Action]:
        out: list[Action] = []
        if conn.request is not None and conn.request in self.requests:
            out += self._end_request(self.requests[conn.request], Cancel(conn.request, "closing"))
        self.conns.pop(conn.id, None)
        self.sources[conn.source].conns.discard(conn.id)
        return out + [CloseConnection(conn.id)]

    def _host_connections(self, src: _Source) -> int:
        host = self.host_of[src.id]
        return sum(len(s.conns) for s in self.sources if self.host_of[s.id] == host)

    def _open_up_to_target(self, src: _Source) -> list[Action]:
        out: list[Action] = []
        while not src.dropped and len(src.conns) < src.target \
                and self._host_connections(src) < self.cfg.max_connections_per_host:
            out.append(OpenConnection(self._new_conn(src).id, src.id))
        return out

    def _new_conn(self, src: _Source) -> _Conn:
        cid = self._new_id()
        meter = RateMeter(self.cfg.rate_window, self.clock())
        meter.stop(self.clock())  # it runs while a request is in flight
        conn = self.conns[cid] = _Conn(cid, src.id, meter)
        src.conns.add(cid)
        return conn

    def _conn_rate(self, conn: _Conn, now: float) -> float:
        rate = conn.meter.value(now)
        if rate > 0:
            return rate
        # Not measured yet: assume an equal share of what the source's measured
        # connections carry (a new connection to a busy link splits it, it does not
        # add to it: the average of the others once gave a slow mirror's new
        # connection 16 MiB that it held until the very end); else one piece per
        # request_seconds (small first requests measure quickly, then slow start).
        src = self.sources[conn.source]
        known = [r for c in src.conns if (r := self.conns[c].meter.value(now)) > 0]
        if known:
            return sum(known) / len(src.conns)
        return self.piece_size / self.cfg.request_seconds

    def _idle_rate(self, conn: _Conn, now: float) -> float:
        """What an idle connection is expected to carry on its next request: its
        measured rate, unless its last request had slowed to under half of that
        lately (its source stalled: the smoothed rate is still catching up)."""
        rate = self._conn_rate(conn, now)
        if conn.last_recent is not None and conn.last_recent < 0.5 * rate:
            return conn.last_recent
        return rate

    def _unclaimed_bytes(self) -> int:
        return self._unclaimed * self.piece_size

    def _own(self, piece: int, rid: int) -> None:
        """`rid` streams `piece` (not done) to disk from now on."""
        if self.owner[piece] == NO_OWNER:
            self._unclaimed -= 1
        self.owner[piece] = rid

    def _disown(self, piece: int) -> None:
        """Nobody streams `piece` any more: back in the pool unless it is done."""
        if self.owner[piece] != NO_OWNER:
            self.owner[piece] = NO_OWNER
            if not self.done[piece]:
                self._unclaimed += 1

    def _piece_bytes(self, piece: int) -> int:
        return min(self.piece_size, self.size - piece * self.piece_size)

    def _request_rate(self, req: _Request, now: float) -> float:
        """What `req` carries now: its connection's rate, or less if the request
        has received less than that lately (a stall shows here first)."""
        measured = self._measured_rate(req, now)
        return self._idle_rate(self.conns[req.conn], now) if measured is None else measured

    def _measured_rate(self, req: _Request, now: float) -> float | None:
        """`req`'s own evidence of its rate, None while it has none: its connection's
        smoothed rate, bounded by what the request received in the last window or
        two and, when it has been quiet for far longer than its chunks usually take
        to come, by about a chunk per quiet time (this falls at once when a source
        goes silent, where the recent rate takes up to two windows)."""
        rate = self._conn_rate(self.conns[req.conn], now)
        recent = req.recent_rate(now, self.cfg.rate_window)
        measured = recent is not None
        if recent is not None:
            rate = min(rate, recent)
        if req.last_byte is not None and req.arrivals and not req.held and rate > 0:
            chunk = req.got / req.arrivals
            quiet = now - req.last_byte
            if quiet > max(4 * chunk / rate, self.cfg.rate_window):
                rate = min(rate, chunk / quiet)
                measured = True
        return rate if measured else None

    def _time_left(self, req: _Request, now: float, rate: float | None = None) -> float:
        """How long `req` takes for the pieces it has left, at `rate` (by default its
        _request_rate, which a caller that has it already passes on)."""
        if rate is None:
            rate = self._request_rate(req, now)
        left = self._bytes_left(req) - req.got_in_cursor
        return max(0, left) / rate if rate > 0 else float("inf")

    def _bytes_left(self, req: _Request) -> int:
        """The bytes of `req`'s pieces from its cursor on that are not done yet. In
        O(1) Python steps: the end game asks this of every request, for every idle
        connection (sixteen mirrors: ~8000 times, once a sum over the pieces)."""
        first, end = req.cursor, req.end
        if end <= first:
            return 0
        left = (end - first - self.done.count(1, first, end)) * self.piece_size
        if end == self.pieces and not self.done[end - 1]:
            left -= self.piece_size - self._piece_bytes(end - 1)  # the short last piece
        return left

    def _piece_time_left(self, req: _Request, now: float, rate: float | None = None) -> float:
        """How long `req` takes for its current piece; `rate` as in _time_left."""
        if rate is None:
            rate = self._request_rate(req, now)
        rate = min(self.conns[req.conn].meter.value(now), rate)
        left = self._piece_bytes(req.cursor) - req.got_in_cursor
        if rate <= 0:
            return float("inf") if req.last_byte is not None else self.cfg.first_byte_timeout
        return left / rate

    def _starving(self) -> bool:
        """No piece verified for stripe_patience: the swarm rules give way (a stalled
        peer or stripe), and the origin may be asked for anything."""
        return self.clock() - self._last_piece >= self.cfg.stripe_patience

    def _initial_target(self, src: _Source) -> int:
        """Connections to start with: one to a partial holder (a swarm has many peers,
        most of them with little to give at first)."""
        first = 1 if src.have is not None else self.cfg.initial_connections
        return min(first, self._limit(src))

    def _limit(self, src: _Source) -> int:
        """The most connections `src` may have now. Swarming, a partial holder gets
        ``swarm_peer_connections``, and a full holder shared by the fetchers of the
        stripes it still has to send gets its share of ``max_connections_per_source``:
        the swarm as a whole keeps about as many requests open at the origin as one
        fetcher would. Each of them then finishes in about a piece's time at the
        origin's rate divided by the fetchers, instead of five or six times that, and
        only a finished piece can be relayed: the origin's last pieces, in flight
        together, were the swarm's tail. As stripes are done, the fetchers of the
        others may open more, so that the last stripe does not leave the origin idle
        between the requests of one connection."""
        cap = src.max_connections
        if src.have is not None and self.swarm:
            cap = min(cap, self.cfg.swarm_peer_connections)
        elif src.have is None and self.stripe is not None:
            share = max(1, self._origin_stripes)
            cap = min(cap, max(1, self.cfg.max_connections_per_source // share))
        return max(1, cap)

    def _count_origin_stripes(self) -> None:
        """Count the stripes that still have pieces no live peer has (nor we): their
        fetchers still ask the origin (news of a piece comes late, so this errs high)."""
        if self.stripe is None:
            return
        full = self._live_full()
        step, count = self.cfg.swarm_request_pieces, self.stripe[1]
        busy = set()
        for p in range(self.pieces):
            if not self.done[p] and self.avail[p] <= full:
                busy.add((p // step) % count)
                if len(busy) == count:
                    break
        self._origin_stripes = len(busy)

    def _live_full(self) -> int:
        """How many live sources hold every piece."""
        return sum(1 for s in self.sources if s.have is None and not s.dropped)

    def _set_have(self, src: _Source, have: bytes | bytearray | None) -> None:
        """Make `src` hold `have` (None: every piece), keeping `avail` right."""
        if have is not None and len(have) != self.pieces:
            raise ValueError(f"bitfield of {len(have)} pieces for a {self.pieces}-piece file")
        if not src.dropped:
            counted = src.id in self._counted
            for p in range(self.pieces):
                was = counted and src.holds(p)
                now = have is None or bool(have[p])
                if was != now:
                    self.avail[p] += 1 if now else -1
        self._counted.add(src.id)
        src.have = bytearray(have) if have is not None else None
        if have is not None:
            self.swarm = True

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id
