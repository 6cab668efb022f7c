"""The agent's HTTP server: DIR read-only with byte ranges, piece lists, health.

Layout (common.agent_api):

    GET|HEAD /files/<path>      a regular file inside DIR, single byte ranges
    GET      /pieces/<sha256>   piece hashes of a content held (32-byte digests)
    GET      /healthz           "ok"
    GET      /status, /api/status, /metrics   status page, JSON, Prometheus (agent/status.py)

Files go out through a StreamResponse fed 256 KiB pread()s run in a thread,
so memory stays bounded whatever the size, and the Range / If-Range / ETag
rules are ours exactly (aiohttp's FileResponse has its own ETag and
precondition logic that would not use the content hash).

Nothing outside DIR is ever served. The *raw* request target is parsed (not
the router's normalized path): `..`/`.` segments, empty segments, encoded
slashes and NUL are refused with 403; the path is then resolved with realpath
and must stay inside realpath(DIR), be a regular file, and not be hidden, a
temp file, or in the state dir (404 otherwise). After opening, the descriptor's
real path is read back from /proc/self/fd to close the race where a component
is swapped for a symlink between the check and the open.

Only regular files are ever opened: the path is stat()ed first, so a device
(where open() alone can have effects, e.g. a watchdog or a tape) or a FIFO is
refused with 404 without being opened; a file swapped for one after that check
is opened O_NONBLOCK (a FIFO open cannot hang) and refused by the fstat check.
A hard link inside DIR to a file outside DIR *is* served: it is a name inside
DIR for the same inode, exactly like a copy someone put there (only root or the
file's owner can make one; DIR's owner decides what DIR holds).

Bounds on slow or hostile clients (see SECURITY.md): request line and each
header field at most 8190 bytes and at most 128 headers (aiohttp: 400/431
otherwise); a connection that has not completed a request within
KEEPALIVE_TIMEOUT of connecting (or of its last response) is closed, which is
what ends a "slowloris" client sending half a request line; a client that
stops reading a response for SEND_STALL_TIMEOUT is disconnected, so a stalled
reader holds its socket and file descriptor no longer than that. The number
of connections is bounded only by the process's file descriptor limit.
"""
from __future__ import annotations

import asyncio
import email.utils
import os
import re
import stat
from enum import Enum
from urllib.parse import unquote_to_bytes

from aiohttp import web

from agent import status
from agent import swarm as swarm_mod
from agent.hashcache import StatKey
from agent.http_auth import local_guard, require_token
from agent.inventory import Inventory, inside, is_shareable_name
from agent.limits import Limits
from agent.observe import AgentObserver, Transfer, counting_middleware
from agent.swarm import _SWARM, Swarm
from common import agent_api
from common.http_ranges import content_range, parse_range

CHUNK = 256 * 1024
# Longer than the aiohttp client's 15 s keep-alive, so an idle pooled connection is
# closed by the client first (no race on reuse); also the most a half-sent request
# holds a connection.
KEEPALIVE_TIMEOUT = 75.0
SEND_STALL_TIMEOUT = 60.0  # most one CHUNK may wait for a client that stopped reading
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_INVENTORY: web.AppKey[Inventory] = web.AppKey("inventory", Inventory)
_LIMITS: web.AppKey[Limits] = web.AppKey("limits", Limits)


class PathVerdict(Enum):
    """What a raw request path may be: served (if it exists) or refused outright."""

    OK = "ok"
    FORBIDDEN = "forbidden"


def parse_file_path(raw_target: str) -> tuple[PathVerdict, str]:
    """The DIR-relative path named by a raw request target '/files/...'.

    Refuses (FORBIDDEN) dot segments, empty segments, percent-encoded '/' or
    NUL, and anything that is not under the /files/ prefix.
    """
    raw = raw_target.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith(agent_api.FILES_PREFIX):
        return PathVerdict.FORBIDDEN, ""
    parts: list[bytes] = []
    for seg in raw[len(agent_api.FILES_PREFIX):].split("/"):
        decoded = unquote_to_bytes(seg)
        if decoded in (b"", b".", b"..") or b"/" in decoded or b"\0" in decoded:
            return PathVerdict.FORBIDDEN, ""
        parts.append(decoded)
    return PathVerdict.OK, os.fsdecode(b"/".join(parts))


