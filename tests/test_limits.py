"""Politeness and limits: --limit-rate, the agent's upload rate and per-client cap, and
mfetch's per-host connection cap. The rate checks measure over a few seconds and hold
within 10% above the limit (leniently below it: a loaded machine may be slower)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import aiohttp
import pytest

from agent.app import start
from agent.config import AgentConfig
from client import events as ev
from client.http import status_fault
from client.scheduler import Scheduler, SchedulerConfig
from common.errors import ConfigError
from common.ratelimit import TokenBucket, parse_rate
from tests import procs as _procs
from tests.agent_helpers import eventually
from tests.servers import nginx
from tests.test_system import make_file

KiB, MiB = 1024, 1024 * 1024
PIECE = 256 * KiB


# ---- the pure parts -------------------------------------------------------

def test_parse_rate_is_curl_style() -> None:
    assert parse_rate("500K") == 500 * KiB
    assert parse_rate("2M") == 2 * MiB
    assert parse_rate("1g") == 1024**3
    assert parse_rate("1.5M") == int(1.5 * MiB)
    assert parse_rate("1000") == 1000
    assert parse_rate("") == 0 and parse_rate(0) == 0
    for bad in ("fast", "-1K", "2X", "1M2"):
        with pytest.raises(ConfigError, match="bad rate"):
            parse_rate(bad)


def test_token_bucket_books_in_turn_at_its_rate() -> None:
    now = [0.0]
    b = TokenBucket(1000, burst=100, clock=lambda: now[0])
    assert b.reserve(100) == 0  # the burst
    assert b.reserve(500) == pytest.approx(0.5)
    assert b.reserve(500) == pytest.approx(1.0)  # waits behind the first booking
    now[0] = 10.0
    assert b.reserve(50) == 0  # refilled, but never above the burst
    assert b.reserve(100) == pytest.approx(0.05)


def _sched(pieces: int = 32, sources: int = 1, hosts: list[int] | None = None,
           **cfg: float) -> tuple[Scheduler, list[float]]:
    now = [0.0]
    s = Scheduler(pieces, PIECE, pieces * PIECE, sources, clock=lambda: now[0],
                  config=SchedulerConfig(**cfg), hosts=hosts)  # type: ignore[arg-type]
    return s, now


def _opened(actions: list[ev.Action]) -> list[ev.OpenConnection]:
    return [a for a in actions if isinstance(a, ev.OpenConnection)]


def test_busy_source_loses_a_connection_and_is_not_dropped() -> None:
    s, now = _sched(initial_connections=4, max_failures=2)
    conns = _opened(s.start())
    assert len(conns) == 4
    busy = ev.Fault(ev.FaultKind.BUSY, "answered 503", 1.0)
    for c in conns[:3]:  # three refusals in a row: each costs one connection, no drop
        f = s.handle(ev.ConnectionIdle(c.conn))[0]
        assert isinstance(f, ev.Fetch)
        assert not any(isinstance(a, ev.DropSource)
                       for a in s.handle(ev.RequestEnded(f.request, busy)))
        assert s.handle(ev.ConnectionIdle(c.conn)) == [ev.CloseConnection(c.conn)]
    assert s.sources[0].max_connections == 1 and not s.stats(0).dropped
    # The last connection keeps working; the source never grows back past its cap.
    f = s.handle(ev.ConnectionIdle(conns[3].conn))[0]
    assert isinstance(f, ev.Fetch)
    now[0] = 30.0
    assert not _opened(s.handle(ev.Tick()))


def test_busy_answers_at_once_each_cost_one_connection() -> None:
    s, _ = _sched(initial_connections=5)
    conns = _opened(s.start())
    fetches = [s.handle(ev.ConnectionIdle(c.conn))[0] for c in conns]
    busy = ev.Fault(ev.FaultKind.BUSY, "answered 503", 1.0)
    for f in fetches[:3]:  # three refused before any connection has closed
        assert isinstance(f, ev.Fetch)
        s.handle(ev.RequestEnded(f.request, busy))
    assert s.sources[0].target == 2 and s.sources[0].max_connections == 2
    for c in conns[:3]:  # the refused ones close; the two still working carry on
        assert s.handle(ev.ConnectionIdle(c.conn)) == [ev.CloseConnection(c.conn)]
    assert s.sources[0].conns == {conns[3].conn, conns[4].conn}


def test_busy_with_one_connection_waits_as_told_then_drops() -> None:
    s, now = _sched(initial_connections=1, max_failures=2)
    (c,) = _opened(s.start())
    f = s.handle(ev.ConnectionIdle(c.conn))[0]
    s.handle(ev.RequestEnded(f.request, ev.Fault(ev.FaultKind.BUSY, "answered 503", 5.0)))
    now[0] = 4.9
    assert s.handle(ev.ConnectionIdle(c.conn)) == [ev.Wait(c.conn)]  # Retry-After honoured
    now[0] = 8.0
    f = s.handle(ev.ConnectionIdle(c.conn))[0]
    out = s.handle(ev.RequestEnded(f.request, ev.Fault(ev.FaultKind.BUSY, "answered 503", 5.0)))
    assert any(isinstance(a, ev.DropSource) for a in out)


def test_503_with_retry_after_is_busy_and_without_it_transient() -> None:
    assert status_fault(503, "x", {"Retry-After": "2"}) == \
        ev.Fault(ev.FaultKind.BUSY, "answered 503 x", 2.0)
    assert status_fault(429, "x", {"Retry-After": "9999"}).retry_after == 60.0
    assert status_fault(503, "x").kind is ev.FaultKind.TRANSIENT
    assert status_fault(404, "x", {"Retry-After": "2"}).kind is ev.FaultKind.FATAL


def test_held_request_is_not_stalled() -> None:
    s, now = _sched(initial_connections=1, stall_timeout=5.0)
    (c,) = _opened(s.start())
    f = s.handle(ev.ConnectionIdle(c.conn))[0]
    s.handle(ev.BytesReceived(f.request, 100))
    s.handle(ev.Throttled(f.request, True))
    now[0] = 60.0
    assert not any(isinstance(a, ev.Cancel) for a in s.handle(ev.Tick()))
    s.handle(ev.Throttled(f.request, False))  # the stall clock starts again from here
    now[0] = 64.0
    assert not any(isinstance(a, ev.Cancel) for a in s.handle(ev.Tick()))
    now[0] = 66.0
    assert any(isinstance(a, ev.Cancel) for a in s.handle(ev.Tick()))


def test_no_tail_duplicates_when_they_would_share_our_own_limit() -> None:
    for dups in (True, False):
        s, now = _sched(pieces=1, sources=2, initial_connections=1, tail_duplicates=dups)
        slow, fast = _opened(s.start())
        f_slow = s.handle(ev.ConnectionIdle(slow.conn))[0]
        now[0] = 0.1
        s.handle(ev.BytesReceived(f_slow.request, 1000))
        s.conns[fast.conn].meter.add(50 * 1000 * 1000, 0.0)  # clearly faster
        now[0] = 1.0
        got = s.handle(ev.ConnectionIdle(fast.conn))[0]
        if dups:
            assert isinstance(got, ev.Fetch) and got.buffered
        else:
            assert got == ev.Wait(fast.conn)


def test_sources_on_one_host_share_its_connection_cap() -> None:
    s, now = _sched(sources=3, hosts=[0, 0, 1], initial_connections=3,
                    max_connections_per_source=6, max_connections_per_host=4)
    opened = _opened(s.start())
    per_source = [sum(1 for a in opened if a.source == i) for i in range(3)]
    assert per_source[0] + per_source[1] == 4 and per_source[2] == 3
    for t in range(1, 40):  # growth never breaks the cap either
        now[0] = t * 0.5
        for c in list(s.conns.values()):
            s.handle(ev.ConnectionIdle(c.id))
            if c.request is not None:
                s.handle(ev.BytesReceived(c.request, 1000 * t))
        s.handle(ev.Tick())
        assert sum(len(s.sources[i].conns) for i in (0, 1)) <= 4
        assert len(s.sources[2].conns) <= 4


# ---- real servers -----------------------------------------------------------

def _mfetch(*args: str) -> dict:
    r = _procs.run([_procs.command("mfetch"), "--json", *args], timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_limit_rate_holds_over_all_connections(tmp_path) -> None:
    rate = 1 * MiB
    data = make_file(tmp_path / "www" / "f.bin", 5 * MiB)
    with nginx(tmp_path / "www") as base:
        out = tmp_path / "out.bin"
        t0 = time.monotonic()
        s = _mfetch(f"{base}/f.bin", f"{base}/f.bin?mirror=2", "-o", str(out),
                    "--limit-rate", "1M", "--connections", "4", "--stall-timeout", "3")
        took = time.monotonic() - t0
    assert out.read_bytes() == data
    got = len(data) / s["seconds"]
    print(f"mfetch --limit-rate 1M: {got / MiB:.3f} MiB/s")
    assert got <= rate * 1.10, f"{got / MiB:.2f} MiB/s over a 1 MiB/s limit"
    assert len(data) / took >= rate * 0.5, f"only {len(data) / took / MiB:.2f} MiB/s"
    assert not any(src["dropped"] or src["failures"] for src in s["sources"]), s
    # Nothing fetched twice: under a shared limit a tail duplicate only wastes the rate.
    assert sum(src["bytes"] for src in s["sources"]) == len(data), s


def test_limit_rate_holds_for_a_sizeless_stream(tmp_path) -> None:
    from tests.test_faults import _streaming_server

    data = os.urandom(2 * MiB)
    server = _streaming_server(data)  # chunked, no length, ranges ignored: one stream
    try:
        out = tmp_path / "out.bin"
        s = _mfetch(f"{server.url}/stream.bin", "-o", str(out), "--limit-rate", "512K")
    finally:
        server.close()
    assert out.read_bytes() == data
    got = len(data) / s["seconds"]
    print(f"mfetch --limit-rate 512K, one stream: {got / KiB:.0f} KiB/s")
    assert got <= 512 * KiB * 1.10, f"{got / KiB:.0f} KiB/s over a 512 KiB/s limit"


def test_limit_rate_rejects_a_bad_rate(tmp_path) -> None:
    r = _procs.run([_procs.command("mfetch"), "http://127.0.0.1:9/x", "--limit-rate", "fast"])
    assert r.returncode == 1 and "bad limit_rate 'fast'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def _agent(tmp_path, data: bytes, **cfg: object):
    d = tmp_path / "share"
    d.mkdir(exist_ok=True)
    (d / "f.bin").write_bytes(data)
    config = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                         settle_seconds=0, rescan_seconds=0.2, hash_workers=1, **cfg)  # type: ignore[arg-type]
    agent = await start(config, report=False)
    await eventually(lambda: agent.inventory.entry("f.bin") is not None, what="first scan")
    return agent


async def test_agent_upload_rate_holds_over_all_clients(tmp_path) -> None:
    rate = 1 * MiB
    data = make_file(tmp_path / "src.bin", 4 * MiB)
    agent = await _agent(tmp_path, data, upload_rate="1M", max_client_connections=0)
    try:
        url = agent.url + "/files/f.bin"
        quarter = len(data) // 4

        async def part(i: int) -> bytes:
            hdr = {"Range": f"bytes={i * quarter}-{(i + 1) * quarter - 1}"}
            async with aiohttp.ClientSession() as http, http.get(url, headers=hdr) as r:
                assert r.status == 206
                return await r.read()

        t0 = time.monotonic()
        parts = await asyncio.gather(*(part(i) for i in range(4)))
        took = time.monotonic() - t0
    finally:
        await agent.stop()
    assert b"".join(parts) == data
    got = len(data) / took
    print(f"agent --upload-rate 1M, 4 clients: {got / MiB:.3f} MiB/s")
    assert rate * 0.6 <= got <= rate * 1.10, f"{got / MiB:.2f} MiB/s against 1 MiB/s"


async def test_agent_refuses_one_request_too_many_from_a_client(tmp_path) -> None:
    data = make_file(tmp_path / "src.bin", 2 * MiB)
    agent = await _agent(tmp_path, data, upload_rate="256K", max_client_connections=2)
    try:
        url = agent.url + "/files/f.bin"
        async with aiohttp.ClientSession() as http:
            slow = [await http.get(url) for _ in range(2)]  # both in flight (throttled)
            async with http.get(url) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
            for resp in slow:
                resp.close()
            await eventually(lambda: not agent_active(agent), what="requests to end")
            async with http.get(url, headers={"Range": "bytes=0-9"}) as r:
                assert r.status == 206 and await r.read() == data[:10]
    finally:
        await agent.stop()


def agent_active(agent) -> int:
    from agent.server import _LIMITS
    return sum(agent._runner.app[_LIMITS].active.values())


def wait_hashed(url: str, timeout: float = 60.0) -> None:
    """Until the agent serves `url` with its content ETag."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
            if r.headers.get("ETag"):
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} never got its ETag")


def test_mfetch_uses_fewer_connections_with_a_capped_agent(tmp_path, procs) -> None:
    data = make_file(tmp_path / "share" / "f.bin", 6 * MiB)
    agent = procs.agent(tmp_path / "share", "127.0.0.1:9", tmp_path / "state",
                        "--settle-seconds", "0", "--max-client-connections", "2",
                        "--upload-rate", "4M")
    url = agent.address + "/files/f.bin"
    wait_hashed(url)  # else its validator changes from Last-Modified to the ETag mid-fetch
    out = tmp_path / "out.bin"
    s = _mfetch(url, "-o", str(out), "--connections", "5", "--max-connections", "6")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    (src,) = s["sources"]
    assert not src["dropped"], src
    assert src["failures"] >= 1, "the agent never refused a connection: the cap is not tested"
