"""The one async client of the tracker's gRPC API, shared by agent, mfetch and the tracker CLI.

Results are small frozen dataclasses (never pb2 messages), and grpc errors are
translated here and only here:

    UNAVAILABLE, DEADLINE_EXCEEDED  -> TrackerError("tracker at ADDR is unreachable ...")
    UNAUTHENTICATED                 -> TrackerError("tracker at ADDR refused the call: ...")
    NOT_FOUND                       -> NotFoundError(the tracker's message)
    anything else                   -> TrackerError(the tracker's message)

Use it as an async context manager::

    async with TrackerClient("127.0.0.1:7700") as tracker:
        for cand in await tracker.locate(name="ubuntu.iso"):
            ...
"""
from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from types import TracebackType
from typing import Self, TypeVar

import grpc

from common.api import tracker_pb2 as pb
from common.api import tracker_pb2_grpc as pb_grpc
from common.config import parse_hostport
from common.errors import NotFoundError, TrackerError
from common.identity import Identity
from common.index import Candidate, Lease, Mirror, Source, SourceKind
from common.security import TrackerLink

T = TypeVar("T")
DEFAULT_ADDRESS = "127.0.0.1:7700"
DEFAULT_TIMEOUT = 10.0
MAX_MESSAGE = 64 * 1024 * 1024  # whole inventories can be large (see tracker.server)


