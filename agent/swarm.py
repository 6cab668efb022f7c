"""Swarming: a download in progress on this machine is a source as it goes.

mfetch, told of its local agent (``--agent URL``), registers its download here
over a small loopback-only JSON API (common.agent_api):

    POST   /local/swarm           {"sha256", "size", "piece_size", "root", "pieces" (base64 of
                                   the piece list), "name", "path" (OUT.part), "have" (base64
                                   bitfield)} -> {"agent_id", "url"}
    POST   /local/swarm/<sha256>  {"have": base64 bitfield} as pieces verify, or
                                  {"complete": "/path/of/OUT"} once the file is whole
    DELETE /local/swarm/<sha256>  the download stopped without completing

and the agent then serves, to anyone:

    GET|HEAD /swarm/<sha256>       single byte ranges, only over verified pieces: a range
                                   touching a piece not verified here is refused with 416
                                   and a reason (a whole-file GET only once complete)
    GET      /swarm/<sha256>/have  the bitfield (common.bitfield)
    GET      /pieces/<sha256>      the piece list (served by agent.server, from here too)

Decisions, and why:

- The download must lie inside the agent's DIR (OUT.part and OUT both). Anything
  else would let any local user make the agent serve any file it can read. Inside
  DIR, the agent serves only what it would serve anyway once the file is whole.
  A registration for a path outside DIR is refused (403) and mfetch then fetches
  without swarming, saying why.
- The names follow the /files/ rules (agent.inventory.is_shareable_name) on every
  component below DIR: no hidden file or directory, nothing in the state dir. Only
  a ``*.part`` file is registered (mfetch registers OUT.part), and "complete" must
  name the very same file (device and inode: OUT.part renamed to OUT) under a
  shareable name; anything else is refused (403). So a local caller cannot make the
  agent serve ``.env`` or ``.git/config`` by claiming an identity for it.
- Each piece is hashed against the piece list the first time it is served (the
  result is kept per download): bytes that do not match the claimed identity are
  never sent, and the piece is dropped from the bitfield. A caller can therefore
  only have served what it already knew the hashes of.
- The agent trusts the local mfetch's bitfield (it verified each piece against the
  piece list, which the agent checks against the root here). Peers verify every
  piece again, so a wrong claim costs a peer a retry elsewhere, never a bad byte.
- The part file is identified by device and inode at registration; a request finds
  the download gone (404) if the path now names another file (a restart that
  discarded the partial bytes), so stale bytes are never served as verified.
- After "complete" the file is announced as a whole holding and served by content
  from its final path until the next scan of DIR holds that content as an ordinary
  file (`held`), or the file is gone (deleted, moved, replaced): the registration
  is then dropped and withdrawn from the tracker (checked every PRUNE_SECONDS and
  whenever a request cannot open it). Only downloads in progress count against
  MAX_DOWNLOADS; at most MAX_DOWNLOADS completed ones are kept besides (oldest
  dropped first).
- Bitfield announcements to the tracker are rate-limited: each download is sent at
  most once per ``announce_seconds`` (the latest bitfield replaces the previous
  one at the tracker). Peers that need fresher news ask ``/swarm/<sha256>/have``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent.inventory import inside, is_shareable_name
from common import agent_api, bitfield
from common.errors import IntegrityError
from common.http_ranges import content_range, parse_range
from common.identity import DIGEST_SIZE, Identity, piece_size_for

log = logging.getLogger("agent.swarm")

MAX_DOWNLOADS = 256  # downloads in progress held at once (and as many completed ones)
PRUNE_SECONDS = 2.0  # how often completed downloads are checked (held by DIR's scan, or gone)
_HASH_CHUNK = 256 * 1024
MAX_REGISTRATION = 4096 * DIGEST_SIZE * 2 + 64 * 1024  # JSON with a 4096-piece list in base64
_HEX64 = re.compile(r"[0-9a-f]{64}")

# (path announced, identity, bitfield or b"" when whole; None = withdrawn)
OnChange = Callable[[str, Identity, bytes | None], None]


class SwarmRefused(Exception):
    """A registration or update the agent will not take: HTTP status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(eq=False)
