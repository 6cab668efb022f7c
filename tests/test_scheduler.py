"""The scheduler, driven directly and through the source simulator in simulated time."""
from __future__ import annotations

import pytest

from client import events as ev
from client.scheduler import NO_OWNER, Scheduler, SchedulerConfig
from tests.sim import SimSource, simulate

MB = 1_000_000
SIZE = 200 * MB
PIECE = 256 * 1024

# name, sources, least efficiency against the ideal (bytes / sum of live useful rates)
SCENARIOS = [
    ("one source", [SimSource(100 * MB)], 0.93),
    ("heterogeneous", [SimSource(25 * MB, per_conn=10 * MB), SimSource(12.5 * MB, per_conn=10 * MB),
                       SimSource(6 * MB), SimSource(2.5 * MB)], 0.95),
    ("fastest stalls mid-run", [SimSource(25 * MB, per_conn=10 * MB, stall_at=1.5, trickle=1000),
                                SimSource(12.5 * MB), SimSource(6 * MB), SimSource(2.5 * MB)], 0.95),
    # Late in the download (ideal 4.35 s without the stall), when the pool of unclaimed
    # pieces is short or empty: what the stalled source holds must come back at once.
    # A trickle (not zero bytes) never trips the stall timeout, and once made a download
    # wait minutes for the last piece at 1 kB/s.
    ("fastest trickles late", [SimSource(25 * MB, per_conn=10 * MB, stall_at=3.5, trickle=1000),
                               SimSource(12.5 * MB), SimSource(6 * MB), SimSource(2.5 * MB)], 0.92),
    ("fastest trickles near the end",
     [SimSource(25 * MB, per_conn=10 * MB, stall_at=3.9, trickle=1000),
      SimSource(12.5 * MB), SimSource(6 * MB), SimSource(2.5 * MB)], 0.92),
    # A host that vanishes (its link goes down): connections fall silent, and new ones
    # never answer.
    ("fastest vanishes near the end", [SimSource(25 * MB, per_conn=10 * MB, stall_at=3.9),
                                       SimSource(12.5 * MB), SimSource(6 * MB),
                                       SimSource(2.5 * MB)], 0.92),
    ("fastest dies near the end", [SimSource(25 * MB, per_conn=10 * MB, die_at=3.9),
                                   SimSource(12.5 * MB), SimSource(6 * MB), SimSource(2.5 * MB)],
     0.92),
    ("fastest stalls dead silent", [SimSource(25 * MB, stall_at=1.0), SimSource(12.5 * MB),
                                    SimSource(6 * MB)], 0.85),
    ("a mirror dies mid-run", [SimSource(25 * MB, per_conn=10 * MB), SimSource(12.5 * MB, die_at=2.0),
                               SimSource(6 * MB), SimSource(2.5 * MB)], 0.94),
    ("a liar among honest sources", [SimSource(25 * MB, liar=True), SimSource(12.5 * MB),
                                     SimSource(6 * MB)], 0.93),
    ("high latency", [SimSource(20 * MB, latency=0.1), SimSource(20 * MB, latency=0.05)], 0.90),
    ("sixteen mirrors", [SimSource((i + 1) * 2 * MB) for i in range(16)], 0.92),
]


