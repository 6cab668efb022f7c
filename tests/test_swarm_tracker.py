"""Swarming on the tracker side: partial holders' bitfields through both stores, the
API (validation, locate answers with the /swarm/ URL and the bitfield), and a SQLite
file from before swarming opened by the new code."""
from __future__ import annotations

import pathlib
import sqlite3

import pytest

from common import agent_api, bitfield
from common.errors import TrackerError
from common.tracker_client import TrackerClient
from tests.test_tracker_service import tracker  # noqa: F401  (fixture, both stores)
from tests.test_tracker_store import _open, db, store  # noqa: F401  (fixtures, both stores)
from tests.tracker_fakes import FakeClock, ident
from tracker.sqlite_store import SqliteStore
from tracker.store import Holding

BIG = ident("big", 10 * 1024 * 1024 + 1)  # 41 pieces of 256 KiB -> 6-byte bitfields
PATH = agent_api.swarm_path(BIG.sha256, "big.iso")


def bits(*pieces: int, n: int = BIG.pieces) -> bytes:
    flags = bytearray(n)
    for p in pieces:
        flags[p] = 1
    return bitfield.pack(flags)


async def test_store_keeps_the_latest_bitfield(store) -> None:  # noqa: F811
    now = store.clock()
    await store.register("a1", "http://h:1", now + 30)
    await store.register("a2", "http://h:2", now + 30)
    await store.update_holdings("a1", replace=True, removed=[],
                                added=[Holding(PATH, BIG, bits(0, 1))])
    await store.update_holdings("a2", replace=True, removed=[],
                                added=[Holding("big.iso", BIG)])
    found = {x.agent_id: x.holding for x in await store.holders_of(BIG.sha256)}
    assert found["a1"].have == bits(0, 1)
    assert found["a2"].have == b""
    # A newer bitfield replaces the old one (an update, not a second holding).
    n = await store.update_holdings("a1", replace=False, removed=[],
                                    added=[Holding(PATH, BIG, bits(0, 1, 7, 40))])
    assert n == 1
    (h,) = [x.holding for x in await store.holdings_named("big.iso") if x.agent_id == "a1"]
    assert h.have == bits(0, 1, 7, 40) and h.path == PATH and h.identity == BIG
    located, _ = await store.locate_name("big.iso", 8)
    assert {x.agent_id: x.holding.have for x in located} == {"a1": bits(0, 1, 7, 40),
                                                              "a2": b""}
    (located, _) = await store.locate_sha256(BIG.sha256)
    assert {x.agent_id: x.holding.have for x in located} == {"a1": bits(0, 1, 7, 40),
                                                              "a2": b""}
    # Complete: announced with an empty bitfield.
    await store.update_holdings("a1", replace=False, removed=[], added=[Holding(PATH, BIG)])
    assert all(x.holding.have == b"" for x in await store.holders_of(BIG.sha256))


async def test_old_sqlite_file_gains_the_bitfield_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.db"
    db_ = sqlite3.connect(path)
    db_.executescript("""
        CREATE TABLE agents (agent_id TEXT PRIMARY KEY, base_url TEXT NOT NULL,
                             expires_at REAL NOT NULL);
        CREATE TABLE holdings (agent_id TEXT NOT NULL, path TEXT NOT NULL, name TEXT NOT NULL,
            size INTEGER NOT NULL, sha256 BLOB NOT NULL, piece_size INTEGER NOT NULL,
            root BLOB NOT NULL, PRIMARY KEY (agent_id, path)) WITHOUT ROWID;
    """)
    db_.execute("INSERT INTO agents VALUES ('a1', 'http://h:1', 2e6)")
    db_.execute("INSERT INTO holdings VALUES ('a1', 'big.iso', 'big.iso', ?, ?, ?, ?)",
                (BIG.size, BIG.sha256, BIG.piece_size, BIG.root))
    db_.commit()
    db_.close()
    opened = await SqliteStore.open(str(path), FakeClock())
    try:
        (old,) = await opened.holders_of(BIG.sha256)
        assert old.holding == Holding("big.iso", BIG)
        await opened.update_holdings("a1", replace=False, removed=[],
                                     added=[Holding(PATH, BIG, bits(3))])
        assert {x.holding.have for x in await opened.holders_of(BIG.sha256)} == {b"", bits(3)}
    finally:
        await opened.close()


async def test_locate_hands_out_partial_holders(tracker) -> None:  # noqa: F811
    async with TrackerClient(tracker.address, timeout=20) as c:
        await c.register("full", "http://10.0.0.1:7070")
        await c.announce("full", {"big.iso": BIG}, replace=True)
        await c.register("part", "http://10.0.0.2:7070")
        await c.announce("part", {PATH: BIG}, replace=True, have={PATH: bits(2, 5)})
        (cand,) = await c.locate(name="big.iso")
        by_agent = {s.agent_id: s for s in cand.sources}
        assert by_agent["full"].have == b""
        assert by_agent["full"].url == "http://10.0.0.1:7070/files/big.iso"
        assert by_agent["part"].have == bits(2, 5)
        assert by_agent["part"].url == f"http://10.0.0.2:7070/swarm/{BIG.sha256.hex()}"
        assert cand.live_holders == 2
        # A full bitfield is stored as "whole file".
        await c.announce("part", {PATH: BIG}, have={PATH: bits(*range(BIG.pieces))})
        (cand,) = await c.locate(sha256=BIG.sha256)
        assert all(s.have == b"" for s in cand.sources)


@pytest.mark.parametrize("have, why", [
    (b"\xff" * 5, "bitfield has 5 bytes, 6 expected for 41 pieces"),
    (b"\xff" * 7, "bitfield has 7 bytes, 6 expected"),
    (bytes(5) + b"\x01", "bits past the last piece"),
])
async def test_bad_bitfield_is_refused_and_changes_nothing(tracker, have, why) -> None:  # noqa: F811
    async with TrackerClient(tracker.address, timeout=20) as c:
        await c.register("part", "http://10.0.0.2:7070")
        await c.announce("part", {PATH: BIG}, replace=True, have={PATH: bits(1)})
        with pytest.raises(TrackerError, match=why):
            await c.announce("part", {PATH: BIG}, have={PATH: have})
        (cand,) = await c.locate(sha256=BIG.sha256)
        assert cand.sources[0].have == bits(1)


async def test_one_source_per_agent_prefers_its_whole_file(tracker) -> None:  # noqa: F811
    async with TrackerClient(tracker.address, timeout=20) as c:
        await c.register("a", "http://10.0.0.1:7070")
        await c.announce("a", {PATH: BIG, "big.iso": BIG}, replace=True, have={PATH: bits(0)})
        (cand,) = await c.locate(sha256=BIG.sha256)
        (src,) = cand.sources
        assert src.have == b"" and src.url.endswith("/files/big.iso")
