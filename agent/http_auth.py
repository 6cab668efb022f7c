"""The agent's optional HTTP token: `Authorization: Bearer TOKEN` on everything but OPEN_PATHS.

Deny by default: with a token set, every path needs it except the health check
(so a load balancer or container check needs no secret). A request without it,
or with another, is answered 401 with `WWW-Authenticate: Bearer` before any
handler runs, so nothing about DIR (not even whether a path exists) is told.
Tokens are compared in constant time. Pages added later that must stay open
belong in OPEN_PATHS.

One exception: what is used from the agent's own machine (LOCAL_PAGES: the
status page, the fetch page and their JSON and metrics, and the API through
which mfetch shares a download) needs no token from a loopback client, since
a browser cannot send a bearer token and those paths have their own address
checks (loopback only by default: agent/status.py, agent/fetch_page.py,
agent/swarm.py). From any other address they need the token like everything
else.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from common import agent_api, security

OPEN_PATHS = frozenset({"/healthz"})
LOCAL_PAGES = ("/status", "/api/status", "/metrics", "/fetches", "/api/fetches",
               agent_api.LOCAL_SWARM)
REALM = 'Bearer realm="mfetch-agent"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_token(token: str) -> Middleware:
    """An aiohttp middleware refusing requests that do not carry `token` (401)."""
    expected = (token,)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS and request.raw_path.split("?", 1)[0] in OPEN_PATHS:
            return await handler(request)
        if _local_page(request):
            return await handler(request)
        sent = security.presented_token(request.headers.get("Authorization"))
        if not security.token_matches(sent, expected):
            why = "a token is required" if sent is None else "wrong token"
            raise web.HTTPUnauthorized(text=f"{why}: send Authorization: Bearer TOKEN\n",
                                       headers={"WWW-Authenticate": REALM})
        return await handler(request)

    return check


def _local_page(request: web.Request) -> bool:
    from agent.status import is_loopback

    path = request.path
    return is_loopback(request.remote) and any(
        path == p or path.startswith(p + "/") for p in LOCAL_PAGES)
