"""Swarming in the scheduler core: partial holders, growing bitfields, rarest first,
sources that join mid-download. Driven directly and through the simulator."""
from __future__ import annotations

import random

import pytest

from client import events as ev
from client.scheduler import Scheduler
from tests.sim import SimSource, simulate, simulate_swarm

MB = 1_000_000
PIECE = 256 * 1024


def flags(n: int, held: range | list[int]) -> bytearray:
    out = bytearray(n)
    for p in held:
        out[p] = 1
    return out


def _fetches(actions: list[ev.Action]) -> list[ev.Fetch]:
    return [a for a in actions if isinstance(a, ev.Fetch)]


def _open(s: Scheduler, actions: list[ev.Action]) -> dict[int, list[int]]:
    """Connections per source, from OpenConnection actions."""
    conns: dict[int, list[int]] = {}
    for a in actions:
        if isinstance(a, ev.OpenConnection):
            conns.setdefault(a.source, []).append(a.conn)
    return conns


def test_rarest_first_and_partial_holders_only_asked_for_what_they_hold() -> None:
    n = 40
    now = [0.0]
    # 0: the origin (everything); 1: a peer with pieces 0-19; 2: a peer with 0-9.
    s = Scheduler(n, PIECE, n * PIECE, 3, clock=lambda: now[0], rng=random.Random(3),
                  haves=[None, flags(n, range(20)), flags(n, range(10))])
    conns = _open(s, s.start())
    (f_origin,) = _fetches(s.handle(ev.ConnectionIdle(conns[0][0])))
    assert 20 <= f_origin.first and f_origin.end <= n, "the origin is asked for what no peer has"
    (f_peer,) = _fetches(s.handle(ev.ConnectionIdle(conns[1][0])))
    assert 10 <= f_peer.first and f_peer.end <= 20, "the peer is asked for its rarest pieces"
    (f_small,) = _fetches(s.handle(ev.ConnectionIdle(conns[2][0])))
    assert f_small.end <= 10


def test_a_peer_with_nothing_waits_then_gets_work_when_its_bitfield_grows() -> None:
    n = 16
    now = [0.0]
    s = Scheduler(n, PIECE, n * PIECE, 2, clock=lambda: now[0], rng=random.Random(1),
                  haves=[None, bytearray(n)])
    conns = _open(s, s.start())
    peer = conns[1][0]
    assert s.handle(ev.ConnectionIdle(peer)) == [ev.Wait(peer)]
    s.set_have(1, flags(n, [7, 8]))
    (f,) = _fetches(s.handle(ev.ConnectionIdle(peer)))
    assert (f.first, f.end) in ((7, 8), (7, 9), (8, 9))


def test_bad_bitfield_length_is_refused() -> None:
    s = Scheduler(8, PIECE, 8 * PIECE, 1, clock=lambda: 0.0)
    with pytest.raises(ValueError, match="bitfield of 3 pieces"):
        s.add_source(bytearray(3))


def test_a_source_joining_mid_download_gets_connections() -> None:
    n = 16
    now = [0.0]
    s = Scheduler(n, PIECE, n * PIECE, 1, clock=lambda: now[0])
    s.start()
    sid, actions = s.add_source(flags(n, range(n)))
    assert sid == 1 and _open(s, actions)[1]
    assert s.swarm


def test_dropped_peer_no_longer_counts_toward_rarity() -> None:
    n = 8
    s = Scheduler(n, PIECE, n * PIECE, 2, clock=lambda: 0.0, haves=[None, flags(n, [0, 1])])
    assert s.avail[0] == 2 and s.avail[5] == 1
    s._drop(1, "test")
    assert s.avail[0] == 1


