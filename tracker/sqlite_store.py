"""The embedded store: one SQLite file (stdlib sqlite3, WAL).

Writes run on one dedicated worker thread, on the writing connection: sqlite3 is
blocking, a write may wait for the file's lock (another tracker process on the same
file) or for the disk, and the single thread serializes them without locks.

Reads (locate, is_live, mirrors) run on the event loop itself, on a second, query-only
connection. In WAL mode a reader never waits for a writer, the read is an index
lookup of ~0.1-0.3 ms, and the hop to a thread and back cost more than that in
wake-ups and GIL hand-offs (issue 7's profile: a third of a locate's time on the
loop). A multi-statement read runs in one read transaction, so it sees one snapshot.
The overview (status page) is a bigger read and stays on the thread; so does every
read of a ':memory:' database, which a second connection would not see.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from common.identity import Identity
from tracker.store import (
    AgentInfo,
    ContentInfo,
    Found,
    Holding,
    Located,
    MirrorRecord,
    Overview,
    Renewal,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id   TEXT PRIMARY KEY,
    base_url   TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holdings (
    agent_id   TEXT NOT NULL,
    path       TEXT NOT NULL,
    name       TEXT NOT NULL,   -- basename of path, for locate by name
    size       INTEGER NOT NULL,
    sha256     BLOB NOT NULL,
    piece_size INTEGER NOT NULL,
    root       BLOB NOT NULL,
    have       BLOB NOT NULL DEFAULT x'',  -- verified pieces of a partial holder; empty = all
    PRIMARY KEY (agent_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holdings_by_name ON holdings (name);
CREATE INDEX IF NOT EXISTS holdings_by_path ON holdings (path);
CREATE INDEX IF NOT EXISTS holdings_by_sha256 ON holdings (sha256);
CREATE TABLE IF NOT EXISTS mirrors (
    url    TEXT PRIMARY KEY,
    name   TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    size   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mirrors_by_name ON mirrors (name);
CREATE INDEX IF NOT EXISTS mirrors_by_sha256 ON mirrors (sha256);
"""

WRITER_CACHE_MIB = 256  # page cache of the writing connection (see _connect)
READER_CACHE_MIB = 64  # page cache of the event loop's reading connection
WAL_CHECKPOINT_PAGES = 20_000  # ~80 MB of WAL before it is copied into the file
NAMES_SHOWN = 5  # names listed per content in an overview
NAMES_SAMPLED = 64  # holdings read per content to find those names
OVERVIEW_SCAN = 4  # contents looked at per content listed, at most

_LOCATED = """
SELECT a.agent_id, a.base_url, h.path, h.size, h.sha256, h.piece_size, h.root, h.have
FROM holdings h JOIN agents a ON a.agent_id = h.agent_id
WHERE a.expires_at > ? AND ({where})
ORDER BY a.agent_id, h.path
"""

# The contents a name resolves to, most live holdings of that name first, mirror-only
# ones counting 0 (the ranking Store.locate_name documents). Args: now, name, name
# (whole path), name (mirror), limit.
_RANKED = """
SELECT sha256 FROM (
    SELECT h.sha256 AS sha256, COUNT(*) AS n
    FROM holdings h JOIN agents a ON a.agent_id = h.agent_id
    WHERE a.expires_at > ? AND (h.name = ? OR h.path = ?)
    GROUP BY h.sha256
    UNION ALL
    SELECT sha256, 0 FROM mirrors WHERE name = ?
) GROUP BY sha256 ORDER BY SUM(n) DESC, sha256 LIMIT ?
"""


