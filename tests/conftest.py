from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import procs as _procs
from tests import redis_server as _redis


@pytest.fixture(autouse=True)
def _no_fixed_ports_nor_local_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `tracker serve` a test starts puts its status page on a free port, not on the
    default 7780 (two trackers in one test, or a tracker left on this machine, would clash)."""
    monkeypatch.setenv("TRACKER_HTTP", "127.0.0.1:0")
    # Nor does any mfetch a test runs talk to whatever agent listens on this machine's
    # default 127.0.0.1:7070: tests that swarm or hand over fetches name their agent.
    monkeypatch.setenv("MFETCH_AGENT", "off")


class Procs:
    """Starts real commands and kills whatever is still running at teardown."""

    def __init__(self) -> None:
        self.started: list[_procs.Proc] = []

    def start(self, argv: list[str], **kw) -> _procs.Proc:
        p = _procs.start(argv, **kw)
        self.started.append(p)
        return p

    def tracker(self, tmp_path, *extra: str, db: str | None = None, **kw) -> _procs.Proc:
        db = db or str(tmp_path / "tracker.db")
        return self.start([_procs.command("tracker"), "serve", "--listen", "127.0.0.1:0",
                           "--db", db, *extra], **kw)

    def agent(self, directory, tracker: str, state_dir, *extra: str, **kw) -> _procs.Proc:
        return self.start([_procs.command("agent"), "serve", str(directory), "--tracker", tracker,
                           "--listen", "127.0.0.1:0", "--state-dir", str(state_dir), *extra], **kw)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    for proc in p.started:
        proc.kill()


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[_redis.RedisServer]:
    try:
        server = _redis.start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def redis_url(_redis_session: _redis.RedisServer) -> str:
    """redis://127.0.0.1:PORT/0 of a session-wide test redis-server, emptied for this test."""
    _redis_session.flush()
    return _redis_session.url
