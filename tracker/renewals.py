"""Heartbeats renewed in batches: one store write for all that arrive within a short window.

10,000 agents heartbeating every 10 s are 1,000 lease renewals a second. One write
each meant, on SQLite, 1,000 commits and 1,000 hops to the store's thread a second
(on Redis, 1,000 script calls), which one tracker could not keep up with while it
also answered locates: leases lapsed although their agents were heartbeating (issue
7's 10,000-agent run). Here a heartbeat joins a batch; the batch is written at most
WINDOW after its first heartbeat arrived, in one call (Store.renew_many: one
transaction, or one script), and each heartbeat is answered from its own result.

Nothing about a lease changes: a heartbeat still renews only a lease that was live
when it *arrived* (the batch carries each arrival time), so waiting in a batch never
lets a lease lapse; and a lease that has lapsed still answers NOT_FOUND. The answer
comes after the write, as before, so an agent told its lease is renewed has it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from tracker.store import Renewal, Store

WINDOW = 0.02  # seconds a renewal waits for others before the batch is written
MAX_BATCH = 2000  # renewals per store call, at most


class Renewals:
    """Batches lease renewals for one store. Use from one event loop."""

    def __init__(self, store: Store, clock: Callable[[], float], *,
                 window: float = WINDOW, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._clock = clock
        self._window = window
        self._max_batch = max_batch
        self._pending: list[tuple[Renewal, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # store calls made (for tests and metrics)

    async def renew(self, agent_id: str, lease_seconds: float) -> bool:
        """Extend the agent's lease to `lease_seconds` from now; False if it was unknown
        or lapsed when this was called. Raises what the store raises."""
        now = self._clock()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((Renewal(agent_id, now + lease_seconds, now), future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        batch: list[tuple[Renewal, asyncio.Future[bool]]] = []
        try:
            while self._pending:
                await asyncio.sleep(self._window)
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
                try:
                    results = await self._store.renew_many([r for r, _ in batch])
                except Exception as e:  # noqa: BLE001 -- the batch's heartbeats all get it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                finally:
                    self.batches += 1
                for (_, future), ok in zip(batch, results, strict=True):
                    if not future.done():  # a caller that gave up (cancelled) is skipped
                        future.set_result(ok)
                batch = []
        finally:
            self._writer = None
            for _, future in batch + self._pending:  # only when this task is cancelled
                future.cancel()
