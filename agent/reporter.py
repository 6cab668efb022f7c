"""Keeps the tracker told what this agent holds.

State machine, driven by one task (`Reporter.run`):

    DISCONNECTED --register + announce(replace=True, everything)--> CONNECTED
    CONNECTED: announce(replace=False, added/removed) for every change,
               heartbeat every `heartbeat_seconds` the tracker asked for
    NotFoundError (the tracker lost us, e.g. restarted after our lease lapsed)
               -> DISCONNECTED at once
    TrackerError (unreachable, refused)
               -> DISCONNECTED, retried with exponential backoff and full jitter

After any failure the whole inventory is sent again with replace=True, so a
change lost with a failed call is never missing at the tracker. One log line
per state change, not per retry. HTTP keeps serving throughout.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from agent.hashcache import FileEntry
from agent.inventory import Changes
from common.errors import NotFoundError, TrackerError
from common.identity import Identity
from common.tracker_client import Lease

log = logging.getLogger("agent.reporter")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


class TrackerApi(Protocol):
    """The part of common.tracker_client.TrackerClient the agent uses (fakes in tests)."""

    async def register(self, agent_id: str, base_url: str) -> Lease: ...

    async def announce(self, agent_id: str, added: Mapping[str, Identity] | None = None,
                       removed: Iterable[str] = (), *, replace: bool = False,
                       have: Mapping[str, bytes] | None = None) -> int: ...

    async def heartbeat(self, agent_id: str) -> int: ...


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [d/2, d], d = 0.5 s * 2^(n-1), capped at 30 s."""
    d = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))
    return rng.uniform(d / 2, d)


class Reporter:
    """Register, announce and heartbeat for one agent. Feed it with `notify()`."""

    def __init__(
        self,
        tracker: TrackerApi,
        agent_id: str,
        base_url: str,
        snapshot: Callable[[], list[FileEntry]],
        *,
        rng: random.Random | None = None,
        partials: Callable[[], Mapping[str, tuple[Identity, bytes]]] | None = None,
    ) -> None:
        self._tracker = tracker
        self._agent_id = agent_id
        self._base_url = base_url
        self._snapshot = snapshot
        self._rng = rng or random.Random()
        self._pending: dict[str, Identity | None] = {}  # path -> new identity, None = removed
        self._partials = partials  # swarm downloads: path -> (identity, bitfield)
        self._have: dict[str, bytes] = {}  # bitfields of pending partial holdings
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()  # set while the tracker has our full inventory

    def notify(self, changes: Changes) -> None:
        """Queue an inventory change; later changes to a path supersede earlier ones."""
        for path in changes.removed:
            self._pending[path] = None
        for entry in changes.added:
            self._pending[entry.path] = entry.identity
        self._wake.set()

    def notify_partial(self, path: str, identity: Identity, have: bytes | None) -> None:
        """Queue a swarm download's holding (have: its bitfield, b"" = whole, None = gone).
        The caller rate-limits (agent.swarm); the latest bitfield supersedes the last."""
        self._pending[path] = None if have is None else identity
        if have:
            self._have[path] = have
        else:
            self._have.pop(path, None)
        self._wake.set()

    async def run(self) -> None:
        """Report forever (cancel to stop). Never raises TrackerError."""
        failures = 0
        state = "starting"
        while True:
            try:
                lease = await self._connect()
                if state != "connected":
                    log.info("tracker: registered as %s at %s (heartbeat every %ds)",
                             self._agent_id, self._base_url, lease.heartbeat_seconds)
                state, failures = "connected", 0
                await self._connected_loop(lease)
            except NotFoundError:
                self.connected.clear()
                log.warning("tracker: it no longer knows this agent; registering again")
                state = "lost"
            except TrackerError as e:
                self.connected.clear()
                failures += 1
                if state != "unreachable":
                    log.warning("tracker: %s; retrying with backoff, HTTP keeps serving", e)
                    state = "unreachable"
                await asyncio.sleep(backoff_delay(failures, self._rng))

    async def _connect(self) -> Lease:
        lease = await self._tracker.register(self._agent_id, self._base_url)
        # No await between clearing and the snapshot: the snapshot includes every
        # change queued so far, so none is lost or replayed out of order.
        self._pending.clear()
        self._have.clear()
        self._wake.clear()
        everything = {e.path: e.identity for e in self._snapshot()}
        have: dict[str, bytes] = {}
        for path, (ident, bits) in (self._partials() if self._partials else {}).items():
            everything[path] = ident
            if bits:
                have[path] = bits
        await self._tracker.announce(self._agent_id, everything, replace=True,
                                     **({"have": have} if have else {}))
        self.connected.set()
        return lease

    async def _connected_loop(self, lease: Lease) -> None:
        interval = float(lease.heartbeat_seconds or max(1, lease.lease_seconds // 3) or 10)
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval
        while True:
            if self._pending:
                batch, self._pending = self._pending, {}
                bits, self._have = self._have, {}
                added = {p: i for p, i in batch.items() if i is not None}
                removed = [p for p, i in batch.items() if i is None]
                have = {p: b for p, b in bits.items() if p in added}
                await self._tracker.announce(self._agent_id, added, removed, replace=False,
                                             **({"have": have} if have else {}))
            if loop.time() >= next_beat:
                await self._tracker.heartbeat(self._agent_id)
                next_beat = loop.time() + interval
                continue
            self._wake.clear()
            if self._pending:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_beat - loop.time()))
            except TimeoutError:
                pass
