"""Content identities of the served files, hashed once and cached across restarts.

Hashing runs in a ProcessPoolExecutor (SHA-256 over a large file is CPU-bound
and would stall the event loop, and threads would contend for the GIL between
digest updates). Results are kept in one SQLite file in the state dir, keyed
by the relative path together with the file's size, mtime_ns and inode: a
restart finds every unchanged file there and rehashes nothing.

SQLite rather than a JSON file: updates are per-file and transactional, and a
lookup of one piece list does not load the whole cache. It is only touched
from the event loop thread; each access is one indexed row.
"""
from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from common.errors import StorageError
from common.identity import Identity, hash_file

CACHE_FILE = "hashes.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    piece_size INTEGER NOT NULL,
    root BLOB NOT NULL,
    pieces BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
"""


@dataclass(frozen=True, slots=True)
class StatKey:
    """What must stay equal for a cached hash to still describe a file."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One served file: its path relative to DIR, its stat key and its identity."""

    path: str
    key: StatKey
    identity: Identity


def _hash_in_worker(path: str) -> tuple[int, bytes, int, bytes, bytes]:
    """Runs in a worker process; returns plain values so pickling stays trivial."""
    ident, pieces = hash_file(path)
    return ident.size, ident.sha256, ident.piece_size, ident.root, pieces


class HashCache:
    """The persistent path -> identity cache and the pool that fills it.

    `hashed` counts files actually hashed by this instance (cache misses).
    """

    def __init__(self, state_dir: str, workers: int = 2) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self._path = os.path.join(state_dir, CACHE_FILE)
        try:
            self._db = sqlite3.connect(self._path)
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open hash cache {self._path}: {e}") from None
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.hashed = 0

    def lookup(self, path: str, key: StatKey) -> FileEntry | None:
        """The cached entry for `path` if it was hashed with exactly this stat key."""
        row = self._db.execute(
            "SELECT sha256, piece_size, root FROM files"
            " WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
            (path, key.size, key.mtime_ns, key.inode),
        ).fetchone()
        if row is None:
            return None
        sha256, piece_size, root = row
        return FileEntry(path, key, Identity(key.size, sha256, piece_size, root))

    async def hash(self, path: str, abspath: str, key: StatKey) -> FileEntry | None:
        """Hash `abspath` in a worker and cache the result under `path`.

        Returns None, caching nothing, if the file vanished, could not be read,
        or no longer has stat key `key` before or after hashing (it changed:
        a later scan picks it up once it is stable).
        """
        loop = asyncio.get_running_loop()
        try:
            if StatKey.of(os.stat(abspath)) != key:
                return None
            size, sha256, piece_size, root, pieces = await loop.run_in_executor(
                self._executor(), _hash_in_worker, abspath
            )
            if StatKey.of(os.stat(abspath)) != key or size != key.size:
                return None
        except (OSError, ValueError):
            return None
        self.hashed += 1
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (path, key.size, key.mtime_ns, key.inode, sha256, piece_size, root, pieces),
        )
        self._db.commit()
        return FileEntry(path, key, Identity(size, sha256, piece_size, root))

    def pieces(self, path: str, sha256: bytes) -> tuple[int, bytes] | None:
        """(piece_size, concatenated piece hashes) of `path` if it holds content `sha256`."""
        row = self._db.execute(
            "SELECT piece_size, pieces FROM files WHERE path = ? AND sha256 = ?", (path, sha256)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def forget(self, paths: Iterable[str]) -> None:
        """Drop cached entries of files that are gone, so the cache does not grow forever."""
        self._db.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in paths))
        self._db.commit()

    def keep_only(self, paths: set[str]) -> None:
        """Drop every cached entry whose path is not in `paths`."""
        stale = [p for (p,) in self._db.execute("SELECT path FROM files") if p not in paths]
        if stale:
            self.forget(stale)

    def close(self) -> None:
        """Stop the workers (killing any hash in progress) and close the database."""
        if self._pool is not None:
            # Workers are non-daemon and shutdown() waits for a running hash, which can
            # take minutes on a large file: terminate them so SIGTERM stops us promptly.
            procs = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(5)
            self._pool = None
        self._db.close()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent runs gRPC threads, which fork does not survive.
            self._pool = ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with_parent,
            )
        return self._pool


def now_ns() -> int:
    """Wall-clock time in ns, comparable to st_mtime_ns."""
    return time.time_ns()


def _die_with_parent() -> None:
    """Worker initializer: end with the agent, even when it is SIGKILLed.

    Pool workers wait on a pipe and would otherwise outlive a killed agent
    (each holding tens of MiB). On Linux the kernel delivers SIGKILL to the
    worker when the thread that spawned it dies; the pool spawns from the
    event loop's thread, which lives as long as the agent.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: no such guard
    if os.getppid() == 1:  # the agent died before we got here
        os._exit(0)


PR_SET_PDEATHSIG = 1
