"""The reporter against a fake tracker: full and incremental announces, heartbeats,
re-registering when the tracker lost us, backoff while it is unreachable."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping

from agent.hashcache import FileEntry, StatKey
from agent.inventory import Changes
from agent.reporter import Reporter, backoff_delay
from common.errors import NotFoundError, TrackerError
from common.identity import Identity
from common.tracker_client import Lease
from tests.agent_helpers import eventually


def entry(path: str, n: int = 0) -> FileEntry:
    return FileEntry(path, StatKey(1, n, n), Identity(1, bytes([n]) * 32, 262144, b"r" * 32))


class FakeTracker:
    """Keeps holdings like the tracker; `down` makes every call fail as unreachable."""

    def __init__(self, heartbeat_seconds: int = 1) -> None:
        self.registered: set[str] = set()
        self.holdings: dict[str, Identity] = {}
        self.calls: list[str] = []
        self.down = False
        self.heartbeat_seconds = heartbeat_seconds

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise TrackerError("tracker at fake is unreachable (unavailable)")

    async def register(self, agent_id: str, base_url: str) -> Lease:
        self._check("register")
        self.registered.add(agent_id)
        return Lease(3 * self.heartbeat_seconds, self.heartbeat_seconds)

    async def announce(self, agent_id: str, added: Mapping[str, Identity] | None = None,
                       removed: Iterable[str] = (), *, replace: bool = False) -> int:
        self._check("announce-full" if replace else "announce")
        if agent_id not in self.registered:
            raise NotFoundError("unknown agent")
        if replace:
            self.holdings.clear()
        self.holdings.update(added or {})
        for p in removed:
            self.holdings.pop(p, None)
        return len(self.holdings)

    async def heartbeat(self, agent_id: str) -> int:
        self._check("heartbeat")
        if agent_id not in self.registered:
            raise NotFoundError("unknown agent")
        return 3

    def forget_everything(self) -> None:
        """What a tracker restarted after our lease lapsed looks like."""
        self.registered.clear()
        self.holdings.clear()


async def run_reporter(fake: FakeTracker, inventory: dict[str, FileEntry]
                       ) -> tuple[Reporter, asyncio.Task[None]]:
    rep = Reporter(fake, "agent-1", "http://h:1", lambda: list(inventory.values()),
                   rng=random.Random(1))
    return rep, asyncio.create_task(rep.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def test_full_then_incremental_announces() -> None:
    fake = FakeTracker()
    inv = {"a": entry("a", 1)}
    rep, task = await run_reporter(fake, inv)
    try:
        await eventually(lambda: fake.holdings.keys() == {"a"})
        assert fake.calls[:2] == ["register", "announce-full"]
        inv["b"] = entry("b", 2)
        rep.notify(Changes(added=(inv["b"],)))
        await eventually(lambda: fake.holdings.keys() == {"a", "b"})
        del inv["a"]
        rep.notify(Changes(removed=("a",)))
        await eventually(lambda: fake.holdings.keys() == {"b"})
        assert fake.calls.count("announce-full") == 1
        await eventually(lambda: "heartbeat" in fake.calls, what="a heartbeat")
    finally:
        await stop(task)


async def test_reregisters_when_the_tracker_lost_us() -> None:
    fake = FakeTracker()
    inv = {"a": entry("a", 1), "b": entry("b", 2)}
    rep, task = await run_reporter(fake, inv)
    try:
        await eventually(lambda: len(fake.holdings) == 2)
        fake.forget_everything()
        # The next heartbeat gets NOT_FOUND: register again and send everything.
        await eventually(lambda: len(fake.holdings) == 2, what="re-announce")
        assert fake.calls.count("register") == 2
        assert fake.calls.count("announce-full") == 2
    finally:
        await stop(task)


async def test_unreachable_tracker_is_retried_and_caught_up(caplog) -> None:
    fake = FakeTracker()
    fake.down = True
    inv = {"a": entry("a", 1)}
    rep, task = await run_reporter(fake, inv)
    try:
        await eventually(lambda: fake.calls.count("register") >= 3, what="retries")
        inv["b"] = entry("b", 2)
        rep.notify(Changes(added=(inv["b"],)))
        fake.down = False
        await eventually(lambda: fake.holdings.keys() == {"a", "b"}, what="catch up")
        await eventually(rep.connected.is_set)
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1  # one line per state change, not per retry
    finally:
        await stop(task)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    assert 0.25 <= backoff_delay(1, rng) <= 0.5
    assert 2.0 <= backoff_delay(4, rng) <= 4.0
    assert all(15.0 <= backoff_delay(n, rng) <= 30.0 for n in range(10, 100))
