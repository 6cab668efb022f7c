"""Politeness on the agent's data port: a total upload rate and a per-client cap.

- ``upload_rate`` (bytes/s, 0 = none): one token bucket shared by every
  response body, so the agent never sends faster than that in total.
- ``max_client_connections`` (0 = none): at most this many file requests in
  flight from one client address at a time, over ``/files/`` and ``/swarm/``
  together (both send file bodies; a swarm bitfield, ``/have``, is not counted). One more is answered
  ``503 Service Unavailable`` with ``Retry-After: 1``; mfetch takes that as
  "use one connection less here", not as a failing source.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from common import agent_api
from common.ratelimit import TokenBucket

RETRY_AFTER = "1"
_DATA_PREFIXES = (agent_api.FILES_PREFIX, agent_api.SWARM_PREFIX)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Limits:
    def __init__(self, upload_rate: int = 0, max_client_connections: int = 0) -> None:
        self.bucket = TokenBucket(upload_rate) if upload_rate > 0 else None
        self.max_client = max_client_connections
        self.active: dict[str, int] = {}  # client address -> file requests in flight
        self.refused = 0

    def chunk(self, default: int) -> int:
        """How much to read and send at a time: small enough to pace smoothly."""
        return min(default, self.bucket.slice) if self.bucket else default

    async def pace(self, n: int) -> None:
        """Wait until `n` more bytes may go out under the upload rate."""
        if self.bucket is not None:
            wait = self.bucket.reserve(n)
            if wait > 0:
                await asyncio.sleep(wait)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.max_client or not request.path.startswith(_DATA_PREFIXES) \
                or request.path.endswith("/have"):  # a bitfield, not a file body
            return await handler(request)
        client = request.remote or ""
        if self.active.get(client, 0) >= self.max_client:
            self.refused += 1
            return web.Response(status=503, headers={"Retry-After": RETRY_AFTER},
                                text=f"at most {self.max_client} requests at a time from one "
                                     "address; retry later\n")
        self.active[client] = self.active.get(client, 0) + 1
        try:
            return await handler(request)
        finally:
            left = self.active[client] - 1
            if left:
                self.active[client] = left
            else:
                del self.active[client]
