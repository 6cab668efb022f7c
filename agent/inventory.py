"""What the agent holds: the scanned directory, diffed scan to scan.

Changes are noticed by polling (a stat of every file every `rescan_seconds`),
not by inotify/kqueue: the stdlib binds neither, both need per-directory
watches that overflow on large trees, and neither sees changes made by other
hosts on NFS. A stat per file every few seconds is cheap, portable and exact.

A file modified less than `settle_seconds` ago is left for a later scan, so a
file still being copied in is not hashed over and over; this also closes the
"racy timestamp" gap (a write within the same mtime tick as our stat would
otherwise go unseen). After hashing, the stat key is checked again and the
result thrown away if the file changed meanwhile, so no wrong hash is announced.
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.hashcache import FileEntry, HashCache, StatKey, now_ns

log = logging.getLogger("agent.inventory")

TEMP_SUFFIXES = (".part", ".mfetch", ".tmp", "~")  # .mfetch: a download's control file


def is_shareable_name(name: str) -> bool:
    """False for hidden files/dirs and temp files (a download's OUT.part and OUT.mfetch)."""
    return bool(name) and not name.startswith(".") and not name.endswith(TEMP_SUFFIXES)


def inside(path: str, root: str) -> bool:
    """Whether real path `path` lies strictly inside real path `root`."""
    return path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Changes:
    """A diff of the inventory: files newly held (or with new content), paths gone."""

    added: tuple[FileEntry, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


@dataclass
class _ScanTotals:
    added: dict[str, FileEntry] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def add(self, ch: Changes) -> None:
        for e in ch.added:
            self.added[e.path] = e
            self.removed.discard(e.path)
        for p in ch.removed:
            self.added.pop(p, None)
            self.removed.add(p)


def walk(root: str, exclude: str | None = None) -> dict[str, StatKey]:
    """Regular files under real path `root`, relative path -> stat key (blocking).

    Symlinks to files are followed only when they resolve inside `root`;
    symlinked directories are not descended into (no loops, no escapes).
    Hidden and temp names, and the `exclude` tree (the state dir), are skipped.
    """
    out: dict[str, StatKey] = {}
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            entries = list(os.scandir(abs_dir))
        except OSError as e:
            log.debug("cannot list %s: %s", abs_dir, e)
            continue
        for entry in entries:
            if not is_shareable_name(entry.name):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    in_state = bool(exclude) and (real == exclude or inside(real, exclude or ""))
                    if not inside(real, root) or in_state:
                        continue
                    st = os.stat(real)
                    if stat.S_ISREG(st.st_mode):
                        out[rel] = StatKey.of(st)
                elif entry.is_dir(follow_symlinks=False):
                    if exclude and entry.path == exclude:
                        continue
                    stack.append((rel, entry.path))
                elif entry.is_file(follow_symlinks=False):
                    out[rel] = StatKey.of(entry.stat(follow_symlinks=False))
            except OSError as e:
                log.debug("cannot stat %s: %s", entry.path, e)
    return out


class Inventory:
    """The files of DIR with their identities, kept current by `scan()`.

    `on_change` is called with every non-empty Changes as it happens (files are
    announced one by one as their hashes complete, not at the end of a scan).
    """

    def __init__(
        self,
        root: str,
        cache: HashCache,
        *,
        exclude: str | None = None,
        settle_seconds: float = 2.0,
        on_change: Callable[[Changes], None] | None = None,
    ) -> None:
        self.root = os.path.realpath(root)
        self._exclude = os.path.realpath(exclude) if exclude else None
        self._cache = cache
        self._settle_ns = int(settle_seconds * 1e9)
        self._entries: dict[str, FileEntry] = {}
        self._by_sha: dict[bytes, set[str]] = {}
        self.on_change = on_change
        self._hash_slots = asyncio.Semaphore(8)  # bounds queued work, the pool bounds CPU
        self.scans = 0
        self.hashing: dict[str, int] = {}  # path -> size of files queued for or being hashed

    # -- queries (used by the HTTP server and the reporter) --

    def entry(self, path: str) -> FileEntry | None:
        return self._entries.get(path)

    def snapshot(self) -> list[FileEntry]:
        """Every file currently held."""
        return list(self._entries.values())

    def pieces_for(self, sha256: bytes) -> tuple[int, bytes] | None:
        """(piece_size, piece hashes) of a content held, or None."""
        for path in self._by_sha.get(sha256, ()):
            found = self._cache.pieces(path, sha256)
            if found is not None:
                return found
        return None

    def excluded(self, real_path: str) -> bool:
        """Whether a real path is in the state dir (never served)."""
        return bool(self._exclude) and (
            real_path == self._exclude or inside(real_path, self._exclude or "")
        )

    # -- scanning --

    async def scan(self) -> Changes:
        """List DIR, hash what is new or changed, and report the total diff."""
        loop = asyncio.get_running_loop()
        listing = await loop.run_in_executor(None, walk, self.root, self._exclude)
        totals = _ScanTotals()
        now = now_ns()

        gone = [p for p, e in self._entries.items() if listing.get(p) != e.key]
        quick: list[FileEntry] = []
        to_hash: list[tuple[str, StatKey]] = []
        for path, key in listing.items():
            old = self._entries.get(path)
            if old is not None and old.key == key:
                continue
            cached = self._cache.lookup(path, key)
            if cached is not None:
                quick.append(cached)
            elif 0 <= now - key.mtime_ns < self._settle_ns:
                continue  # still being written, or too fresh to trust its mtime: next scan
            else:
                to_hash.append((path, key))
        self._apply(gone, quick, totals)
        if self.scans == 0:
            self._cache.keep_only(set(listing))

        async def hash_one(path: str, key: StatKey) -> None:
            try:
                async with self._hash_slots:
                    entry = await self._cache.hash(path, os.path.join(self.root, path), key)
            finally:
                self.hashing.pop(path, None)
            if entry is not None:
                self._apply([], [entry], totals)

        self.hashing.update((p, k.size) for p, k in to_hash)
        await asyncio.gather(*(hash_one(p, k) for p, k in to_hash))
        self._cache.forget(p for p in totals.removed if p not in listing)
        self.scans += 1
        return Changes(tuple(totals.added.values()), tuple(sorted(totals.removed)))

    async def run(self, rescan_seconds: float) -> None:
        """Scan now and then every `rescan_seconds`, forever (cancel to stop)."""
        while True:
            try:
                ch = await self.scan()
                if ch:
                    log.info("inventory: %d files held (%d added or changed, %d removed)",
                             len(self._entries), len(ch.added), len(ch.removed))
            except Exception:  # a scan must never kill the agent; log and try again
                log.exception("inventory scan failed")
            await asyncio.sleep(rescan_seconds)

    def _apply(self, removed: list[str], added: list[FileEntry], totals: _ScanTotals) -> None:
        """Update the maps and publish what really changed (a path replaced in one step
        by a cache hit with the same content is not announced again). A file whose
        stat key changed is withdrawn at once and re-added when hashed again: until
        then nothing vouches for its bytes."""
        before: dict[str, bytes | None] = {}
        for path in removed:
            old = self._entries.pop(path, None)
            if old is not None:
                self._unindex(old)
                before[path] = old.identity.sha256
        for entry in added:
            old = self._entries.get(entry.path)
            if old is not None:
                self._unindex(old)
            before.setdefault(entry.path, old.identity.sha256 if old else None)
            self._entries[entry.path] = entry
            self._by_sha.setdefault(entry.identity.sha256, set()).add(entry.path)
        added_paths = {e.path for e in added}
        out = Changes(
            tuple(e for e in added if before.get(e.path) != e.identity.sha256),
            tuple(p for p in removed if p in before and p not in added_paths),
        )
        if out:
            totals.add(out)
            if self.on_change is not None:
                self.on_change(out)

    def _unindex(self, entry: FileEntry) -> None:
        paths = self._by_sha.get(entry.identity.sha256)
        if paths is not None:
            paths.discard(entry.path)
            if not paths:
                del self._by_sha[entry.identity.sha256]