class SqliteStore:
    """A :class:`tracker.store.Store` in one SQLite file. Open with :meth:`open`."""

    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        """Prefer :meth:`open`, which also creates the schema."""
        self._path = path
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # the event loop's, see the docstring

    @classmethod
    async def open(cls, path: str, clock: Callable[[], float]) -> SqliteStore:
        """Open (creating if needed) the database at `path`; ':memory:' works too.

        Raises sqlite3.Error if the file cannot be opened or is not a database.
        """
        store = cls(path, clock)
        try:
            await store._run(store._connect)
            if path not in ("", ":memory:") and not path.startswith("file:"):
                store._reader = _open_reader(path)
        except BaseException:
            await store.close()
            raise
        return store

    def _connect(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)  # autocommit; explicit BEGINs
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            db.execute("PRAGMA busy_timeout=5000")
            # Announces insert into three indexes in random order; with SQLite's default
            # 2 MB cache nearly every insert read its pages back and every commit wrote
            # them again (10,000 agents x 1,000 files: ~3,000 holdings/s). A bigger
            # cache and fewer, larger checkpoints (a page written by many commits is
            # copied into the file once) more than double that. Memory: at most
            # WRITER_CACHE_MIB beyond what the tracker uses otherwise.
            db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_MIB * 1024}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(holdings)")}
            if "have" not in columns:  # a database from before swarming
                db.execute("ALTER TABLE holdings ADD COLUMN have BLOB NOT NULL DEFAULT x''")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _read(self, fn: Callable[[sqlite3.Connection], T], snapshot: bool = False) -> T:
        """fn(connection) on the event loop's reader (on the thread without one); with
        `snapshot`, inside one read transaction."""
        reader = self._reader
        if reader is None:
            return await self._run(lambda: fn(self._conn()))
        if not snapshot:
            return fn(reader)
        reader.execute("BEGIN")
        try:
            return fn(reader)
        finally:
            reader.execute("COMMIT")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("store is closed")
        return self._db

    # --- agents ---------------------------------------------------------------------------

    async def register(self, agent_id: str, base_url: str, expires_at: float) -> None:
        def do() -> None:
            self._conn().execute(
                "INSERT INTO agents (agent_id, base_url, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (agent_id) DO UPDATE SET base_url = excluded.base_url, "
                "expires_at = excluded.expires_at",
                (agent_id, base_url, expires_at))
        await self._run(do)

    async def renew(self, agent_id: str, expires_at: float) -> bool:
        def do() -> bool:
            cur = self._conn().execute(
                "UPDATE agents SET expires_at = ? WHERE agent_id = ? AND expires_at > ?",
                (expires_at, agent_id, self._clock()))
            return cur.rowcount > 0
        return await self._run(do)

    async def renew_many(self, renewals: Sequence[Renewal]) -> list[bool]:
        def do() -> list[bool]:
            db = self._conn()
            with _transaction(db):  # one commit for the batch: the point of batching
                return [db.execute(
                    "UPDATE agents SET expires_at = MAX(expires_at, ?) "
                    "WHERE agent_id = ? AND expires_at > ?",
                    (r.expires_at, r.agent_id, r.asked_at)).rowcount > 0 for r in renewals]
        return await self._run(do)

    async def is_live(self, agent_id: str) -> bool:
        def do(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT 1 FROM agents WHERE agent_id = ? AND expires_at > ?",
                             (agent_id, self._clock())).fetchone()
            return row is not None
        return await self._read(do)

    async def remove_agent(self, agent_id: str) -> None:
        def do() -> None:
            db = self._conn()
            with _transaction(db):
                db.execute("DELETE FROM holdings WHERE agent_id = ?", (agent_id,))
                db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
        await self._run(do)

    async def purge(self, lapsed_before: float) -> int:
        def do() -> int:
            db = self._conn()
            with _transaction(db):
                db.execute("DELETE FROM holdings WHERE agent_id IN "
                           "(SELECT agent_id FROM agents WHERE expires_at < ?)", (lapsed_before,))
                return db.execute("DELETE FROM agents WHERE expires_at < ?",
                                  (lapsed_before,)).rowcount
        return await self._run(do)

    # --- holdings -------------------------------------------------------------------------

    async def update_holdings(self, agent_id: str, *, replace: bool,
                              added: Sequence[Holding], removed: Sequence[str]) -> int:
        rows = [(agent_id, h.path, h.name, h.identity.size, h.identity.sha256,
                 h.identity.piece_size, h.identity.root, h.have) for h in added]

        def do() -> int:
            db = self._conn()
            with _transaction(db):
                if replace:
                    db.execute("DELETE FROM holdings WHERE agent_id = ?", (agent_id,))
                else:
                    db.executemany("DELETE FROM holdings WHERE agent_id = ? AND path = ?",
                                   [(agent_id, p) for p in removed])
                db.executemany(
                    "INSERT OR REPLACE INTO holdings "
                    "(agent_id, path, name, size, sha256, piece_size, root, have) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                (count,) = db.execute("SELECT COUNT(*) FROM holdings WHERE agent_id = ?",
                                      (agent_id,)).fetchone()
                return int(count)
        return await self._run(do)

    async def holdings_named(self, name: str) -> list[Located]:
        return await self._located("h.name = ? OR h.path = ?", name, name)

    async def holders_of(self, sha256: bytes) -> list[Located]:
        return await self._located("h.sha256 = ?", sha256)

    async def _located(self, where: str, *args: Any) -> list[Located]:
        def do(db: sqlite3.Connection) -> list[Located]:
            return _rows_located(db.execute(_LOCATED.format(where=where),
                                            (self._clock(), *args)).fetchall())
        return await self._read(do)

    # --- locate: the whole lookup in one read (one snapshot) ------------------------------

    async def locate_name(self, name: str, max_contents: int) -> Found:
        def do(db: sqlite3.Connection) -> Found:
            shas = [sha for (sha,) in db.execute(
                _RANKED, (self._clock(), name, name, name, max_contents)).fetchall()]
            return self._of(db, shas)
        return await self._read(do, snapshot=True)

    async def locate_sha256(self, sha256: bytes) -> Found:
        return await self._read(lambda db: self._of(db, [sha256]), snapshot=True)

    def _of(self, db: sqlite3.Connection, shas: list[bytes]) -> Found:
        if not shas:
            return [], []
        marks = ",".join("?" * len(shas))
        located = _rows_located(db.execute(_LOCATED.format(where=f"h.sha256 IN ({marks})"),
                                           (self._clock(), *shas)).fetchall())
        mirrors = [MirrorRecord(url, name, bytes(sha), size) for url, name, sha, size in
                   db.execute("SELECT url, name, sha256, size FROM mirrors "
                              f"WHERE sha256 IN ({marks}) ORDER BY url", shas)]
        return located, mirrors

    # --- mirrors --------------------------------------------------------------------------

    async def put_mirror(self, mirror: MirrorRecord) -> None:
        def do() -> None:
            self._conn().execute(
                "INSERT OR REPLACE INTO mirrors (url, name, sha256, size) VALUES (?, ?, ?, ?)",
                (mirror.url, mirror.name, mirror.sha256, mirror.size))
        await self._run(do)

    async def remove_mirror(self, url: str) -> bool:
        def do() -> bool:
            return self._conn().execute("DELETE FROM mirrors WHERE url = ?", (url,)).rowcount > 0
        return await self._run(do)

    async def list_mirrors(self) -> list[MirrorRecord]:
        return await self._mirrors("1")

    async def mirrors_named(self, name: str) -> list[MirrorRecord]:
        return await self._mirrors("name = ?", name)

    async def mirrors_of(self, sha256: bytes) -> list[MirrorRecord]:
        return await self._mirrors("sha256 = ?", sha256)

    async def _mirrors(self, where: str, *args: Any) -> list[MirrorRecord]:
        def do(db: sqlite3.Connection) -> list[MirrorRecord]:
            cur = db.execute(
                f"SELECT url, name, sha256, size FROM mirrors WHERE {where} ORDER BY url", args)
            return [MirrorRecord(url, name, bytes(sha), size)
                    for url, name, sha, size in cur.fetchall()]
        return await self._read(do)

    # --- overview (status page, metrics) ----------------------------------------------

    async def overview(self, limit: int) -> Overview:
        def do() -> Overview:
            db, now = self._conn(), self._clock()
            (live,) = db.execute("SELECT COUNT(*) FROM agents WHERE expires_at > ?",
                                 (now,)).fetchone()
            # Walks the sha256 index once; no table rows are read.
            (contents,) = db.execute(
                "SELECT COUNT(*) FROM (SELECT DISTINCT sha256 FROM holdings)").fetchone()
            (mirrors,) = db.execute("SELECT COUNT(*) FROM mirrors").fetchone()
            agents = tuple(
                AgentInfo(agent_id, base_url, expires_at - now, int(n))
                for agent_id, base_url, expires_at, n in db.execute(
                    "SELECT agent_id, base_url, expires_at, "
                    "(SELECT COUNT(*) FROM holdings h WHERE h.agent_id = a.agent_id) "
                    "FROM agents a WHERE expires_at > ? ORDER BY expires_at DESC, agent_id "
                    "LIMIT ?", (now, limit)))
            listed: list[ContentInfo] = []
            # The first `limit` contents with a live holder, in index order: the walk stops
            # early (and looks at no more than OVERVIEW_SCAN contents without one).
            cur = db.execute("SELECT DISTINCT sha256 FROM holdings ORDER BY sha256")
            for looked, (sha,) in enumerate(cur):
                if len(listed) >= limit or looked >= limit * OVERVIEW_SCAN:
                    break
                live_holders = ("FROM holdings h JOIN agents a ON a.agent_id = h.agent_id "
                                "WHERE h.sha256 = ? AND a.expires_at > ?")
                (count,) = db.execute(f"SELECT COUNT(DISTINCT h.agent_id) {live_holders}",
                                      (sha, now)).fetchone()
                if not count:
                    continue
                holders = [r[0] for r in db.execute(
                    f"SELECT DISTINCT h.agent_id {live_holders} ORDER BY h.agent_id LIMIT ?",
                    (sha, now, limit))]
                # A sample of the names (each row is a lookup by primary key): enough to
                # show what the content is called, without reading every holding.
                sample = db.execute("SELECT name, size FROM holdings WHERE sha256 = ? LIMIT ?",
                                    (sha, NAMES_SAMPLED)).fetchall()
                names = sorted({n for n, _ in sample})[:NAMES_SHOWN]
                listed.append(ContentInfo(bytes(sha), int(sample[0][1]), tuple(names),
                                          tuple(holders), int(count)))
            mirror_list = tuple(
                MirrorRecord(url, name, bytes(sha), size) for url, name, sha, size in db.execute(
                    "SELECT url, name, sha256, size FROM mirrors ORDER BY url LIMIT ?", (limit,)))
            return Overview(int(live), int(contents), int(mirrors), agents, tuple(listed),
                            mirror_list)
        return await self._run(do)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

        def do() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        try:
            await self._run(do)
        finally:
            self._pool.shutdown(wait=True)


def _open_reader(path: str) -> sqlite3.Connection:
    """The event loop's connection: reads only (query_only), never waits long for a lock."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA query_only=1")
        # A WAL reader waits only in rare cases (a WAL being recovered after a crash);
        # bounded, since it holds up the event loop meanwhile.
        db.execute("PRAGMA busy_timeout=1000")
        db.execute(f"PRAGMA cache_size=-{READER_CACHE_MIB * 1024}")
    except BaseException:
        db.close()
        raise
    return db


def _rows_located(rows: Iterable[tuple[Any, ...]]) -> list[Located]:
    out = []
    idents: dict[tuple[Any, ...], Identity] = {}  # holders of one content share one Identity
    for agent_id, base_url, path, size, sha, piece_size, root, have in rows:
        key = (size, sha, piece_size, root)
        ident = idents.get(key)
        if ident is None:
            ident = idents[key] = Identity(size, bytes(sha), piece_size, bytes(root))
        out.append(Located(agent_id, base_url, Holding(path, ident, bytes(have))))
    return out


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