class Download:
    """One download being shared: where its bytes are and which pieces are verified."""

    identity: Identity
    name: str
    path: str  # real path: OUT.part, then OUT once complete
    file_id: tuple[int, int]  # (st_dev, st_ino) of `path`
    piece_list: bytes
    have: bytearray  # one byte per piece, 0/1
    complete: bool = False
    checked: bytearray = field(default_factory=bytearray)  # pieces hashed here and found right
    dirty: bool = True  # not yet announced since the last change
    packed: bytes = b""  # bitfield.pack(have), kept for the peers that poll it

    def __post_init__(self) -> None:
        self.packed = bitfield.pack(self.have)
        if len(self.checked) != self.identity.pieces:
            self.checked = bytearray(self.identity.pieces)

    def set_have(self, have: bytearray) -> None:
        """New verified pieces from mfetch; a piece it no longer vouches for (it is being
        fetched again) must be hashed again before it is served."""
        self.have = have
        for i, h in enumerate(have):
            if not h:
                self.checked[i] = 0
        self.packed = bitfield.pack(self.have)

    @property
    def holding_path(self) -> str:
        return agent_api.swarm_path(self.identity.sha256, self.name)

    def wire_have(self) -> bytes:
        return b"" if self.complete else self.packed

    def holds(self, first: int, end: int) -> bool:
        return all(self.have[first:end])


