"""A simulator of sources in simulated time, to measure the scheduler against the ideal.

Each simulated source has a link rate shared by its connections, an optional
per-connection cap (a TCP window), a latency to first byte, and may stall
(drop to a trickle), die, or lie (send pieces that fail their hash). The
scheduler under test is the real one, driven by its events; only time and
bytes are simulated.

Ideal time: the T at which the summed capacity of the sources, as it changes
when they stall or die, has carried every byte: integral_0^T sum_i rate_i(t) dt
= size. Efficiency = ideal / simulated.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from client import events as ev
from client.scheduler import Scheduler, SchedulerConfig


@dataclass
class SimSource:
    rate: float  # bytes/s of the whole link
    per_conn: float = math.inf  # bytes/s one connection can reach
    latency: float = 0.005
    stall_at: float | None = None  # from then on only `trickle` bytes/s
    trickle: float = 0.0
    die_at: float | None = None  # from then on connections fail
    liar: bool = False
    # A partial holder (a swarm peer): the pieces it has at time t, one byte each (0/1).
    have: Callable[[float], bytearray] | None = None

    def capacity(self, t: float) -> float:
        """Useful bytes/s at time t: what counts toward the ideal (a liar's are worth nothing)."""
        return 0.0 if self.liar else self.link(t)

    def link(self, t: float) -> float:
        """Bytes/s the link carries at time t."""
        if self.die_at is not None and t >= self.die_at:
            return 0.0
        if self.stall_at is not None and t >= self.stall_at:
            return self.trickle
        return self.rate


@dataclass
class _Active:
    fetch: ev.Fetch
    ready_at: float
    pos: int  # next byte to deliver
    carry: float = 0.0


@dataclass
class SimResult:
    time: float
    ideal: float
    finished: bool
    failed: str
    bytes: list[int] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    bad_pieces_accepted: int = 0
    unheld_asked: int = 0  # pieces asked of a partial holder that did not have them

    @property
    def efficiency(self) -> float:
        return self.ideal / self.time if self.time else 0.0


def ideal_time(size: int, sources: list[SimSource]) -> float:
    """When the summed useful capacity has carried `size` bytes (inf if it never does)."""
    cuts = sorted({0.0, *(t for s in sources for t in (s.stall_at, s.die_at) if t is not None)})
    moved = 0.0
    for i, start in enumerate(cuts):
        rate = sum(s.capacity(start) for s in sources)
        stop = cuts[i + 1] if i + 1 < len(cuts) else math.inf
        if rate > 0 and moved + rate * (stop - start) >= size:
            return start + (size - moved) / rate
        moved += rate * (stop - start) if stop != math.inf else 0.0
    return math.inf


def simulate(size: int, piece_size: int, sources: list[SimSource],
             config: SchedulerConfig | None = None, *, dt: float = 0.005,
             limit: float = 600.0, seed: int = 1, done: set[int] | None = None) -> SimResult:
    now = [0.0]
    pieces = -(-size // piece_size)
    sched = Scheduler(pieces, piece_size, size, len(sources), config=config,
                      clock=lambda: now[0], rng=random.Random(seed), done=done or (),
                      haves=[s.have(0.0) if s.have else None for s in sources])
    unheld = [0]
    idle: set[int] = set()
    conn_source: dict[int, int] = {}
    active: dict[int, _Active] = {}
    outcome: list[str] = []  # "finished" or a failure
    bad_accepted = 0

    def run(actions: list[ev.Action]) -> None:
        for a in actions:
            match a:
                case ev.OpenConnection(conn, source):
                    conn_source[conn] = source
                    idle.add(conn)
                case ev.Fetch():
                    src = sources[a.source]
                    if src.have is not None:
                        held = src.have(now[0])
                        unheld[0] += sum(1 for p in range(a.first, a.end) if not held[p])
                    active[a.request] = _Active(a, now[0] + src.latency, a.first * piece_size)
                case ev.Cancel(request):
                    act = active.pop(request, None)
                    if act is not None:
                        idle.add(act.fetch.conn)
                case ev.CloseConnection(conn):
                    idle.discard(conn)
                case ev.Finished():
                    outcome.append("finished")
                case ev.Failed(reason):
                    outcome.append(reason)

    run(sched.start())
    next_tick = 0.0
    while not outcome and now[0] < limit:
        t = now[0]
        for conn in sorted(idle):
            if conn not in idle:
                continue
            actions = sched.handle(ev.ConnectionIdle(conn))
            if any(isinstance(a, ev.Fetch) and a.conn == conn for a in actions) or any(
                    isinstance(a, ev.CloseConnection) and a.conn == conn for a in actions):
                idle.discard(conn)
            run(actions)
        # Share each source's capacity among its requests that have started.
        by_source: dict[int, list[_Active]] = {}
        for act in active.values():
            by_source.setdefault(act.fetch.source, []).append(act)
        for sid, acts in by_source.items():
            src = sources[sid]
            if src.die_at is not None and t >= src.die_at:
                for act in acts:
                    if act.ready_at <= t:
                        active.pop(act.fetch.request, None)
                        idle.add(act.fetch.conn)
                        run(sched.handle(ev.RequestEnded(
                            act.fetch.request, ev.Fault(ev.FaultKind.TRANSIENT, "refused"))))
                continue
            started = [a for a in acts if a.ready_at <= t]
            if not started:
                continue
            share = min(src.per_conn, src.link(t) / len(started))
            for act in started:
                if act.fetch.request not in active:
                    continue
                act.carry += share * dt
                n = int(act.carry)
                act.carry -= n
                bad_accepted += _deliver(sched, act, n, size, piece_size, src, run, active, idle)
        if t >= next_tick:
            for i, s in enumerate(sources):
                if s.have is not None:
                    sched.set_have(i, s.have(t))
            run(sched.handle(ev.Tick()))
            next_tick = t + 0.1
        now[0] = t + dt
    stats = [sched.stats(i) for i in range(len(sources))]
    return SimResult(now[0], ideal_time(size, sources), outcome[:1] == ["finished"],
                     "" if outcome[:1] == ["finished"] else (outcome or ["timed out"])[0],
                     [s.bytes for s in stats], [s.dropped for s in stats], bad_accepted,
                     unheld[0])


def _deliver(sched: Scheduler, act: _Active, n: int, size: int, piece_size: int,
             src: SimSource, run, active: dict[int, _Active], idle: set[int]) -> int:
    """Move up to n bytes of one request; returns bad pieces the scheduler accepted."""
    rid = act.fetch.request
    bad = 0
    while n > 0 and rid in active:
        end_piece = sched.request_end(rid)
        end_byte = min(end_piece * piece_size, size)
        if act.pos >= end_byte:
            break
        piece = act.pos // piece_size
        piece_end = min((piece + 1) * piece_size, size)
        step = min(n, piece_end - act.pos)
        act.pos += step
        n -= step
        run(sched.handle(ev.BytesReceived(rid, step)))
        if act.pos == piece_end and rid in active:
            if src.liar and not sched.is_done(piece):
                run(sched.handle(ev.PieceBad(rid, piece)))
            else:
                run(sched.handle(ev.PieceDone(rid, piece)))
    if rid in active and act.pos >= min(sched.request_end(rid) * piece_size, size):
        active.pop(rid)
        idle.add(act.fetch.conn)
        run(sched.handle(ev.RequestEnded(rid)))
    return bad