def open_served(inventory: Inventory, rel: str) -> tuple[int, os.stat_result] | None:
    """Open `rel` for serving (blocking): (fd, fstat) or None if it must not be served."""
    root = inventory.root
    if not all(is_shareable_name(p) for p in rel.split("/")):
        return None
    real = os.path.realpath(os.path.join(root, rel))
    if not inside(real, root) or inventory.excluded(real):
        return None
    if not all(is_shareable_name(p) for p in os.path.relpath(real, root).split(os.sep)):
        return None
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            return None  # never open a device or FIFO: open() itself can block or act
        # O_NONBLOCK: a FIFO swapped in since must not hang; O_NOFOLLOW: no symlink left.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        try:
            actual = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            actual = real  # no /proc: the realpath check above stands alone
        if stat.S_ISREG(st.st_mode) and inside(actual, root) and not inventory.excluded(actual):
            return fd, st
    except OSError:
        pass
    os.close(fd)
    return None


def if_range_matches(value: str, etag: str | None, last_modified: str, mtime: float) -> bool:
    """RFC 9110 §13.1.5: the range is served only if the validator matches exactly."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        return etag is not None and value == etag  # strong comparison; a weak tag never matches
    if value == last_modified:
        return True
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) == int(mtime)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False


async def handle_file(request: web.Request) -> web.StreamResponse:
    inventory = request.app[_INVENTORY]
    verdict, rel = parse_file_path(request.raw_path)
    if verdict is PathVerdict.FORBIDDEN:
        raise web.HTTPForbidden(text="forbidden path\n")
    loop = asyncio.get_running_loop()
    opened = await loop.run_in_executor(None, open_served, inventory, rel)
    if opened is None:
        raise web.HTTPNotFound(text="not found\n")
    fd, st = opened
    try:
        return await _send(request, inventory, rel, fd, st)
    finally:
        os.close(fd)


async def _send(request: web.Request, inventory: Inventory, rel: str, fd: int,
                st: os.stat_result) -> web.StreamResponse:
    size = st.st_size
    entry = inventory.entry(rel)
    etag = agent_api.etag_for(entry.identity.sha256) if (
        entry is not None and entry.key == StatKey.of(st)) else None
    last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
    headers = {"Accept-Ranges": "bytes", "Last-Modified": last_modified,
               "Content-Type": "application/octet-stream"}
    if etag:
        headers["ETag"] = etag

    span: tuple[int, int] | None = None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header is not None and (
            if_range is None or if_range_matches(if_range, etag, last_modified, st.st_mtime)):
        try:
            span = parse_range(range_header, size)  # None: not a single byte range -> 200
        except ValueError:
            headers["Content-Range"] = f"bytes */{size}"  # RFC 9110 §15.5.17
            return web.Response(status=416, headers=headers)

    resp = web.StreamResponse(status=206 if span else 200, headers=headers)
    start, end = span if span else (0, size)
    if span:
        resp.headers["Content-Range"] = content_range(start, end, size)
    resp.content_length = end - start
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    return await stream_range(request, resp, fd, start, end, rel)


async def stream_range(request: web.Request, resp: web.StreamResponse, fd: int, start: int,
                       end: int, what: str) -> web.StreamResponse:
    """Send bytes [start, end) of `fd` as the prepared `resp`'s body (files and swarm),
    within the upload cap, shown as a transfer of `what` on the status page."""
    observer = request.app[status.OBSERVER]
    transfer = observer.begin(request.remote or "?", what, start, end)
    try:
        return await _send_body(request, resp, fd, start, end, observer, transfer)
    finally:
        observer.end(transfer)


async def _send_body(request: web.Request, resp: web.StreamResponse, fd: int, start: int,
                     end: int, observer: AgentObserver, transfer: Transfer) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    limits = request.app[_LIMITS]
    step = limits.chunk(CHUNK)
    pos = start
    while pos < end:
        chunk = await loop.run_in_executor(None, os.pread, fd, min(step, end - pos), pos)
        if not chunk:
            break  # truncated under us: the short body tells the client (length mismatch)
        await limits.pace(len(chunk))  # the upload rate cap (agent/limits.py)
        try:
            async with asyncio.timeout(SEND_STALL_TIMEOUT):
                await resp.write(chunk)  # waits for the socket to drain: memory stays bounded
        except TimeoutError:
            # The client stopped reading: drop it rather than hold the socket and fd
            # forever. aiohttp's write_eof then meets the closed transport and treats
            # it as a client disconnect (quietly).
            if request.transport is not None:
                request.transport.abort()
            return resp
        pos += len(chunk)
        observer.sent(transfer, len(chunk))
    await resp.write_eof()
    return resp


async def handle_pieces(request: web.Request) -> web.Response:
    hexdigest = request.match_info["sha256"]
    if not _HEX64.fullmatch(hexdigest):
        raise web.HTTPNotFound(text="not found\n")
    found = request.app[_INVENTORY].pieces_for(bytes.fromhex(hexdigest))
    if found is None and _SWARM in request.app:  # a download in progress, shared
        found = request.app[_SWARM].pieces_for(bytes.fromhex(hexdigest))
    if found is None:
        raise web.HTTPNotFound(text="not found\n")
    piece_size, pieces = found
    return web.Response(body=pieces, content_type="application/octet-stream",
                        headers={agent_api.PIECE_SIZE_HEADER: str(piece_size)})


async def handle_health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_runner(inventory: Inventory, token: str | None = None, *,
                limits: Limits | None = None, status_public: bool = False,
                swarm: Swarm | None = None, app: web.Application | None = None
                ) -> web.AppRunner:
    """An AppRunner for make_app(inventory, token, ...) (or `app`, made by make_app)
    with the agent's connection bounds."""
    app = app or make_app(inventory, token, limits=limits, status_public=status_public,
                          swarm=swarm)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
    app[status.OBSERVER].open_connections = (
        lambda: len(runner.server.connections) if runner.server is not None else 0)
    return runner


