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

Those same pages must not be reachable from a web page in the user's browser
(which runs on loopback): `local_guard` refuses, on every LOCAL_PAGES path and
from any address, a request whose ``Host`` is a name other than localhost, this
machine's name or the advertised one (an IP address is fine: a site that rebinds
its own name to 127.0.0.1 would otherwise read /api/status and /metrics as
same-origin), a request whose ``Origin`` is not the agent's own, and a POST that
is not ``Content-Type: application/json`` (a cross-site form or a no-cors fetch
cannot send that without a CORS preflight, which is never granted).
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from common import agent_api, security

OPEN_PATHS = frozenset({"/healthz"})
LOCAL_PAGES = ("/status", "/api/status", "/metrics", "/fetches", "/api/fetches",
               agent_api.LOCAL_SWARM)
REALM = 'Bearer realm="mfetch-agent"'
HOST_NAMES: web.AppKey[frozenset[str]] = web.AppKey("host_names", frozenset)

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

    return is_loopback(request.remote) and is_local_page(request.path)


def is_local_page(path: str) -> bool:
    """Whether `path` is one of the pages and APIs used from the agent's own machine."""
    return any(path == p or path.startswith(p + "/") for p in LOCAL_PAGES)


def host_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """The names (besides IP addresses and *.localhost) the agent may be addressed by:
    `extra` (the advertised name), localhost and this machine's name."""
    return frozenset(n.lower() for n in (*extra, "localhost", socket.gethostname()) if n)


def known_host(host: str, names: frozenset[str]) -> bool:
    """Whether a Host header names this agent: an IP address, *.localhost or `names`."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name.endswith(".localhost") or name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def cross_site_refusal(request: web.Request) -> tuple[int, str] | None:
    """(status, reason) if `request` may come from another site's page, else None."""
    names = request.app.get(HOST_NAMES) or host_names()
    if not known_host(request.headers.get("Host", ""), names):
        return 403, "unknown Host name (open the page by IP address or localhost)"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return 403, "cross-site requests are refused"
    if request.method == "POST" and request.content_type != "application/json":
        return 415, "send Content-Type: application/json"
    return None


@web.middleware
async def local_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse cross-site and rebound requests to LOCAL_PAGES (see the module docstring)."""
    if is_local_page(request.path):
        refused = cross_site_refusal(request)
        if refused is not None:
            return web.json_response({"error": refused[1]}, status=refused[0])
    return await handler(request)
