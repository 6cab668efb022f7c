"""Both stores (SQLite and Redis) with a fake clock: leases lapse by advancing time, never
by sleeping. The Redis store runs against a real redis-server (tests/redis_server.py)."""
from __future__ import annotations

import asyncio
import pathlib

import pytest

from tests.tracker_fakes import FakeClock, ident
from tracker.redis_store import RedisStore
from tracker.sqlite_store import SqliteStore
from tracker.store import Holding, MirrorRecord

ISO = ident("iso")
TAR = ident("tar", 5000)


@pytest.fixture(params=["sqlite", "redis"])
def db(request, tmp_path: pathlib.Path) -> str:
    """Where a store lives: a SQLite file, or a Redis URL (the test server, emptied)."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return str(tmp_path / "t.db")


async def _open(db: str, clock: FakeClock):
    if db.startswith("redis://"):
        return await RedisStore.open(db, clock, redis_time=False)
    return await SqliteStore.open(db, clock)


@pytest.fixture
async def store(db: str):
    clock = FakeClock()
    s = await _open(db, clock)
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


async def test_survives_reopen(db: str) -> None:
    clock = FakeClock()
    s = await _open(db, clock)
    await s.register("a1", "http://h:1", clock() + 30)
    await s.update_holdings("a1", replace=True, removed=[], added=[Holding("u.iso", ISO)])
    await s.put_mirror(MirrorRecord("http://m/u.iso", "u.iso", ISO.sha256, 0))
    await s.close()
    s = await _open(db, clock)
    try:
        assert len(await s.holdings_named("u.iso")) == 1
        assert len(await s.list_mirrors()) == 1
    finally:
        await s.close()


async def test_holdings_of_several_agents_and_paths(store) -> None:
    now = store.clock()
    await store.register("a2", "http://h:2", now + 30)
    await store.register("a1", "http://h:1", now + 30)
    await store.update_holdings("a2", replace=True, removed=[],
                                added=[Holding("b/u.iso", ISO), Holding("u.iso", ISO)])
    await store.update_holdings("a1", replace=True, removed=[], added=[Holding("u.iso", ISO)])
    found = await store.holdings_named("u.iso")
    assert [(f.agent_id, f.holding.path) for f in found] == [
        ("a1", "u.iso"), ("a2", "b/u.iso"), ("a2", "u.iso")]
    # Re-announcing a path with other content moves it out of the old content's holders.
    await store.update_holdings("a2", replace=False, removed=[], added=[Holding("u.iso", TAR)])
    assert [(f.agent_id, f.holding.path) for f in await store.holders_of(ISO.sha256)] == [
        ("a1", "u.iso"), ("a2", "b/u.iso")]
    assert [f.agent_id for f in await store.holders_of(TAR.sha256)] == ["a2"]
    await store.update_holdings("a2", replace=False, removed=["b/u.iso"], added=[])
    assert await store.holdings_named("b/u.iso") == []


async def test_locate_name_ranks_caps_and_gathers_every_holder(store) -> None:
    """locate_name = holdings_named + mirrors_named, ranked and capped, then holders_of and
    mirrors_of each chosen content: the same answer the four calls gave."""
    clock = store.clock
    iso2, gone = ident("iso2"), ident("gone")
    for agent in ("a1", "a2", "a3", "old"):
        await store.register(agent, f"http://{agent}:1", clock() + (5 if agent == "old" else 30))
    # u.iso: ISO held under that name by a1 and a2, iso2 by a3; `old` (lapsing) holds
    # `gone` under it three times, which must not count once its lease lapses.
    await store.update_holdings("a1", replace=True, removed=[],
                                added=[Holding("u.iso", ISO), Holding("other/name.bin", ISO)])
    await store.update_holdings("a2", replace=True, removed=[],
                                added=[Holding("d/u.iso", ISO), Holding("t.tar", TAR)])
    await store.update_holdings("a3", replace=True, removed=[], added=[Holding("u.iso", iso2)])
    await store.update_holdings("old", replace=True, removed=[], added=[
        Holding(f"{d}/u.iso", gone) for d in "xyz"])
    m_tar = MirrorRecord("http://m/u.iso", "u.iso", TAR.sha256, 0)  # mirror-only by this name
    m_iso = MirrorRecord("http://m/any", "any", ISO.sha256, ISO.size)
    await store.put_mirror(m_tar)
    await store.put_mirror(m_iso)
    clock.advance(10)

    located, mirrors = await store.locate_name("u.iso", 8)
    # Every live holding of the chosen contents, whatever the path; ordered (agent, path).
    assert [(x.agent_id, x.holding.path, x.holding.identity) for x in located] == [
        ("a1", "other/name.bin", ISO), ("a1", "u.iso", ISO), ("a2", "d/u.iso", ISO),
        ("a2", "t.tar", TAR), ("a3", "u.iso", iso2)]
    assert located[0].base_url == "http://a1:1"
    assert mirrors == [m_iso, m_tar]
    # The cap keeps the most held: ISO (2), then iso2 (1), then TAR (0, mirror only).
    top1, top1_mirrors = await store.locate_name("u.iso", 1)
    assert {x.holding.identity for x in top1} == {ISO} and top1_mirrors == [m_iso]
    top2, _ = await store.locate_name("u.iso", 2)
    assert {x.holding.identity for x in top2} == {ISO, iso2}
    # By whole path too; nothing for an unknown name.
    assert await store.locate_name("d/u.iso", 8) == (
        [x for x in located if x.holding.identity == ISO], [m_iso])
    assert await store.locate_name("nothing", 8) == ([], [])
    assert await store.locate_name("any", 8) == (
        [x for x in located if x.holding.identity == ISO], [m_iso])
    # By sha256: holders_of + mirrors_of.
    assert await store.locate_sha256(ISO.sha256) == (
        await store.holders_of(ISO.sha256), await store.mirrors_of(ISO.sha256))
    assert await store.locate_sha256(gone.sha256) == ([], []), "lapsed holders are hidden"
    assert await store.locate_sha256(TAR.sha256) == (
        [x for x in located if x.holding.identity == TAR], [m_tar])


async def test_redis_leases_follow_redis_time(redis_url: str) -> None:
    """With redis_time (the default), Redis's TIME, not the tracker's clock, ends a lease."""
    import time

    frozen = FakeClock(time.time())  # the tracker's clock never moves
    s = await RedisStore.open(redis_url, frozen)
    try:
        await s.register("a1", "http://h:1", frozen() + 0.3)
        await s.update_holdings("a1", replace=True, removed=[], added=[Holding("u.iso", ISO)])
        assert await s.is_live("a1") and len(await s.holders_of(ISO.sha256)) == 1
        await asyncio.sleep(0.5)
        assert not await s.is_live("a1")
        assert await s.holders_of(ISO.sha256) == []
        assert not await s.renew("a1", frozen() + 30)
    finally:
        await s.close()


async def test_overview_counts_and_caps(store) -> None:
    now = store.clock()
    for i in range(5):
        await store.register(f"a{i}", f"http://h:{i}", now + 30 + i)
        await store.update_holdings(f"a{i}", replace=True, removed=[],
                                    added=[Holding("pub/iso", ISO), Holding(f"t{i}.tar", TAR)])
    await store.register("lapsed", "http://h:9", now + 5)
    await store.update_holdings("lapsed", replace=True, removed=[],
                                added=[Holding("only-lapsed", ident("gone"))])
    for i in range(4):
        await store.put_mirror(MirrorRecord(f"http://m{i}/iso", "iso", ISO.sha256, ISO.size))
    store.clock.advance(10)
    ov = await store.overview(limit=3)
    assert (ov.live_agents, ov.mirrors) == (5, 4)
    assert ov.contents == 3, "every known content is counted, the lapsed agent's too"
    assert [a.agent_id for a in ov.agents] == ["a4", "a3", "a2"], "latest lease first, capped"
    assert ov.agents[0].base_url == "http://h:4" and ov.agents[0].holdings == 2
    assert 23 < ov.agents[0].lease_left <= 24
    assert [m.url for m in ov.mirror_list] == ["http://m0/iso", "http://m1/iso", "http://m2/iso"]
    listed = {c.sha256: c for c in ov.contents_list}
    assert set(listed) == {ISO.sha256, TAR.sha256}, "only contents with a live holder"
    iso = listed[ISO.sha256]
    assert iso.holder_count == 5 and iso.holders == ("a0", "a1", "a2")
    assert iso.names == ("iso",) and iso.size == ISO.size
    assert set(listed[TAR.sha256].names) == {f"t{i}.tar" for i in range(5)}
    assert (await store.overview(limit=1)).contents_list[0].sha256 == min(ISO.sha256, TAR.sha256)


async def test_renew_many_renews_what_was_live_when_asked(store) -> None:
    """Batched heartbeats (tracker/renewals.py): a renewal counts if the lease was live when
    the heartbeat arrived (asked_at), even if it lapsed while the batch waited; a lapsed or
    unknown agent is refused; a renewal never shortens a lease."""
    from tracker.store import Renewal

    clock = store.clock
    t0 = clock()
    await store.register("a1", "http://h:1", t0 + 30)
    await store.register("a2", "http://h:2", t0 + 10)
    await store.register("a3", "http://h:3", t0 + 100)
    clock.advance(11)  # a2 lapsed at t0 + 10
    got = await store.renew_many([
        Renewal("a1", t0 + 41, t0 + 11),
        Renewal("a2", t0 + 41, t0 + 11),  # lapsed when asked
        Renewal("nobody", t0 + 41, t0 + 11),
        Renewal("a3", t0 + 41, t0 + 11),  # already longer: kept
    ])
    assert got == [True, False, False, True]
    clock.advance(25)  # t0 + 36: a1 lives only thanks to the renewal
    assert await store.is_live("a1") and not await store.is_live("a2")
    clock.advance(10)  # t0 + 46
    assert not await store.is_live("a1")
    assert await store.is_live("a3"), "a renewal must not shorten a longer lease"
    # Asked at t0 + 45 while a3 was live, written later: renewed.
    await store.register("a4", "http://h:4", clock() + 1)
    asked = clock()
    clock.advance(5)  # a4 lapsed meanwhile
    assert await store.renew_many([Renewal("a4", asked + 30, asked)]) == [True]
    assert await store.is_live("a4")