def test_simulated_peer_with_growing_bitfield_takes_load_off_the_origin() -> None:
    size = 50 * MB
    n = -(-size // PIECE)

    def growing(t: float) -> bytearray:  # a peer ahead of us: it gains 40 pieces/s
        return flags(n, range(min(n, int(40 * t))))

    r = simulate(size, PIECE, [SimSource(2 * MB), SimSource(20 * MB, have=growing)], seed=2)
    assert r.finished, r.failed
    assert r.unheld_asked == 0, "a partial holder was asked for pieces it lacked"
    origin, peer = r.bytes
    assert peer > 3 * origin, f"origin sent {origin}, peer {peer}"


def test_simulated_partial_liar_is_dropped_and_download_completes() -> None:
    size = 20 * MB
    n = -(-size // PIECE)
    r = simulate(size, PIECE, [SimSource(5 * MB),
                               SimSource(20 * MB, liar=True, have=lambda t: flags(n, range(n)))])
    assert r.finished
    assert "bad piece" in r.dropped[1]


def test_stripe_keeps_the_origin_to_this_fetchers_blocks_until_patience_runs_out() -> None:
    n = 32  # blocks of 4 pieces: 0-3, 4-7, ...; rank 1 of 2 owns 4-7, 12-15, ...
    now = [0.0]
    s = Scheduler(n, PIECE, n * PIECE, 1, clock=lambda: now[0], rng=random.Random(5),
                  rarest_first=True)
    s.set_stripe(1, 2)
    conns = _open(s, s.start())[0]
    mine = []
    for _ in range(8):
        for c in conns:
            for f in _fetches(s.handle(ev.ConnectionIdle(c))):
                mine += range(f.first, f.end)
                s.handle(ev.PieceDone(f.request, f.first))
                for p in range(f.first + 1, f.end):
                    s.handle(ev.PieceDone(f.request, p))
                s.handle(ev.RequestEnded(f.request))
    assert mine and all((p // 4) % 2 == 1 for p in mine), mine
    assert mine == [p for p in range(n) if (p // 4) % 2 == 1], "in file order"
    # Our stripe is done; the other stripe's fetcher is silent: after the patience,
    # the origin is asked for its pieces too.
    assert _fetches(s.handle(ev.ConnectionIdle(conns[0]))) == []
    now[0] += s.cfg.stripe_patience + 0.1
    (f,) = _fetches(s.handle(ev.ConnectionIdle(conns[0])))
    assert (f.first // 4) % 2 == 0


def test_a_stuck_peer_does_not_hold_the_download_hostage() -> None:
    size = 10 * MB
    n = -(-size // PIECE)
    # The peer claims every piece but its link stalls at once: after the patience,
    # the origin is asked for the peer's pieces too.
    r = simulate(size, PIECE, [SimSource(5 * MB),
                               SimSource(20 * MB, stall_at=0.0, trickle=100,
                                         have=lambda t: flags(n, range(n)))], limit=120)
    assert r.finished, r.failed
    assert r.time < 30, r.time


def test_pieces_no_live_source_holds_fail_the_download_after_a_while() -> None:
    """The origin is gone and the peers left hold only some pieces: waiting for ever
    would hang every fetcher; after orphan_timeout the download fails and says why. A
    peer whose bitfield grows to cover the hole in time keeps it alive."""
    n = 8
    now = [0.0]
    s = Scheduler(n, PIECE, n * PIECE, 2, clock=lambda: now[0],
                  haves=[None, flags(n, range(6))])
    s.start()
    s._drop(0, "died")
    timeout = s.cfg.orphan_timeout
    assert not [a for a in s.handle(ev.Tick()) if isinstance(a, ev.Failed)]
    now[0] = timeout / 2
    assert not [a for a in s.handle(ev.Tick()) if isinstance(a, ev.Failed)]
    s.set_have(1, flags(n, range(8)))  # the peer got the rest: nothing is orphaned now
    now[0] = timeout * 2
    assert not [a for a in s.handle(ev.Tick()) if isinstance(a, ev.Failed)]
    s.set_have(1, flags(n, range(7)))  # (a bitfield only grows in life; here: a new hole)
    now[0] = timeout * 2.5
    assert not [a for a in s.handle(ev.Tick()) if isinstance(a, ev.Failed)]
    now[0] = timeout * 3.5 + 1  # a whole orphan_timeout after the hole was first seen
    (failed,) = [a for a in s.handle(ev.Tick()) if isinstance(a, ev.Failed)]
    assert "no live source has 1 of the pieces left (first: 7)" in failed.reason


def test_a_swarm_of_eight_finishes_soon_after_the_origin_has_sent_the_file() -> None:
    """Eight fetchers and an origin, every uplink the same. The origin must send the file
    once (the ideal time); each piece must then reach the seven others. A piece can be
    passed on only once it is whole, so the fewer requests share an uplink at once, the
    sooner it is: with a fetcher's usual connections (up to six per source) the
    origin's and the peers' uplinks were each split among dozens of requests, every
    piece spent seconds in flight, and the last ones all landed together at the end
    (1.31 times the ideal here; 1.13 with one connection per peer and the origin's
    connections shared out among the fetchers)."""
    size, rate = 16 * 1024 * 1024, 2.5e6
    r = simulate_swarm(size, PIECE, 8, origin_rate=rate, uplink=rate, hash_rate=70e6)
    ideal = size / rate
    assert r.last <= 1.2 * ideal, f"last finished at {r.last:.2f}s, ideal {ideal:.2f}s"
    tail = r.last - r.origin_done  # 2.07 s before, 0.85 s now
    assert tail <= 1.2, f"the last finished {tail:.2f}s after the origin's last byte"
    assert r.origin_bytes <= 1.05 * size
    assert max(r.max_conns) <= 2, r.max_conns
    # The whole-file hash reads the file in order as the verified prefix grows. With
    # the stripes taken from the origin in random order, most of it was hashed only
    # after the last piece (0.23 s here at 70 MB/s; seconds on a busy machine); with
    # each stripe in file order, little is left.
    lag = max(h - f for h, f in zip(r.hashed, r.finish))
    assert lag <= 0.15, f"hashing ended {lag:.2f}s after the last piece"


def test_the_origins_connections_are_shared_among_the_stripes_it_still_sends() -> None:
    """Four fetchers: while all four stripes are still only at the origin, this one
    opens one connection to it (six shared by four); when the peers hold the other
    three stripes, it may open its usual two (and grow to six)."""
    n = 64  # blocks of 4: stripe 0 is 0-3, 16-19, 32-35, 48-51
    others = flags(n, [p for p in range(n) if (p // 4) % 4 != 0])

    def origin_conns(peer_has: bytearray) -> int:
        s = Scheduler(n, PIECE, n * PIECE, 2, clock=lambda: 0.0, rarest_first=True,
                      haves=[None, peer_has])
        s.set_stripe(0, 4)
        return len(_open(s, s.start()).get(0, []))

    assert origin_conns(bytearray(n)) == 1
    assert origin_conns(others) == 2
