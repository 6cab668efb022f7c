"""What the agent knows about itself: Prometheus metrics and the transfers in flight.

One :class:`AgentObserver` per agent, with its own CollectorRegistry (several agents
run in one test process). The file handler (agent/server.py) registers each body it
sends as a :class:`Transfer` and counts its bytes; a middleware counts responses by
status code; the status routes (agent/status.py) read it all.

Metric names (all prefixed ``mfetch_agent_``):

    bytes_served_total              counter: file body bytes sent
    requests_total{code}            counter: HTTP responses by status code
    hashing_backlog                 gauge: files waiting to be hashed or being hashed
    open_connections                gauge: HTTP connections open now
    active_transfers                gauge: file bodies being sent now
    shared_files, shared_bytes      gauges: what the agent serves (hashed files)
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.inventory import Inventory


@dataclass
class Transfer:
    """One file body being sent: to whom, what, which bytes, how far along."""

    id: int
    client: str
    path: str
    start: int
    end: int  # exclusive
    sent: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        """Bytes per second since the transfer started."""
        return self.sent / max(time.monotonic() - self.started, 1e-3)


class AgentObserver:
    """Metrics, active transfers and a little identity (filled in by agent/app.py)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.started = time.time()
        self.info: dict[str, Any] = {}  # agent_id, base_url, tracker: set by agent.app.start
        self.connected: Callable[[], bool | None] = lambda: None  # tracker link, if any
        self.open_connections: Callable[[], int] = lambda: 0
        self.transfers: dict[int, Transfer] = {}
        self._ids = itertools.count(1)
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.bytes_served = Counter("mfetch_agent_bytes_served", "File body bytes sent",
                                    registry=r)
        self.requests = Counter("mfetch_agent_requests", "HTTP responses by status code",
                                ["code"], registry=r)
        Gauge("mfetch_agent_hashing_backlog", "Files waiting to be hashed or being hashed",
              registry=r).set_function(lambda: len(inventory.hashing))
        Gauge("mfetch_agent_open_connections", "HTTP connections open now",
              registry=r).set_function(lambda: self.open_connections())
        Gauge("mfetch_agent_active_transfers", "File bodies being sent now",
              registry=r).set_function(lambda: len(self.transfers))
        Gauge("mfetch_agent_shared_files", "Files shared (hashed)",
              registry=r).set_function(lambda: len(inventory.snapshot()))
        Gauge("mfetch_agent_shared_bytes", "Bytes shared (hashed files)",
              registry=r).set_function(
                  lambda: sum(e.identity.size for e in inventory.snapshot()))
        self.total_bytes = 0
        self.total_requests = 0

    def begin(self, client: str, path: str, start: int, end: int) -> Transfer:
        """Register a body about to be sent; pair with :meth:`end`."""
        t = Transfer(next(self._ids), client, path, start, end)
        self.transfers[t.id] = t
        return t

    def sent(self, transfer: Transfer, n: int) -> None:
        transfer.sent += n
        self.total_bytes += n
        self.bytes_served.inc(n)

    def end(self, transfer: Transfer) -> None:
        self.transfers.pop(transfer.id, None)

    def count_response(self, status: int) -> None:
        self.total_requests += 1
        self.requests.labels(str(status)).inc()


def counting_middleware(observer: AgentObserver) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware counting every response (and raised HTTP error) by status."""
    @web.middleware
    async def count(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            observer.count_response(e.status)
            raise
        except Exception:
            observer.count_response(500)
            raise
        observer.count_response(resp.status)
        return resp
    return count
