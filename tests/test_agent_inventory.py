"""Hash cache and inventory: real files, real worker processes, real SQLite."""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import pytest

from agent.hashcache import HashCache, StatKey
from agent.inventory import Changes, Inventory, walk
from tests.agent_helpers import OLD, write


@pytest.fixture
def tree(tmp_path) -> Iterator[str]:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    write(d / "a.bin", os.urandom(300_000))
    write(d / "sub" / "b.txt", b"bee\n")
    yield str(d)


def inventory(root: str, state: str, **kw) -> tuple[Inventory, HashCache, list[Changes]]:
    cache = HashCache(state, workers=1)
    seen: list[Changes] = []
    return Inventory(root, cache, settle_seconds=0, on_change=seen.append, **kw), cache, seen


def paths(ch: Changes) -> set[str]:
    return {e.path for e in ch.added}


async def test_first_scan_hashes_everything(tree, tmp_path) -> None:
    inv, cache, seen = inventory(tree, str(tmp_path / "s"))
    try:
        ch = await inv.scan()
        assert paths(ch) == {"a.bin", "sub/b.txt"} and ch.removed == ()
        assert cache.hashed == 2
        e = inv.entry("sub/b.txt")
        assert e is not None and e.identity.sha256 == hashlib.sha256(b"bee\n").digest()
        assert set().union(*(paths(c) for c in seen)) == {"a.bin", "sub/b.txt"}
        assert not await inv.scan()  # nothing changed: empty diff, nothing hashed
        assert cache.hashed == 2
    finally:
        cache.close()


async def test_restart_rehashes_nothing(tree, tmp_path) -> None:
    state = str(tmp_path / "s")
    inv, cache, _ = inventory(tree, state)
    await inv.scan()
    before = {e.path: e for e in inv.snapshot()}
    cache.close()

    inv2, cache2, _ = inventory(tree, state)
    try:
        ch = await inv2.scan()
        assert cache2.hashed == 0  # every identity came from the SQLite cache
        assert {e.path: e for e in ch.added} == before
        assert inv2.pieces_for(before["a.bin"].identity.sha256) is not None
    finally:
        cache2.close()


async def test_restart_rehashes_only_what_changed(tree, tmp_path) -> None:
    state = str(tmp_path / "s")
    inv, cache, _ = inventory(tree, state)
    await inv.scan()
    cache.close()
    write(os.path.join(tree, "sub", "b.txt"), b"BEE\n", mtime=OLD + 10)
    inv2, cache2, _ = inventory(tree, state)
    try:
        await inv2.scan()
        assert cache2.hashed == 1
        e = inv2.entry("sub/b.txt")
        assert e is not None and e.identity.sha256 == hashlib.sha256(b"BEE\n").digest()
    finally:
        cache2.close()


async def test_notices_add_change_delete(tree, tmp_path) -> None:
    inv, cache, seen = inventory(tree, str(tmp_path / "s"))
    try:
        await inv.scan()
        write(os.path.join(tree, "new.bin"), b"new")
        ch = await inv.scan()
        assert paths(ch) == {"new.bin"} and ch.removed == ()

        write(os.path.join(tree, "new.bin"), b"newer", mtime=OLD + 5)
        ch = await inv.scan()
        assert paths(ch) == {"new.bin"}
        e = inv.entry("new.bin")
        assert e is not None and e.identity.sha256 == hashlib.sha256(b"newer").digest()

        os.remove(os.path.join(tree, "sub", "b.txt"))
        ch = await inv.scan()
        assert ch.added == () and ch.removed == ("sub/b.txt",)
        assert inv.entry("sub/b.txt") is None
        assert seen[-1].removed == ("sub/b.txt",)
    finally:
        cache.close()


async def test_touched_file_is_withdrawn_until_rehashed(tree, tmp_path) -> None:
    inv, cache, seen = inventory(tree, str(tmp_path / "s"))
    try:
        await inv.scan()
        before = inv.entry("a.bin")
        seen.clear()
        os.utime(os.path.join(tree, "a.bin"), (OLD + 7, OLD + 7))
        ch = await inv.scan()
        # Its stat key changed, so it is not vouched for until hashed again: withdrawn
        # first, then re-added with the same identity.
        assert [c.removed for c in seen] == [("a.bin",), ()]
        after = inv.entry("a.bin")
        assert paths(ch) == {"a.bin"} and after is not None and before is not None
        assert after.identity == before.identity and after.key != before.key
        assert cache.hashed == 3
    finally:
        cache.close()


async def test_fresh_files_wait_until_settled(tree, tmp_path) -> None:
    cache = HashCache(str(tmp_path / "s"), workers=1)
    inv = Inventory(tree, cache, settle_seconds=3600)
    try:
        write(os.path.join(tree, "fresh"), b"being written", mtime=time.time())
        ch = await inv.scan()
        assert paths(ch) == {"a.bin", "sub/b.txt"}  # "fresh" left for a later scan
    finally:
        cache.close()


async def test_file_changed_while_hashing_is_not_cached(tree, tmp_path) -> None:
    cache = HashCache(str(tmp_path / "s"), workers=1)
    try:
        path = os.path.join(tree, "a.bin")
        stale = StatKey.of(os.stat(path))
        write(path, b"replaced", mtime=OLD + 1)
        assert await cache.hash("a.bin", path, stale) is None  # key no longer matches
        assert cache.lookup("a.bin", stale) is None
        assert cache.hashed == 0
    finally:
        cache.close()


def test_walk_skips_temp_hidden_and_escaping_links(tree, tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    write(outside, b"secret")
    write(os.path.join(tree, "dl.iso.part"), b"partial")
    write(os.path.join(tree, "dl.iso.mfetch"), b"{}")  # its control file
    write(os.path.join(tree, ".hidden"), b"h")
    os.mkdir(os.path.join(tree, ".git"))
    write(os.path.join(tree, ".git", "x"), b"h")
    os.symlink(outside, os.path.join(tree, "leak"))
    os.symlink(tmp_path, os.path.join(tree, "leakdir"))
    os.symlink("a.bin", os.path.join(tree, "alias"))
    state = os.path.join(tree, "state")
    os.mkdir(state)
    write(os.path.join(state, "cache"), b"c")
    assert set(walk(os.path.realpath(tree), os.path.realpath(state))) == {
        "a.bin", "sub/b.txt", "alias"}