def make_app(inventory: Inventory, token: str | None = None, *, limits: Limits | None = None,
             status_public: bool = False, swarm: Swarm | None = None) -> web.Application:
    """The aiohttp application serving `inventory.root` and the pieces it holds, with
    its status page and metrics (agent/status.py; loopback clients only unless
    `status_public`), and with `swarm`, the downloads in progress on this machine
    (agent/swarm.py). With `token`, every path but the open ones (agent.http_auth)
    needs it; `limits` caps uploads (agent/limits.py). The local pages and APIs refuse
    cross-site and DNS-rebound requests (agent.http_auth.local_guard)."""
    observer = AgentObserver(inventory)
    limits = limits or Limits()
    middlewares = [counting_middleware(observer), local_guard]
    if token:
        middlewares.append(require_token(token))
    middlewares.append(limits.middleware)
    app = web.Application(middlewares=middlewares,
                          client_max_size=swarm_mod.MAX_REGISTRATION if swarm else 1024**2)
    if swarm is not None:
        swarm_mod.add_routes(app, swarm)
        # A completed download is dropped once DIR's scan holds its content (agent/swarm.py).
        swarm.held = lambda sha: inventory.pieces_for(sha) is not None
    app[_INVENTORY] = inventory
    app[_LIMITS] = limits
    status.add_routes(app, observer, public=status_public)
    app.router.add_get(agent_api.FILES_PREFIX + "{tail:.*}", handle_file)  # GET and HEAD
    app.router.add_get(agent_api.PIECES_PREFIX + "{sha256}", handle_pieces)
    app.router.add_get("/healthz", handle_health)
    return app
