"""SqliteStore with a fake clock: leases lapse by advancing time, never by sleeping."""
from __future__ import annotations

import pathlib

import pytest

from tests.tracker_fakes import FakeClock, ident
from tracker.sqlite_store import SqliteStore
from tracker.store import Holding, MirrorRecord

ISO = ident("iso")
TAR = ident("tar", 5000)


@pytest.fixture
async def store(tmp_path: pathlib.Path):
    clock = FakeClock()
    s = await SqliteStore.open(str(tmp_path / "t.db"), clock)
    s.clock = clock  # type: ignore[attr-defined]
    yield s
    await s.close()


async def test_register_and_renew_lease(store) -> None:
    clock = store.clock
    assert not await store.is_live("a1")
    assert not await store.renew("a1", clock() + 30)
    await store.register("a1", "http://h:1", clock() + 30)
    assert await store.is_live("a1")
    clock.advance(20)
    assert await store.renew("a1", clock() + 30)
    clock.advance(29)
    assert await store.is_live("a1")
    clock.advance(2)
    assert not await store.is_live("a1")
    assert not await store.renew("a1", clock() + 30), "a lapsed lease is not renewed"


async def test_holdings_replace_and_update(store) -> None:
    now = store.clock()
    await store.register("a1", "http://h:1", now + 30)
    n = await store.update_holdings("a1", replace=True, removed=[],
                                    added=[Holding("iso/ubuntu.iso", ISO), Holding("x.tar", TAR)])
    assert n == 2
    n = await store.update_holdings("a1", replace=False, removed=["x.tar"],
                                    added=[Holding("y.tar", TAR)])
    assert n == 2
    assert [x.holding.path for x in await store.holders_of(TAR.sha256)] == ["y.tar"]
    n = await store.update_holdings("a1", replace=True, removed=[], added=[Holding("z", ISO)])
    assert n == 1
    assert await store.holders_of(TAR.sha256) == []


async def test_locate_by_basename_or_whole_path(store) -> None:
    await store.register("a1", "http://h:1", store.clock() + 30)
    await store.update_holdings("a1", replace=True, removed=[],
                                added=[Holding("iso/ubuntu.iso", ISO)])
    for name in ("ubuntu.iso", "iso/ubuntu.iso"):
        (found,) = await store.holdings_named(name)
        assert (found.agent_id, found.base_url, found.holding.identity) == ("a1", "http://h:1", ISO)
    assert await store.holdings_named("iso") == []
    assert await store.holdings_named("buntu.iso") == []


async def test_lapsed_holdings_hidden_then_back_on_register(store) -> None:
    clock = store.clock
    await store.register("a1", "http://h:1", clock() + 30)
    await store.update_holdings("a1", replace=True, removed=[], added=[Holding("u.iso", ISO)])
    clock.advance(31)
    assert await store.holdings_named("u.iso") == []
    assert await store.holders_of(ISO.sha256) == []
    await store.register("a1", "http://h:2", clock() + 30)
    (found,) = await store.holders_of(ISO.sha256)
    assert found.base_url == "http://h:2"


async def test_purge_forgets_long_lapsed_agents(store) -> None:
    clock = store.clock
    await store.register("old", "http://h:1", clock() + 30)
    await store.update_holdings("old", replace=True, removed=[], added=[Holding("u.iso", ISO)])
    clock.advance(1000)
    await store.register("new", "http://h:2", clock() + 30)
    assert await store.purge(clock() - 100) == 1
    await store.register("old", "http://h:1", clock() + 30)
    assert [x.agent_id for x in await store.holders_of(ISO.sha256)] == [], "holdings purged"


async def test_remove_agent(store) -> None:
    await store.register("a1", "http://h:1", store.clock() + 30)
    await store.update_holdings("a1", replace=True, removed=[], added=[Holding("u.iso", ISO)])
    await store.remove_agent("a1")
    assert not await store.is_live("a1")
    assert await store.holders_of(ISO.sha256) == []


async def test_mirrors(store) -> None:
    m1 = MirrorRecord("http://m1/u.iso", "u.iso", ISO.sha256, ISO.size)
    m2 = MirrorRecord("http://m2/t.tar", "t.tar", TAR.sha256, 0)
    await store.put_mirror(m2)
    await store.put_mirror(m1)
    assert await store.list_mirrors() == [m1, m2]
    await store.put_mirror(MirrorRecord("http://m1/u.iso", "renamed", ISO.sha256, ISO.size))
    assert [m.name for m in await store.mirrors_of(ISO.sha256)] == ["renamed"]
    assert await store.mirrors_named("t.tar") == [m2]
    assert await store.remove_mirror("http://m2/t.tar")
    assert not await store.remove_mirror("http://m2/t.tar")
    assert [m.url for m in await store.list_mirrors()] == ["http://m1/u.iso"]


async def test_survives_reopen(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    path = str(tmp_path / "t.db")
    s = await SqliteStore.open(path, clock)
    await s.register("a1", "http://h:1", clock() + 30)
    await s.update_holdings("a1", replace=True, removed=[], added=[Holding("u.iso", ISO)])
    await s.put_mirror(MirrorRecord("http://m/u.iso", "u.iso", ISO.sha256, 0))
    await s.close()
    s = await SqliteStore.open(path, clock)
    try:
        assert len(await s.holdings_named("u.iso")) == 1
        assert len(await s.list_mirrors()) == 1
    finally:
        await s.close()
