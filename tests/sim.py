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


# ---- a swarm: several fetchers, each a scheduler, feeding each other ---------------


@dataclass
class SwarmResult:
    finish: list[float]  # each fetcher's finishing time (inf if it did not)
    origin_bytes: int
    peer_bytes: int
    max_conns: list[int]  # the most connections any fetcher had open to one source
    hashed: list[float]  # when each fetcher's in-order whole-file hash was done
    origin_done: float  # when the origin sent its last byte

    @property
    def last(self) -> float:
        return max(self.finish)


def simulate_swarm(size: int, piece_size: int, fetchers: int, *, origin_rate: float,
                   uplink: float, push: float = 0.1, poll: float = 0.25,
                   latency: float = 0.002, stagger: float = 0.0, hash_rate: float = 0.0,
                   config: SchedulerConfig | None = None,
                   dt: float = 0.005, limit: float = 300.0, seed: int = 1) -> SwarmResult:
    """`fetchers` fetchers start together; each has an uplink of `uplink` bytes/s shared by
    every request made to it, as the origin's `origin_rate` is by every request to it.
    A fetcher's verified pieces reach its agent every `push` s, and each fetcher asks
    each peer's agent for them every `poll` s (the news a scheduler acts on is that
    old). Fetcher i starts at i * `stagger` s and knows its stripe (rank i of
    `fetchers`) from then on; the finishing times count from the first start. Node 0
    is the origin; fetcher i is node i + 1, and in fetcher i's scheduler source 0 is
    the origin and source k the node k (its own node is a source that never has a
    piece). Downlinks are unlimited. With `hash_rate` (bytes/s), each fetcher hashes its
    file in order as the verified prefix grows, as the fetcher does for the whole-file
    digest (`hashed`: when that is done)."""
    now = [0.0]
    pieces = -(-size // piece_size)
    rng = random.Random(seed)
    nodes = fetchers + 1
    scheds: list[Scheduler] = []
    for i in range(fetchers):
        haves: list[bytearray | None] = [None] + [bytearray(pieces) for _ in range(fetchers)]
        s = Scheduler(pieces, piece_size, size, nodes, config=config, clock=lambda: now[0],
                      rng=random.Random(rng.random()), haves=haves, rarest_first=True)
        s.set_stripe(i, fetchers)
        scheds.append(s)
    agent_view = [bytearray(pieces) for _ in range(fetchers)]  # what each agent serves
    finish = [math.inf] * fetchers
    conn_of: list[dict[int, int]] = [{} for _ in range(fetchers)]  # conn -> source
    idle: list[set[int]] = [set() for _ in range(fetchers)]
    active: dict[tuple[int, int], _Active] = {}  # (fetcher, request) -> its transfer
    sent = [0] * nodes
    most = [0] * fetchers
    hashed_bytes = [0.0] * fetchers
    hashed = [math.inf] * fetchers
    origin_done = 0.0

    def run(i: int, actions: list[ev.Action]) -> None:
        for a in actions:
            match a:
                case ev.OpenConnection(conn, source):
                    conn_of[i][conn] = source
                    idle[i].add(conn)
                case ev.Fetch():
                    active[i, a.request] = _Active(a, now[0] + latency, a.first * piece_size)
                case ev.Cancel(request):
                    act = active.pop((i, request), None)
                    if act is not None:
                        idle[i].add(act.fetch.conn)
                case ev.CloseConnection(conn):
                    idle[i].discard(conn)
                    conn_of[i].pop(conn, None)
                case ev.Finished():
                    finish[i] = min(finish[i], now[0])

    for i, s in enumerate(scheds):
        s._drop(i + 1, "ourselves")  # fetcher i is not a source of its own download
    started = [False] * fetchers
    next_push = next_poll = next_tick = 0.0
    while now[0] < limit and not all(h < math.inf for h in (hashed if hash_rate else finish)):
        t = now[0]
        for i, s in enumerate(scheds):
            if not started[i] and t >= i * stagger:
                started[i] = True
                run(i, s.start())
            for conn in sorted(idle[i]):
                if conn not in idle[i] or finish[i] < math.inf:
                    continue
                actions = s.handle(ev.ConnectionIdle(conn))
                if any(getattr(a, "conn", None) == conn
                       and isinstance(a, (ev.Fetch, ev.CloseConnection)) for a in actions):
                    idle[i].discard(conn)
                run(i, actions)
            per_source: dict[int, int] = {}
            for src in conn_of[i].values():
                per_source[src] = per_source.get(src, 0) + 1
            most[i] = max([most[i], *per_source.values()])
        by_node: dict[int, list[tuple[int, _Active]]] = {}
        for (i, _), act in active.items():
            if act.ready_at <= t:
                by_node.setdefault(act.fetch.source, []).append((i, act))
        for node, acts in by_node.items():
            share = (origin_rate if node == 0 else uplink) / len(acts)
            for i, act in acts:
                rid = act.fetch.request
                if (i, rid) not in active:
                    continue
                act.carry += share * dt
                n = int(act.carry)
                act.carry -= n
                s = scheds[i]
                while n > 0 and (i, rid) in active:
                    end_byte = min(s.request_end(rid) * piece_size, size)
                    if act.pos >= end_byte:
                        break
                    piece = act.pos // piece_size
                    step = min(n, min((piece + 1) * piece_size, size) - act.pos)
                    act.pos += step
                    n -= step
                    sent[node] += step
                    if node == 0:
                        origin_done = t
                    run(i, s.handle(ev.BytesReceived(rid, step)))
                    if act.pos == min((piece + 1) * piece_size, size) and (i, rid) in active:
                        run(i, s.handle(ev.PieceDone(rid, piece)))
                if (i, rid) in active and act.pos >= min(s.request_end(rid) * piece_size, size):
                    del active[i, rid]
                    idle[i].add(act.fetch.conn)
                    run(i, s.handle(ev.RequestEnded(rid)))
        for i, s in enumerate(scheds):
            if hash_rate and hashed[i] == math.inf:
                prefix = s.done.find(0)
                top = size if prefix < 0 else prefix * piece_size
                hashed_bytes[i] = min(top, hashed_bytes[i] + hash_rate * dt)
                if hashed_bytes[i] >= size:
                    hashed[i] = t
        if t >= next_push:
            for i, s in enumerate(scheds):
                agent_view[i] = bytearray(s.done)
            next_push = t + push
        if t >= next_poll:
            for i, s in enumerate(scheds):
                for j in range(fetchers):
                    if j != i:
                        s.set_have(j + 1, agent_view[j])
            next_poll = t + poll
        if t >= next_tick:
            for i, s in enumerate(scheds):
                if started[i]:
                    run(i, s.handle(ev.Tick()))
            next_tick = t + 0.1
        now[0] = t + dt
    return SwarmResult(finish, sent[0], sum(sent[1:]), most, hashed, origin_done)
