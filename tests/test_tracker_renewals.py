"""Heartbeats renewed in batches (tracker/renewals.py), against both real stores and
through a real tracker: leases stay alive, lapsed ones still lapse, one write per batch."""
from __future__ import annotations

import asyncio
import pathlib

import pytest

from common.errors import NotFoundError
from common.tracker_client import TrackerClient
from tests.tracker_fakes import FakeClock, ident
from tracker import server
from tracker.config import TrackerConfig
from tracker.redis_store import RedisStore
from tracker.renewals import Renewals
from tracker.sqlite_store import SqliteStore

ISO = ident("iso")


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path: pathlib.Path):
    clock = FakeClock()
    if request.param == "redis":
        s = await RedisStore.open(request.getfixturevalue("redis_url"), clock, redis_time=False)
    else:
        s = await SqliteStore.open(str(tmp_path / "t.db"), clock)
    s.clock = clock  # type: ignore[attr-defined]
    yield s
    await s.close()


async def test_concurrent_heartbeats_share_one_write(store) -> None:
    clock = store.clock
    for i in range(50):
        await store.register(f"a{i}", "http://h:1", clock() + 30)
    renewals = Renewals(store, clock, window=0.05)
    clock.advance(20)
    results = await asyncio.gather(*(renewals.renew(f"a{i}", 30) for i in range(50)),
                                   renewals.renew("nobody", 30))
    assert results == [True] * 50 + [False]
    assert renewals.batches == 1, "51 heartbeats arriving together: one store write"
    clock.advance(25)  # 45 s after registering: alive only thanks to the batch
    assert all([await store.is_live(f"a{i}") for i in range(50)])
    clock.advance(10)  # and the renewed leases lapse in their turn
    assert not any([await store.is_live(f"a{i}") for i in range(50)])
    assert await asyncio.gather(renewals.renew("a0", 30)) == [False]


async def test_a_lease_that_lapses_while_its_heartbeat_waits_is_renewed(store) -> None:
    clock = store.clock
    await store.register("a1", "http://h:1", clock() + 30)
    clock.advance(29.9)
    renewals = Renewals(store, clock, window=0.05)
    beat = asyncio.create_task(renewals.renew("a1", 30))
    await asyncio.sleep(0)  # the heartbeat has arrived (and joined the batch)
    clock.advance(0.2)  # its lease ran out before the batch was written
    assert await beat
    clock.advance(29)
    assert await store.is_live("a1")


class _BrokenStore:
    async def renew_many(self, renewals):  # type: ignore[no-untyped-def]
        raise OSError("disk I/O error")


async def test_store_errors_reach_every_heartbeat_of_the_batch() -> None:
    renewals = Renewals(_BrokenStore(), FakeClock(), window=0.05)  # type: ignore[arg-type]
    results = await asyncio.gather(renewals.renew("a1", 30), renewals.renew("a2", 30),
                                   return_exceptions=True)
    assert [str(r) for r in results] == ["disk I/O error"] * 2
    assert renewals.batches == 1


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_tracker_answers_a_burst_of_heartbeats_in_few_writes(backend, request,
                                                                   tmp_path) -> None:
    """Through gRPC: 200 agents heartbeat at once; every one is renewed (a lapsed one is
    told to register again), in far fewer store writes than heartbeats."""
    clock = FakeClock()
    store = None
    if backend == "redis":
        store = await RedisStore.open(request.getfixturevalue("redis_url"), clock,
                                      redis_time=False)
    running = await server.start(TrackerConfig(listen="127.0.0.1:0", db=str(tmp_path / "t.db")),
                                 store=store, clock=clock)
    try:
        async with TrackerClient(running.address, timeout=30) as c:
            for i in range(200):
                await c.register(f"a{i}", f"http://10.0.{i // 250}.{i % 250}:7070")
            await c.announce("a0", {"u.iso": ISO}, replace=True)
            await c.register("late", "http://10.9.9.9:7070")
            clock.advance(31)  # every lease lapsed: re-register the 200, not "late"
            for i in range(200):
                await c.register(f"a{i}", f"http://10.0.{i // 250}.{i % 250}:7070")
            clock.advance(20)
            leases = await asyncio.gather(*(c.heartbeat(f"a{i}") for i in range(200)))
            assert leases == [30] * 200
            with pytest.raises(NotFoundError, match="register again"):
                await c.heartbeat("late")
            clock.advance(20)  # 40 s after registering: a0 is alive only by its heartbeat
            assert (await c.locate(name="u.iso"))[0].sources[0].agent_id == "a0"
        servicer_batches = running.renewals.batches
        assert 1 <= servicer_batches < 200, "some heartbeats shared a write"
    finally:
        await running.stop(grace=1)
        if store is not None:
            await store.close()