class Swarm:
    """The downloads this agent shares, keyed by content SHA-256."""

    def __init__(self, root: str, *, exclude: str | None = None,
                 announce_seconds: float = 1.0) -> None:
        self.root = os.path.realpath(root)
        self._exclude = os.path.realpath(exclude) if exclude else None
        self.announce_seconds = announce_seconds
        self.downloads: dict[bytes, Download] = {}
        self.on_change: OnChange | None = None
        self.held: Callable[[bytes], bool] = lambda sha: False  # in the inventory (by content)?
        self._wake = asyncio.Event()

    # -- the local API's logic (pure enough to test without HTTP) --

    def register(self, doc: Any) -> Download:
        """Take a registration document; raises SwarmRefused with a reason."""
        if not isinstance(doc, dict):
            raise SwarmRefused(400, "expected a JSON object")
        try:
            sha = bytes.fromhex(str(doc["sha256"]))
            size, piece_size = int(doc["size"]), int(doc["piece_size"])
            root = bytes.fromhex(str(doc["root"]))
            piece_list = base64.b64decode(str(doc["pieces"]), validate=True)
            name, path = str(doc["name"]), str(doc["path"])
            have_wire = base64.b64decode(str(doc.get("have", "")), validate=True)
        except (KeyError, ValueError, TypeError, OverflowError, binascii.Error) as e:
            raise SwarmRefused(400, f"bad registration: {e}") from None
        if len(sha) != DIGEST_SIZE or len(root) != DIGEST_SIZE or size < 0:
            raise SwarmRefused(400, "bad registration: sha256 and root are 32 bytes, size >= 0")
        if piece_size != piece_size_for(size):
            raise SwarmRefused(400, f"piece_size {piece_size} is wrong for {size} bytes")
        ident = Identity(size, sha, piece_size, root)
        try:
            ident.check_piece_list(piece_list)
        except IntegrityError as e:
            raise SwarmRefused(400, str(e)) from None
        if not name or "/" in name or name.startswith(".") or not name.isprintable() \
                or len(name.encode()) > 200:
            raise SwarmRefused(400, f"bad name {name!r}")
        real, file_id = self._check_path(path, size, part=True)
        try:
            have = bitfield.unpack(have_wire, ident.pieces) if have_wire else \
                bytearray(ident.pieces)
        except bitfield.BadBitfield as e:
            raise SwarmRefused(400, f"have: {e}") from None
        if self._in_progress(besides=sha) >= MAX_DOWNLOADS:
            self.prune()
            if self._in_progress(besides=sha) >= MAX_DOWNLOADS:
                raise SwarmRefused(503, f"this agent already shares {MAX_DOWNLOADS} "
                                        "downloads in progress")
        old = self.downloads.get(sha)
        if old is not None and old.holding_path != agent_api.swarm_path(sha, name):
            self._withdraw(old)
        d = Download(ident, name, real, file_id, piece_list, have)
        self.downloads[sha] = d
        log.info("swarm: sharing the download of %s (%s, %d of %d pieces verified)",
                 name, sha.hex()[:12], sum(have), ident.pieces)
        self._changed(d)
        return d

    def update(self, sha: bytes, doc: Any) -> Download:
        """A bitfield update or a completion; raises SwarmRefused."""
        d = self.downloads.get(sha)
        if d is None:
            raise SwarmRefused(404, "no such download registered here")
        if not isinstance(doc, dict):
            raise SwarmRefused(400, "expected a JSON object")
        if "complete" in doc:
            real, file_id = self._check_path(str(doc["complete"]), d.identity.size)
            if file_id != d.file_id:
                raise SwarmRefused(403, "the completed file is not the one registered "
                                        "(OUT.part must be renamed to OUT)")
            d.path, d.complete = real, True
            d.set_have(bytearray(b"\x01" * d.identity.pieces))
            log.info("swarm: %s complete; seeding it as a whole file", d.name)
            done = [s for s, o in self.downloads.items() if o.complete]
            for old in done[:max(0, len(done) - MAX_DOWNLOADS)]:
                self.remove(old, why="too many completed downloads kept")
        elif "have" in doc:
            try:
                d.set_have(bitfield.unpack(base64.b64decode(str(doc["have"]), validate=True),
                                           d.identity.pieces))
            except (ValueError, binascii.Error) as e:
                raise SwarmRefused(400, f"have: {e}") from None
        else:
            raise SwarmRefused(400, "expected 'have' or 'complete'")
        self._changed(d)
        return d

    def remove(self, sha: bytes, why: str = "the download stopped") -> bool:
        d = self.downloads.pop(sha, None)
        if d is None:
            return False
        self._withdraw(d)
        log.info("swarm: %s no longer shared here by content (%s)", d.name, why)
        return True

    def prune(self) -> None:
        """Drop completed downloads that DIR's scan now holds, or whose file is gone."""
        for sha, d in list(self.downloads.items()):
            if not d.complete:
                continue
            if self.held(sha):
                self.remove(sha, why="the shared folder holds it now")
                continue
            try:
                st = os.stat(d.path)
                gone = (st.st_dev, st.st_ino) != d.file_id or st.st_size != d.identity.size
            except OSError:
                gone = True
            if gone:
                self.remove(sha, why="the file is gone")

    def _in_progress(self, besides: bytes) -> int:
        return sum(1 for s, d in self.downloads.items() if not d.complete and s != besides)

    def pieces_for(self, sha: bytes) -> tuple[int, bytes] | None:
        d = self.downloads.get(sha)
        return (d.identity.piece_size, d.piece_list) if d else None

    @staticmethod
    def check_pieces(d: Download, fd: int, first: int, end: int) -> list[int]:
        """Hash the pieces in [first, end) of `fd` not yet checked (blocking: run in a
        thread); marks the right ones checked and returns those that do not match."""
        ps, size = d.identity.piece_size, d.identity.size
        bad = []
        for p in range(first, end):
            if d.checked[p]:
                continue
            h = hashlib.sha256()
            pos, stop = p * ps, min(size, (p + 1) * ps)
            while pos < stop:
                chunk = os.pread(fd, min(_HASH_CHUNK, stop - pos), pos)
                if not chunk:
                    break
                h.update(chunk)
                pos += len(chunk)
            if pos == stop and h.digest() == d.piece_list[p * DIGEST_SIZE:(p + 1) * DIGEST_SIZE]:
                d.checked[p] = 1
            else:
                bad.append(p)
        return bad

    def drop_pieces(self, d: Download, bad: list[int]) -> None:
        """Pieces whose bytes do not match the piece list: no longer held nor announced."""
        log.warning("swarm: %s: pieces %s do not match the registered piece list; "
                    "no longer serving them", d.name, _ranges(bad))
        have = bytearray(d.have)
        for p in bad:
            have[p] = 0
        d.complete = False
        d.set_have(have)
        self._changed(d)

    def snapshot(self) -> dict[str, tuple[Identity, bytes]]:
        """Every download as the tracker should know it: path -> (identity, bitfield)."""
        return {d.holding_path: (d.identity, d.wire_have()) for d in self.downloads.values()}

    def _check_path(self, path: str, size: int, *, part: bool = False
                    ) -> tuple[str, tuple[int, int]]:
        """The real path and (st_dev, st_ino) of a download's file; with `part`, it must
        be a ``*.part`` file. Raises SwarmRefused unless /files/ would serve the name
        (with ``.part`` taken off)."""
        if not os.path.isabs(path):
            raise SwarmRefused(400, f"path {path!r} is not absolute")
        if "\0" in path or not path.isprintable():
            raise SwarmRefused(400, f"bad path {path!r}")
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError) as e:  # e.g. not encodable for the filesystem
            raise SwarmRefused(400, f"bad path {path!r}: {e}") from None
        excluded = bool(self._exclude) and (real == self._exclude
                                            or inside(real, self._exclude or ""))
        if not inside(real, self.root) or excluded:
            raise SwarmRefused(403, f"{path} is outside this agent's directory {self.root}: "
                               "save the download inside it to share it while it runs")
        parts = os.path.relpath(real, self.root).split(os.sep)
        if part:
            if not parts[-1].endswith(".part"):
                raise SwarmRefused(403, f"{path} is not a download in progress (OUT.part)")
            parts[-1] = parts[-1][:-len(".part")]
        if not all(is_shareable_name(p) for p in parts):
            raise SwarmRefused(403, f"{path} is not a name this agent shares (hidden and "
                                    "temporary names are never served)")
        try:
            st = os.stat(real)
        except (OSError, ValueError) as e:
            raise SwarmRefused(400, f"cannot stat {path!r}: {getattr(e, 'strerror', e)}") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise SwarmRefused(400, f"{path} is not a regular file of {size} bytes")
        return real, (st.st_dev, st.st_ino)

    def _changed(self, d: Download) -> None:
        d.dirty = True
        self._wake.set()

    def _withdraw(self, d: Download) -> None:
        if self.on_change is not None:
            self.on_change(d.holding_path, d.identity, None)

    # -- announcing --

    async def run(self) -> None:
        """Pass changed downloads to `on_change`, each at most once per announce_seconds."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRUNE_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            self.prune()
            for d in self.downloads.values():
                if d.dirty and self.on_change is not None:
                    d.dirty = False
                    self.on_change(d.holding_path, d.identity, d.wire_have())
            await asyncio.sleep(self.announce_seconds)

    # -- serving --

    def open(self, sha: bytes) -> tuple[Download, int] | None:
        """(download, fd) of a shared download still at its registered path (blocking)."""
        d = self.downloads.get(sha)
        if d is None:
            return None
        # OUT.part becomes OUT by rename (same inode) just before mfetch says "complete":
        # look there too, so peers are not turned away in between.
        paths = [d.path] + ([d.path[:-len(".part")]] if d.path.endswith(".part") else [])
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == d.file_id and st.st_size == d.identity.size:
                return d, fd
            os.close(fd)
        return None


_SWARM: web.AppKey[Swarm] = web.AppKey("swarm", Swarm)


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _sha(request: web.Request) -> bytes:
    text = request.match_info["sha256"]
    if not _HEX64.fullmatch(text):
        raise web.HTTPNotFound(text="not found\n")
    return bytes.fromhex(text)


async def _json(request: web.Request) -> Any:
    if not _is_loopback(request):
        raise web.HTTPForbidden(text="the swarm registration API answers loopback only\n")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise web.HTTPBadRequest(text="expected JSON\n") from None


def _refused(e: SwarmRefused) -> web.Response:
    return web.json_response({"error": str(e)}, status=e.status)


async def handle_register(request: web.Request) -> web.Response:
    swarm = request.app[_SWARM]
    try:
        d = swarm.register(await _json(request))
    except SwarmRefused as e:
        return _refused(e)
    agent_id = request.app.get(AGENT_ID, "")
    return web.json_response({"agent_id": agent_id,
                              "url": agent_api.SWARM_PREFIX + d.identity.sha256.hex()})


async def handle_update(request: web.Request) -> web.Response:
    sha = _sha(request)
    doc = await _json(request)
    try:
        request.app[_SWARM].update(sha, doc)
    except SwarmRefused as e:
        return _refused(e)
    return web.json_response({})


async def handle_remove(request: web.Request) -> web.Response:
    sha = _sha(request)
    if not _is_loopback(request):
        raise web.HTTPForbidden(text="the swarm registration API answers loopback only\n")
    removed = request.app[_SWARM].remove(sha)
    return web.json_response({"removed": removed})


async def handle_have(request: web.Request) -> web.Response:
    d = request.app[_SWARM].downloads.get(_sha(request))
    if d is None:
        raise web.HTTPNotFound(text="no such download shared here\n")
    return web.Response(body=d.packed, content_type="application/octet-stream",
                        headers={agent_api.PIECES_HEADER: str(d.identity.pieces)})


async def handle_get(request: web.Request) -> web.StreamResponse:
    from agent.server import stream_range  # the one body loop (stall bounds, upload limits)

    swarm = request.app[_SWARM]
    sha = _sha(request)
    loop = asyncio.get_running_loop()
    opened = await loop.run_in_executor(None, swarm.open, sha)
    if opened is None:
        gone = swarm.downloads.get(sha)
        if gone is not None and gone.complete:  # deleted, moved or replaced: stop announcing
            swarm.remove(sha, why="its file cannot be opened")
        raise web.HTTPNotFound(text="no such download shared here (or it was restarted)\n")
    d, fd = opened
    try:
        size = d.identity.size
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "ETag": agent_api.etag_for(sha)}
        try:
            span = parse_range(request.headers.get("Range", ""), size) \
                if "Range" in request.headers else None
        except ValueError:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers, text="bad range\n")
        start, end = span if span else (0, size)
        ps = d.identity.piece_size
        first, last = start // ps, (end - 1) // ps + 1 if end > start else start // ps
        if not d.holds(first, last):
            missing = [p for p in range(first, last) if not d.have[p]]
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(
                status=416, headers=headers,
                text=f"pieces not verified here yet: {_ranges(missing)} "
                     f"(ask /swarm/{sha.hex()}/have)\n")
        bad = await loop.run_in_executor(None, swarm.check_pieces, d, fd, first, last)
        if bad:
            swarm.drop_pieces(d, bad)
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers,
                                text=f"pieces not verified here: {_ranges(bad)}\n")
        resp = web.StreamResponse(status=206 if span else 200, headers=headers)
        if span:
            resp.headers["Content-Range"] = content_range(start, end, size)
        resp.content_length = end - start
        await resp.prepare(request)
        if request.method != "HEAD":
            await stream_range(request, resp, fd, start, end, f"{d.name} (downloading)")
        return resp
    finally:
        os.close(fd)


def _ranges(pieces: list[int]) -> str:
    out: list[str] = []
    for p in pieces:
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = out[-1].split("-")[0] + f"-{p}"
        else:
            out.append(str(p))
    text = ", ".join(out[:8])
    return text + (", ..." if len(out) > 8 else "")


AGENT_ID: web.AppKey[str] = web.AppKey("agent_id", str)


def add_routes(app: web.Application, swarm: Swarm) -> None:
    """Serve `swarm` from `app` (see the module docstring for the layout)."""
    app[_SWARM] = swarm
    app.router.add_post(agent_api.LOCAL_SWARM, handle_register)
    app.router.add_post(agent_api.LOCAL_SWARM + "/{sha256}", handle_update)
    app.router.add_delete(agent_api.LOCAL_SWARM + "/{sha256}", handle_remove)
    app.router.add_get(agent_api.SWARM_PREFIX + "{sha256}/have", handle_have)
    app.router.add_get(agent_api.SWARM_PREFIX + "{sha256}", handle_get)  # GET and HEAD