class TrackerClient:
    """A grpc.aio channel to the tracker at `address` (HOST:PORT): plain text, or TLS
    (and mutual TLS, and a token sent with every call) as `link` says.

    Every call has a deadline of `timeout` seconds. Raises ConfigError on a
    malformed address (at construction), TrackerError/NotFoundError from calls.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = DEFAULT_TIMEOUT,
                 link: TrackerLink | None = None) -> None:
        parse_hostport(address, "tracker address")
        self.address = address
        self.timeout = timeout
        self.link = link or TrackerLink()
        self._metadata = self.link.metadata()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.TrackerStub | None = None

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _open(self) -> pb_grpc.TrackerStub:
        if self._stub is None:
            options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                       ("grpc.max_send_message_length", MAX_MESSAGE)]
            if self.link.secure:
                creds = self.link.credentials()
                self._channel = grpc.aio.secure_channel(self.address, creds, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options=options)
            self._stub = pb_grpc.TrackerStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Close the channel (calls in flight are cancelled). Safe to call twice."""
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            raise self._translate(e) from None

    def _translate(self, e: grpc.aio.AioRpcError) -> TrackerError:
        code, details = e.code(), (e.details() or "").strip()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = "timed out" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "unavailable"
            return TrackerError(f"tracker at {self.address} is unreachable ({why}"
                                f"{_tls_hint(details, self.link.secure)})")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return TrackerError(f"tracker at {self.address} refused the call: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFoundError(details or "not found")
        return TrackerError(f"tracker at {self.address}: {details or code.name.lower()}")

    # --- agents -----------------------------------------------------------------------------

    async def register(self, agent_id: str, base_url: str) -> Lease:
        """Register (or re-register) an agent serving HTTP at `base_url`."""
        r = await self._call(self._open().Register(
            pb.RegisterRequest(agent_id=agent_id, base_url=base_url),
            timeout=self.timeout, metadata=self._metadata))
        return Lease(r.lease_seconds, r.heartbeat_seconds)

    async def announce(self, agent_id: str, added: Mapping[str, Identity] | None = None,
                       removed: Iterable[str] = (), *, replace: bool = False,
                       have: Mapping[str, bytes] | None = None) -> int:
        """Send holdings (path -> identity) and removed paths; `replace` sends the whole
        inventory. `have` gives the bitfield of added paths that are partial holdings
        (swarm downloads in progress). Returns how many holdings the tracker now has
        for the agent. NotFoundError means: register again, then announce everything
        with replace."""
        bits = have or {}
        holdings = [pb.Holding(path=path, content=_content(ident), have=bits.get(path, b""))
                    for path, ident in (added or {}).items()]
        r = await self._call(self._open().Announce(
            pb.AnnounceRequest(agent_id=agent_id, replace=replace, added=holdings,
                               removed=list(removed)),
            timeout=self.timeout, metadata=self._metadata))
        return int(r.holdings)

    async def heartbeat(self, agent_id: str) -> int:
        """Renew the lease; returns its length in seconds. NotFoundError: register again."""
        r = await self._call(self._open().Heartbeat(
            pb.HeartbeatRequest(agent_id=agent_id),
            timeout=self.timeout, metadata=self._metadata))
        return int(r.lease_seconds)

    # --- clients ----------------------------------------------------------------------------

    async def locate(self, *, name: str | None = None,
                     sha256: bytes | None = None) -> list[Candidate]:
        """Candidates for a name (basename or agent-relative path) or a 32-byte sha256,
        most live holders first. Raises NotFoundError when there is none."""
        if (name is None) == (sha256 is None):
            raise ValueError("locate takes exactly one of name= or sha256=")
        req = pb.LocateRequest(name=name) if name is not None else pb.LocateRequest(sha256=sha256)
        r = await self._call(self._open().Locate(req, timeout=self.timeout,
                                                  metadata=self._metadata))
        return [_candidate(c) for c in r.candidates]

    # --- mirrors ----------------------------------------------------------------------------

    async def add_mirror(self, url: str, sha256: bytes, name: str = "", size: int = 0) -> None:
        """Add (or replace) the mirror at `url`; the name defaults to the URL's last segment."""
        await self._call(self._open().AddMirror(pb.AddMirrorRequest(
            mirror=pb.Mirror(url=url, name=name, sha256=sha256, size=size)),
            timeout=self.timeout, metadata=self._metadata))

    async def remove_mirror(self, url: str) -> bool:
        """Remove the mirror at `url`; False if the tracker had none."""
        r = await self._call(self._open().RemoveMirror(
            pb.RemoveMirrorRequest(url=url),
            timeout=self.timeout, metadata=self._metadata))
        return bool(r.removed)

    async def list_mirrors(self) -> list[Mirror]:
        """Every mirror the tracker knows, ordered by URL."""
        r = await self._call(self._open().ListMirrors(pb.ListMirrorsRequest(),
                                                       timeout=self.timeout,
                                                       metadata=self._metadata))
        return [Mirror(m.url, m.name, bytes(m.sha256), int(m.size)) for m in r.mirrors]


def _tls_hint(details: str, secure: bool) -> str:
    """What a failed TLS handshake most likely means, from gRPC's connection error text."""
    text = details.lower()
    if secure and ("handshake" in text or "ssl" in text or "certificate" in text):
        return ": the TLS handshake failed; is the tracker serving TLS, does --tracker-ca " \
               "trust its certificate, does it require a client certificate (--tracker-cert)?"
    if secure and "socket closed" in text:  # what a mutual-TLS tracker refusing us looks like
        return ": the tracker closed the TLS connection; does it require a client " \
               "certificate (--tracker-cert) signed by a CA it trusts?"
    if not secure and ("socket closed" in text or "connection reset" in text
                       or "handshake" in text or "ssl" in text):
        return "; if the tracker serves TLS, use --tracker-tls or --tracker-ca"
    return ""


def _content(ident: Identity) -> pb.Content:
    return pb.Content(size=ident.size, sha256=ident.sha256, piece_size=ident.piece_size,
                      root=ident.root)


_KINDS = {pb.Source.AGENT: SourceKind.AGENT, pb.Source.MIRROR: SourceKind.MIRROR}


def _candidate(c: pb.Candidate) -> Candidate:
    content = Identity(int(c.content.size), bytes(c.content.sha256), int(c.content.piece_size),
                       bytes(c.content.root))
    sources = tuple(Source(_KINDS[s.kind], s.url, s.pieces_url, s.agent_id, bytes(s.have))
                    for s in c.sources if s.kind in _KINDS)
    return Candidate(content, c.name, sources, int(c.live_holders))
