"""Fuzz the tracker's request validation through the real servicer (SQLite store,
fake gRPC context): Register, Announce, Heartbeat, Locate, AddMirror and
RemoveMirror with arbitrary fields, and arbitrary bytes parsed as requests.

The oracle: every call ends OK, INVALID_ARGUMENT or NOT_FOUND. INTERNAL means an
exception got past tracker/validate.py (the servicer answers INTERNAL for
anything unexpected), and that is a crash here.

    python tests/fuzz/fuzz_announce.py [SECONDS]     (make fuzz runs it)
"""
from __future__ import annotations

import asyncio
import logging
import sys
import tempfile

import _harness
import grpc
from google.protobuf.message import DecodeError

from common.api import tracker_pb2 as pb

try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from tracker import candidates, service, validate  # noqa: F401
else:
    from tracker import service
from common.identity import piece_size_for
from tracker.sqlite_store import SqliteStore

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
IDS = ["a", "b", ""]
URLS = ["http://10.0.0.1:7070", "https://h.example", "http://[::1]:1/", "ftp://x", "http://h:0",
        "http://h:99999", "http://u@h", "http://[::1", "http://h/p", ""]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


loop = asyncio.new_event_loop()
clock = Clock()
store = loop.run_until_complete(SqliteStore.open(tempfile.mkdtemp() + "/fuzz.db", clock))
servicer = service.TrackerServicer(store, lease_seconds=30, heartbeat_seconds=10, clock=clock)
logging.getLogger("tracker").setLevel(logging.CRITICAL)  # INTERNAL is caught below, not logged


def text(d: _harness.Data) -> str:
    """Mostly plausible paths and names, sometimes anything."""
    kind = d.int(2)
    if kind == 0:
        return d.text(40)
    if kind == 1:
        return "/".join(str(d.choice(["a", "..", ".", "", "b.iso", "\x00", " ", "é", "%2e"]))
                        for _ in range(d.int(3) + 1))
    if kind == 2:
        return "x" * (d.int(16) % 5000)
    return str(d.choice(["ubuntu.iso", "d/ubuntu.iso", "a", "ok"]))


def content(d: _harness.Data) -> pb.Content:
    size = d.int(64) if d.int(1) else d.int(24)
    piece = piece_size_for(size % 2**63) if d.int(1) else d.int(32)
    return pb.Content(size=size, sha256=d.blob(40) if d.int(2) == 0 else bytes(32),
                      piece_size=piece, root=d.blob(40) if d.int(2) == 0 else bytes(32))


def request(d: _harness.Data) -> tuple[str, object]:
    mode = d.int(8) % 8
    agent = str(d.choice(IDS)) if d.int(1) else d.text(150)
    if mode == 0:
        url = str(d.choice(URLS)) if d.int(1) else d.text(80)
        return "Register", pb.RegisterRequest(agent_id=agent, base_url=url)
    if mode == 1:
        added = [pb.Holding(path=text(d), content=content(d)) for _ in range(d.int(3))]
        removed = [text(d) for _ in range(d.int(2))]
        return "Announce", pb.AnnounceRequest(agent_id=agent, replace=bool(d.int(1)),
                                              added=added, removed=removed)
    if mode == 2:
        return "Heartbeat", pb.HeartbeatRequest(agent_id=agent)
    if mode == 3:
        if d.int(1):
            return "Locate", pb.LocateRequest(name=text(d))
        return "Locate", pb.LocateRequest(sha256=d.blob(40) if d.int(1) else bytes(32))
    if mode == 4:
        url = str(d.choice(URLS)) + "/" + text(d) if d.int(1) else d.text(80)
        return "AddMirror", pb.AddMirrorRequest(mirror=pb.Mirror(
            url=url, name=text(d) if d.int(1) else "", sha256=d.blob(40) if d.int(1) else bytes(32),
            size=d.int(64)))
    if mode == 5:
        return "RemoveMirror", pb.RemoveMirrorRequest(url=d.text(100))
    if mode == 6:
        clock.now += d.int(6)  # leases lapse now and then
        return "Heartbeat", pb.HeartbeatRequest(agent_id=agent)
    raw = d.rest()
    kind = d.choice([pb.AnnounceRequest, pb.RegisterRequest, pb.LocateRequest])
    try:
        return kind.__name__.removesuffix("Request"), kind.FromString(raw)  # type: ignore[attr-defined]
    except DecodeError:
        return "ListMirrors", pb.ListMirrorsRequest()  # gRPC refuses these before the servicer


def one_input(data: bytes) -> None:
    d = _harness.Data(data)
    try:
        method, req = request(d)
    except ValueError:
        return  # protobuf refused the value (e.g. text that is not UTF-8): never on the wire
    req = type(req).FromString(req.SerializeToString())  # exactly what the wire carries
    try:
        loop.run_until_complete(getattr(servicer, method)(req, FakeContext()))
    except Aborted as e:
        assert e.code in ALLOWED, (method, str(req)[:300], e.args)


if __name__ == "__main__":
    _harness.run("fuzz_announce", one_input, atheris is not None)
    sys.exit(0)