@pytest.mark.parametrize("name,sources,least", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_simulated_efficiency(name: str, sources: list[SimSource], least: float) -> None:
    r = simulate(SIZE, PIECE, sources)
    assert r.finished, r.failed
    assert r.efficiency >= least, f"{name}: {r.time:.2f}s against ideal {r.ideal:.2f}s"
    for src, dropped in zip(sources, r.dropped):
        if src.liar:
            assert "bad piece" in dropped


class _CountingChecked(Scheduler):
    """The scheduler, checking after every event that its count of unclaimed pieces
    (kept up to date as pieces are claimed, given back and done) equals a full scan."""

    def handle(self, event: ev.Event) -> list[ev.Action]:
        actions = super().handle(event)
        scanned = sum(1 for p in range(self.pieces)
                      if not self.done[p] and self.owner[p] == NO_OWNER)
        assert self._unclaimed == scanned, (event, self._unclaimed, scanned)
        return actions


@pytest.mark.parametrize("name,sources", [
    (name, sources) for name, sources, _ in SCENARIOS
    if name in ("fastest stalls mid-run", "fastest dies near the end", "a liar among honest sources",
                "sixteen mirrors", "fastest trickles near the end")])
def test_unclaimed_count_matches_a_scan(name: str, sources: list[SimSource],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.sim.Scheduler", _CountingChecked)
    pieces = -(-20 * MB // PIECE)
    r = simulate(20 * MB, PIECE, sources, done=set(range(0, pieces, 7)))
    assert r.finished, r.failed


def _simulate_keeping(monkeypatch: pytest.MonkeyPatch, *args, **kw) -> Scheduler:
    """Run the simulator; return its scheduler, to look at what it ended with."""
    kept: list[Scheduler] = []

    class Kept(Scheduler):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            kept.append(self)

    monkeypatch.setattr("tests.sim.Scheduler", Kept)
    r = simulate(*args, **kw)
    assert r.finished, r.failed
    return kept[0]


def test_a_link_one_connection_fills_keeps_no_spare_connections(monkeypatch) -> None:
    # The third connection is tried, buys nothing, and is let go again.
    s = _simulate_keeping(monkeypatch, 100 * MB, PIECE, [SimSource(20 * MB)])
    assert s.sources[0].saturated and s.sources[0].target == 2


def test_a_source_that_caps_each_connection_gets_more(monkeypatch) -> None:
    s = _simulate_keeping(monkeypatch, 200 * MB, PIECE, [SimSource(40 * MB, per_conn=8 * MB)])
    assert s.sources[0].target >= 5


def test_all_sources_dead_fails_with_reasons() -> None:
    r = simulate(10 * MB, PIECE, [SimSource(5 * MB, die_at=0.5), SimSource(5 * MB, die_at=0.5)],
                 limit=300)
    assert not r.finished
    assert "no source left" in r.failed and "refused" in r.failed


def test_resumed_pieces_are_not_fetched_again() -> None:
    pieces = -(-10 * MB // PIECE)
    done = set(range(0, pieces, 2))
    r = simulate(10 * MB, PIECE, [SimSource(10 * MB)], done=done)
    assert r.finished
    fetched = sum(r.bytes)
    assert fetched <= 10 * MB - len(done) * PIECE + PIECE


def _sched(pieces: int = 8, sources: int = 1, **cfg: float) -> tuple[Scheduler, list[float]]:
    now = [0.0]
    s = Scheduler(pieces, PIECE, pieces * PIECE, sources, clock=lambda: now[0],
                  config=SchedulerConfig(**cfg))  # type: ignore[arg-type]
    return s, now


def _open_conns(actions: list[ev.Action]) -> list[ev.OpenConnection]:
    return [a for a in actions if isinstance(a, ev.OpenConnection)]


def test_first_requests_are_small_and_cover_distinct_pieces() -> None:
    s, _ = _sched(initial_connections=2)
    conns = _open_conns(s.start())
    assert len(conns) == 2
    f1 = s.handle(ev.ConnectionIdle(conns[0].conn))[0]
    f2 = s.handle(ev.ConnectionIdle(conns[1].conn))[0]
    assert isinstance(f1, ev.Fetch) and isinstance(f2, ev.Fetch)
    assert (f1.first, f1.end) == (0, 1) and (f2.first, f2.end) == (1, 2)


def test_bad_piece_drops_source_and_returns_its_work() -> None:
    s, _ = _sched(sources=2, initial_connections=1)
    c_liar, c_good = _open_conns(s.start())
    bad = s.handle(ev.ConnectionIdle(c_liar.conn))[0]
    assert isinstance(bad, ev.Fetch)
    out = s.handle(ev.PieceBad(bad.request, bad.first))
    assert ev.DropSource(c_liar.source, f"sent a bad piece (#{bad.first})") in out
    assert any(isinstance(a, ev.Cancel) and a.request == bad.request for a in out)
    good = s.handle(ev.ConnectionIdle(c_good.conn))[0]
    assert isinstance(good, ev.Fetch) and good.first == bad.first  # the piece went back


def test_first_verified_copy_wins_and_cancels_the_other() -> None:
    s, now = _sched(pieces=1, sources=2, initial_connections=1)
    slow, fast = _open_conns(s.start())
    f_slow = s.handle(ev.ConnectionIdle(slow.conn))[0]
    assert isinstance(f_slow, ev.Fetch)
    now[0] = 0.1
    s.handle(ev.BytesReceived(f_slow.request, 1000))
    # The fast connection has proven itself on earlier work (simulated by its meter).
    s.conns[fast.conn].meter.add(50 * MB, 0.0)
    now[0] = 1.0
    s.handle(ev.BytesReceived(f_slow.request, 10))
    dup = s.handle(ev.ConnectionIdle(fast.conn))[0]
    assert isinstance(dup, ev.Fetch) and dup.buffered and dup.first == 0
    out = s.handle(ev.PieceDone(dup.request, 0))
    assert ev.Cancel(f_slow.request, "piece 0 arrived elsewhere first") in out
    assert ev.Finished() in out


def test_stalled_request_is_cancelled_and_source_backs_off() -> None:
    s, now = _sched(pieces=4, initial_connections=1, stall_timeout=5.0)
    (c,) = _open_conns(s.start())
    f = s.handle(ev.ConnectionIdle(c.conn))[0]
    assert isinstance(f, ev.Fetch)
    s.handle(ev.BytesReceived(f.request, 10))
    now[0] = 6.0
    out = s.handle(ev.Tick())
    assert any(isinstance(a, ev.Cancel) and a.request == f.request for a in out)
    assert s.stats(0).failures == 1
    assert s.handle(ev.ConnectionIdle(c.conn)) == [ev.Wait(c.conn)]  # backing off


def test_fatal_fault_drops_source_at_once() -> None:
    s, _ = _sched(initial_connections=1)
    (c,) = _open_conns(s.start())
    f = s.handle(ev.ConnectionIdle(c.conn))[0]
    assert isinstance(f, ev.Fetch)
    out = s.handle(ev.RequestEnded(f.request, ev.Fault(ev.FaultKind.FATAL, "answered 404")))
    assert ev.DropSource(0, "answered 404") in out
    assert any(isinstance(a, ev.Failed) for a in s.handle(ev.Tick()))


def test_ranges_ignored_by_the_only_source_streams_everything() -> None:
    s, _ = _sched(initial_connections=2)
    conns = _open_conns(s.start())
    f = s.handle(ev.ConnectionIdle(conns[0].conn))[0]
    assert isinstance(f, ev.Fetch)
    s.handle(ev.RangesIgnored(f.request))
    actions = s.handle(ev.ConnectionIdle(conns[0].conn)) + s.handle(ev.ConnectionIdle(conns[1].conn))
    fetches = [a for a in actions if isinstance(a, ev.Fetch)]
    assert len(fetches) == 1 and (fetches[0].first, fetches[0].end) == (0, 8)


def test_a_duplicate_winning_ahead_of_its_new_owner_orphans_nothing() -> None:
    """Regression: a buffered copy of piece 5 won while the owner was still at piece 2;
    the owner's cursor jumped past 2..4, and when it failed those stayed owned forever."""
    from client.scheduler import NO_OWNER

    t = [0.0]
    s = Scheduler(10, PIECE, 10 * PIECE, 3, clock=lambda: t[0])
    c = [a.conn for a in s.start()]
    e = s._fetch(s.conns[c[2]], 0, 2, buffered=False).request
    d = s._fetch(s.conns[c[1]], 2, 5, buffered=False).request
    a = s._fetch(s.conns[c[0]], 5, 6, buffered=False).request
    f = s._fetch(s.conns[c[3]], 6, 10, buffered=False).request
    for now in (0.0, 0.4):  # e and f are younger than a rate window: not victims yet
        t[0] = now
        s.handle(ev.BytesReceived(a, 1000))
        s.handle(ev.BytesReceived(d, 5000 * PIECE))
    dup = s.handle(ev.ConnectionIdle(c[5]))[0]
    assert isinstance(dup, ev.Fetch) and dup.buffered and dup.first == 5
    for r in (d, a, f):
        s.handle(ev.RequestEnded(r, ev.Fault(ev.FaultKind.TRANSIENT, "reset")))
    t[0] = 30.0
    claim = s.handle(ev.ConnectionIdle(c[1]))[0]
    assert isinstance(claim, ev.Fetch) and claim.first == 2 and claim.end > 5
    s.handle(ev.PieceDone(dup.request, 5))  # the copy wins while the owner is at piece 2
    s.handle(ev.RequestEnded(claim.request, ev.Fault(ev.FaultKind.TRANSIENT, "reset")))
    orphans = [p for p in range(10) if not s.done[p] and s.owner[p] != NO_OWNER
               and s.owner[p] not in s.requests]
    assert orphans == [] and e in s.requests


def test_sources_without_ranges_never_share_a_piece() -> None:
    """Regression: a retried no-ranges request claimed pieces another one was streaming."""
    t = [0.0]
    s = Scheduler(10, PIECE, 10 * PIECE, 2, clock=lambda: t[0])
    for src in s.sources:
        src.ranges, src.max_connections = False, 1
    c0, c1 = [a.conn for a in s.start()]

    def fetch(conn: int) -> ev.Fetch:
        return next(a for a in s.handle(ev.ConnectionIdle(conn)) if isinstance(a, ev.Fetch))

    r0, r1 = fetch(c0), fetch(c1)  # the second splits the first's range
    s.handle(ev.RequestEnded(r0.request, ev.Fault(ev.FaultKind.TRANSIENT, "reset")))
    t[0] = 30.0
    r2 = fetch(c0)
    mine = {p for p in range(10) if s.may_write(r2.request, p)}
    theirs = {p for p in range(10) if s.may_write(r1.request, p)}
    assert not mine & theirs


def test_a_stalled_request_hands_its_far_pieces_back_at_once() -> None:
    """A source that falls silent mid-request keeps only its current piece: within
    about a second its far pieces are back in the pool for the others, long before
    the stall timeout (8 s) would free them."""
    # One connection each (no adapting): the test drives those two by hand.
    s, now = _sched(pieces=64, sources=2, initial_connections=1, max_connections_per_source=1)
    c_stalls, c_fine = (s.conns[a.conn] for a in _open_conns(s.start()))
    stalls = s._fetch(c_stalls, 0, 20, buffered=False).request
    fine = s._fetch(c_fine, 20, 40, buffered=False).request
    got = {stalls: 0, fine: 20}

    def piece(rid: int) -> None:  # one more piece in 0.25 s: about 1 MB/s
        s.handle(ev.BytesReceived(rid, PIECE))
        s.handle(ev.PieceDone(rid, got[rid]))
        got[rid] += 1

    truncated: list[ev.Truncate] = []
    for step in range(1, 11):
        now[0] = step * 0.25
        if now[0] <= 1.0:  # then it falls silent
            piece(stalls)
        piece(fine)
        truncated += [a for a in s.handle(ev.Tick()) if isinstance(a, ev.Truncate)]
    assert [(t.request, t.end) for t in truncated] == [(stalls, 5)]  # its current piece
    assert s.request_end(stalls) == 5 and s.stats(0).failures == 0  # not failed
    s.handle(ev.RequestEnded(fine))
    again = s.handle(ev.ConnectionIdle(c_fine.id))[0]
    assert isinstance(again, ev.Fetch) and again.first == 5  # the pool has them back


def test_an_idle_connection_keeps_its_rate() -> None:
    """Waiting for work is not being slow: after a long wait at the tail, a fast
    connection still counts as fast when a stalled request needs taking over."""
    s, now = _sched(pieces=64, initial_connections=1)
    (c,) = _open_conns(s.start())
    f = s.handle(ev.ConnectionIdle(c.conn))[0]
    assert isinstance(f, ev.Fetch)
    for step in range(1, 11):
        now[0] = step * 0.1
        s.handle(ev.BytesReceived(f.request, 1_000_000))
    s.handle(ev.RequestEnded(f.request))
    before = s.connection_rate(c.conn)
    now[0] = 30.0
    assert before > 5 * MB and s.connection_rate(c.conn) == before
    assert s.source_rate(0) == 0  # but nothing is arriving: the display shows none


def test_a_backoff_does_not_count_against_the_connection_added_last() -> None:
    # Bytes flow at 2 MB/s on two connections, then 3 MB/s once a third is added; a
    # failure in between blocks the source for a while, with no bytes. The span that
    # judges the third connection starts after the backoff: it is kept.
    s, now = _sched(pieces=4000, sources=1, initial_connections=2)
    conns = [a.conn for a in _open_conns(s.start())]
    reqs = [s.handle(ev.ConnectionIdle(c))[0].request for c in conns]

    def flow(seconds: float, rate: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        for _ in range(int(seconds / 0.05)):
            now[0] += 0.05
            s.handle(ev.BytesReceived(reqs[0], int(rate * 0.05)))
            out += s.handle(ev.Tick())
        return out

    added = _open_conns(flow(1.0, 2e6))
    assert len(added) == 1  # the first span's rate is the baseline; a third is tried
    fault = ev.Fault(ev.FaultKind.TRANSIENT, "reset")
    s.handle(ev.RequestEnded(reqs[1], fault))
    assert s.sources[0].blocked_until > now[0]
    while now[0] < s.sources[0].blocked_until:  # nothing arrives meanwhile
        now[0] += 0.05
        s.handle(ev.Tick())
    flow(1.0, 3e6)
    assert not s.sources[0].saturated and s.sources[0].target == 4


def test_at_the_end_a_slow_connection_leaves_the_last_pieces_to_a_faster_one() -> None:
    """The last 4 pieces take a 50 MB/s connection 20 ms; one of them would take a
    1 MB/s connection 260 ms: the slow one waits and the download ends sooner. With
    400 pieces left (2 s for the fast one) the slow one does take its share."""
    for pieces, slow_takes in ((4, False), (400, True)):
        s, now = _sched(pieces=pieces, sources=2, initial_connections=1)
        fast, slow = _open_conns(s.start())
        # Both have proven their rates on a second of earlier work (on their meters).
        for conn, rate in ((fast.conn, 50 * MB), (slow.conn, 1 * MB)):
            meter = s.conns[conn].meter
            meter.resume(0.0)
            meter.add(rate, 0.0)
            meter.stop(1.0)
        now[0] = 1.0
        first = s.handle(ev.ConnectionIdle(slow.conn))[0]
        assert isinstance(first, ev.Fetch) is slow_takes, (pieces, first)
        if not slow_takes:
            assert first == ev.Wait(slow.conn)
            f = s.handle(ev.ConnectionIdle(fast.conn))[0]
            assert isinstance(f, ev.Fetch) and f.first == 0
            # Busy with most of them, the fast one still gets the rest first.
            assert s.handle(ev.ConnectionIdle(slow.conn)) == [ev.Wait(slow.conn)]


def test_a_source_latency_follows_its_first_bytes() -> None:
    """The cost of starting a request, which the tail weighs (a duplicate or a split
    pays it), starts as a guess and then follows each request's wait for its first
    bytes: 2 ms on a LAN, not the 50 ms guessed."""
    s, now = _sched(pieces=64, initial_connections=1)
    (c,) = _open_conns(s.start())
    guess = SchedulerConfig().latency_guess
    assert s.sources[0].latency == guess

    def one(wait: float, held: bool = False) -> None:
        f = s.handle(ev.ConnectionIdle(c.conn))[0]
        assert isinstance(f, ev.Fetch)
        if held:
            s.handle(ev.Throttled(f.request, True))
        now[0] += wait
        if held:
            s.handle(ev.Throttled(f.request, False))
        s.handle(ev.BytesReceived(f.request, PIECE))
        s.handle(ev.PieceDone(f.request, f.first))
        s.handle(ev.RequestEnded(f.request))

    one(0.5)  # a new connection: the connect comes first, that is not the latency
    assert s.sources[0].latency == guess
    one(0.5, held=True)  # our own rate limit held it back
    assert s.sources[0].latency == guess
    for _ in range(20):
        one(0.002)
    assert s.sources[0].latency == pytest.approx(0.002, abs=0.001)


def test_a_piece_count_that_does_not_fit_the_size_is_refused() -> None:
    """_bytes_left counts the short last piece from size and piece size: a scheduler
    given a count they do not make would count wrong, so it refuses it."""
    with pytest.raises(ValueError, match="35 bytes do not make 5 pieces of 10"):
        Scheduler(5, 10, 35, 1, clock=lambda: 0.0)
    assert Scheduler(4, 10, 35, 1, clock=lambda: 0.0).pieces == 4
    assert Scheduler(0, 10, 0, 1, clock=lambda: 0.0).pieces == 0


def test_bytes_left_counts_the_pieces_not_done_and_the_short_last_one() -> None:
    """The O(1) count agrees with the sum over the pieces, for every range, with
    pieces done (by a duplicate) inside it, a short last piece or none."""
    import random

    from client.scheduler import _Request

    rng = random.Random(7)
    for size in (35, 40, 1):
        piece = 10
        pieces = -(-size // piece)
        for _ in range(200):
            s = Scheduler(pieces, piece, size, 1, clock=lambda: 0.0)
            for p in range(pieces):
                s.done[p] = rng.random() < 0.3
            first = rng.randrange(pieces + 1)
            end = rng.randrange(pieces + 1)
            req = _Request(1, 1, 0, first, end, False, 0.0, first, True)
            want = sum(min(piece, size - p * piece) for p in range(first, end) if not s.done[p])
            assert s._bytes_left(req) == want, (size, list(s.done), first, end)


def test_a_meter_answers_again_for_the_same_instant_only_until_it_changes() -> None:
    """RateMeter.value keeps its answer for an instant; bytes added, a stop or a
    resume at that same instant must show in the next answer."""
    from client.scheduler import RateMeter

    m = RateMeter(0.5, 0.0)
    m.add(1000, 0.0)
    assert m.value(0.1) == pytest.approx(10_000)
    m.add(1000, 0.1)  # the same instant: the answer changes with the bytes
    assert m.value(0.1) == pytest.approx(20_000)
    m.stop(0.1)
    m.resume(0.3)  # the idle 0.2 s is left out: at 0.3 the meter reads as at 0.1
    assert m.value(0.3) == pytest.approx(20_000)
