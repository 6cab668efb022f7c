"""Several real `tracker serve --db redis://...` processes on one redis-server."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from common.errors import NotFoundError
from common.tracker_client import TrackerClient
from tests import procs as _procs
from tests.tracker_fakes import ident

pytestmark = pytest.mark.system

TRACKER = _procs.command("tracker")
ISO = ident("iso")
TAR = ident("tar", 5000)


def _trackers(procs, tmp_path, redis_url: str, n: int, *extra: str):
    return [procs.tracker(tmp_path, *extra, db=redis_url) for _ in range(n)]


async def _gone_everywhere(addresses: list[str], name: str, deadline: float) -> None:
    for address in addresses:
        async with TrackerClient(address, timeout=10) as c:
            while True:
                try:
                    await c.locate(name=name)
                except NotFoundError:
                    break
                assert time.monotonic() < deadline, f"lease never lapsed on {address}"
                await asyncio.sleep(0.2)


async def test_announce_to_one_found_through_the_other(procs, tmp_path, redis_url) -> None:
    a, b = _trackers(procs, tmp_path, redis_url, 2)
    async with TrackerClient(a.address, timeout=10) as ca, \
            TrackerClient(b.address, timeout=10) as cb:
        await ca.register("a1", "http://10.0.0.1:7070")
        await ca.announce("a1", {"iso/u.iso": ISO, "x.tar": TAR}, replace=True)
        assert await cb.heartbeat("a1") > 0, "a lease granted by one tracker renews on the other"
        (cand,) = await cb.locate(name="u.iso")
        assert cand.content == ISO and [s.agent_id for s in cand.sources] == ["a1"]
        assert (await cb.locate(sha256=TAR.sha256))[0].content == TAR
        await cb.announce("a1", {}, removed=["x.tar"])
        with pytest.raises(NotFoundError):
            await ca.locate(name="x.tar")
        await cb.add_mirror("http://m/u.iso", ISO.sha256, size=ISO.size)
        assert [m.url for m in await ca.list_mirrors()] == ["http://m/u.iso"]
        (cand,) = await ca.locate(name="u.iso")
        assert {s.url for s in cand.sources} >= {"http://m/u.iso"}
    for t in (a, b):
        assert t.stop() == 0, t.output()


async def test_lapsed_lease_is_gone_from_both(procs, tmp_path, redis_url) -> None:
    a, b = _trackers(procs, tmp_path, redis_url, 2,
                     "--lease-seconds", "3", "--heartbeat-seconds", "1")
    async with TrackerClient(a.address, timeout=10) as c:
        await c.register("a1", "http://10.0.0.1:7070")
        await c.announce("a1", {"u.iso": ISO}, replace=True)
    async with TrackerClient(b.address, timeout=10) as c:
        assert (await c.locate(name="u.iso"))[0].sources[0].agent_id == "a1"
    # No heartbeats: the 3 s lease runs out in Redis, for both trackers.
    await _gone_everywhere([a.address, b.address], "u.iso", time.monotonic() + 60)
    async with TrackerClient(b.address, timeout=10) as c:
        with pytest.raises(NotFoundError):
            await c.heartbeat("a1")


async def test_sigkilled_tracker_restarts_losing_nothing(procs, tmp_path, redis_url) -> None:
    a, b = _trackers(procs, tmp_path, redis_url, 2)
    async with TrackerClient(a.address, timeout=10) as c:
        await c.register("a1", "http://10.0.0.1:7070")
        await c.announce("a1", {"u.iso": ISO}, replace=True)
        await c.add_mirror("http://m/u.iso", ISO.sha256, size=ISO.size)
    a.kill(signal.SIGKILL)
    async with TrackerClient(b.address, timeout=10) as c:  # the survivor still answers
        assert (await c.locate(name="u.iso"))[0].sources[0].agent_id == "a1"
    a2 = procs.tracker(tmp_path, db=redis_url)
    async with TrackerClient(a2.address, timeout=10) as c:
        (cand,) = await c.locate(name="u.iso")
        assert cand.content == ISO
        assert [s.url for s in cand.sources][1:] == ["http://m/u.iso"]
        assert cand.sources[0].agent_id == "a1"
        assert await c.heartbeat("a1") > 0
        assert [m.url for m in await c.list_mirrors()] == ["http://m/u.iso"]


def test_unreachable_redis_is_one_line(tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _procs.run([TRACKER, "serve", "--listen", "127.0.0.1:0", "--db",
                    f"redis://:secret@127.0.0.1:{port}/0"], timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracker: error: cannot reach"), r.stderr
    assert "secret" not in r.stderr
    r = _procs.run([TRACKER, "serve", "--db", "redis://nohost"], timeout=60)
    assert r.returncode == 1 and "redis://HOST:PORT" in r.stderr, r.stderr
