"""Hostile input against a real tracker on 127.0.0.1:0 (SQLite store): oversized and
malformed messages, absurd fields, identity claims, floods. See SECURITY.md."""
from __future__ import annotations

import asyncio
import pathlib
import resource
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.api import tracker_pb2 as pb
from common.api import tracker_pb2_grpc as pb_grpc
from tests.tracker_fakes import FakeClock, ident
from tracker import candidates, server
from tracker.config import TrackerConfig
from tracker.sqlite_store import SqliteStore

TAR = ident("tar")
Code = grpc.StatusCode


@pytest.fixture
async def tracker(tmp_path: pathlib.Path):
    running = await server.start(TrackerConfig(listen="127.0.0.1:0", db=str(tmp_path / "t.db")),
                                 clock=FakeClock())
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def stub(tracker):
    async with grpc.aio.insecure_channel(tracker.address, options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as ch:
        yield pb_grpc.TrackerStub(ch)


async def code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return Code.OK


async def still_up(stub) -> None:  # type: ignore[no-untyped-def]
    assert await code(stub.ListMirrors(pb.ListMirrorsRequest(), timeout=10)) is Code.OK


def content(i=TAR, **kw) -> pb.Content:  # type: ignore[no-untyped-def]
    fields = {"size": i.size, "sha256": i.sha256, "piece_size": i.piece_size, "root": i.root}
    fields.update(kw)
    return pb.Content(**fields)


async def register(stub, agent_id: str = "a", url: str = "http://10.0.0.1:7070") -> None:  # type: ignore[no-untyped-def]
    assert await code(stub.Register(pb.RegisterRequest(agent_id=agent_id, base_url=url),
                                    timeout=10)) is Code.OK


BIG = "x" * 100_000
INVALID = [
    # huge or invalid names and ids
    pb.RegisterRequest(agent_id=BIG, base_url="http://h:1"),
    pb.RegisterRequest(agent_id="a\x00b", base_url="http://h:1"),
    pb.RegisterRequest(agent_id="a", base_url="http://" + BIG),
    pb.RegisterRequest(agent_id="a", base_url="http://[::1"),
    pb.RegisterRequest(agent_id="a", base_url="http://user:pw@h:1"),
    pb.LocateRequest(name=BIG),
    pb.LocateRequest(name="../../etc/passwd"),
    pb.LocateRequest(name="a\x00b"),
    pb.HeartbeatRequest(agent_id=BIG),
    pb.RemoveMirrorRequest(url="http://h/" + BIG),
    pb.AddMirrorRequest(mirror=pb.Mirror(url="http://h/" + BIG, sha256=TAR.sha256)),
    pb.AddMirrorRequest(mirror=pb.Mirror(url="http://h/x", sha256=TAR.sha256, size=2**64 - 1)),
    pb.AddMirrorRequest(mirror=pb.Mirror(url="http://h/x", sha256=TAR.sha256, name="../x")),
    # digests of the wrong length
    pb.LocateRequest(sha256=b""), pb.LocateRequest(sha256=bytes(31)),
    pb.LocateRequest(sha256=bytes(33)), pb.LocateRequest(sha256=TAR.sha256.hex().encode()),
    pb.AddMirrorRequest(mirror=pb.Mirror(url="http://h/x", sha256=bytes(64))),
]
INVALID_ANNOUNCED = [
    pb.Holding(path="a", content=content(size=2**64 - 1)),       # absurd size
    pb.Holding(path="a", content=content(size=2**63)),
    pb.Holding(path="a", content=content(piece_size=2**32 - 1)),  # absurd piece size
    pb.Holding(path="a", content=content(piece_size=0)),
    pb.Holding(path="a", content=content(sha256=b"")),
    pb.Holding(path="a", content=content(sha256=bytes(33))),
    pb.Holding(path="a", content=content(root=bytes(31))),
    pb.Holding(path=BIG, content=content()),
    pb.Holding(path="a/./b", content=content()),
    pb.Holding(path="a\x7fb", content=content()),
    pb.Holding(path="a"),                                          # no content at all
]


async def test_invalid_fields_are_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    await register(stub)
    for req in INVALID:
        method = {pb.RegisterRequest: stub.Register, pb.LocateRequest: stub.Locate,
                  pb.HeartbeatRequest: stub.Heartbeat, pb.RemoveMirrorRequest: stub.RemoveMirror,
                  pb.AddMirrorRequest: stub.AddMirror}[type(req)]
        assert await code(method(req, timeout=10)) is Code.INVALID_ARGUMENT, str(req)[:120]
    for holding in INVALID_ANNOUNCED:
        req = pb.AnnounceRequest(agent_id="a", added=[content_ok(), holding])
        assert await code(stub.Announce(req, timeout=10)) is Code.INVALID_ARGUMENT, \
            str(holding)[:120]
    await still_up(stub)


def content_ok() -> pb.Holding:
    return pb.Holding(path="ok", content=content())


async def test_over_the_holdings_cap_is_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    await register(stub)
    for req in (pb.AnnounceRequest(agent_id="a", added=[content_ok()] * 100_001),
                pb.AnnounceRequest(agent_id="a", removed=["x"] * 100_001)):
        t0 = time.monotonic()
        assert await code(stub.Announce(req, timeout=30)) is Code.INVALID_ARGUMENT
        assert time.monotonic() - t0 < 10, "refused before validating every entry"
    await still_up(stub)


async def test_message_over_the_size_limit_is_resource_exhausted(stub) -> None:  # type: ignore[no-untyped-def]
    await register(stub)
    req = pb.AnnounceRequest(agent_id="a", removed=["p" * 4000] * 17_000)  # ~68 MB > 64 MB
    assert req.ByteSize() > server.MAX_MESSAGE
    assert await code(stub.Announce(req, timeout=60)) is Code.RESOURCE_EXHAUSTED
    await still_up(stub)


async def test_bytes_that_are_not_the_message_are_refused(tracker, stub) -> None:  # type: ignore[no-untyped-def]
    """Undecodable protobuf, and a string field that is not UTF-8: INVALID_ARGUMENT
    (gRPC alone would answer UNKNOWN and log a traceback per call)."""
    async with grpc.aio.insecure_channel(tracker.address) as ch:
        for method in ("Register", "Announce", "Locate"):
            call = ch.unary_unary(f"/mfetch.v1.Tracker/{method}")
            for junk in (b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\x0f"):
                assert await code(call(junk, timeout=10)) is Code.INVALID_ARGUMENT
    await still_up(stub)


async def test_unknown_agent_heartbeat_and_announce_are_not_found(stub) -> None:  # type: ignore[no-untyped-def]
    assert await code(stub.Heartbeat(pb.HeartbeatRequest(agent_id="ghost"), timeout=10)) \
        is Code.NOT_FOUND
    req = pb.AnnounceRequest(agent_id="ghost", added=[content_ok()])
    assert await code(stub.Announce(req, timeout=10)) is Code.NOT_FOUND


async def test_claiming_a_live_agents_id_is_accepted_last_one_wins(stub, caplog) -> None:  # type: ignore[no-untyped-def]
    """The documented policy (tracker/service.py, SECURITY.md): no auth, so no refusal;
    the takeover is logged, and clients still verify every byte."""
    await register(stub, "a", "http://10.0.0.1:7070")
    assert await code(stub.Announce(pb.AnnounceRequest(agent_id="a", added=[content_ok()]),
                                    timeout=10)) is Code.OK
    await register(stub, "a", "http://10.6.6.6:7070")
    assert "registered again while its lease is live" in caplog.text
    reply = await stub.Locate(pb.LocateRequest(sha256=TAR.sha256), timeout=10)
    assert [s.url for s in reply.candidates[0].sources] == ["http://10.6.6.6:7070/files/ok"]


async def test_locate_answers_are_capped(stub) -> None:  # type: ignore[no-untyped-def]
    n_contents = candidates.MAX_CANDIDATES + 5
    await register(stub, "many")
    req = pb.AnnounceRequest(agent_id="many", replace=True, added=[
        pb.Holding(path=f"d{i}/same.iso", content=content(ident(f"c{i}"))) for i in range(n_contents)])
    assert await code(stub.Announce(req, timeout=10)) is Code.OK
    n_agents = candidates.MAX_AGENT_SOURCES + 20
    for i in range(n_agents):
        await register(stub, f"ag{i}", f"http://10.1.{i // 250}.{i % 250}:7070")
        await stub.Announce(pb.AnnounceRequest(agent_id=f"ag{i}", added=[content_ok()]),
                            timeout=10)
    for i in range(candidates.MAX_MIRROR_SOURCES + 3):
        await stub.AddMirror(pb.AddMirrorRequest(mirror=pb.Mirror(
            url=f"http://m{i}/tar", sha256=TAR.sha256)), timeout=10)

    reply = await stub.Locate(pb.LocateRequest(name="same.iso"), timeout=10)
    assert len(reply.candidates) == candidates.MAX_CANDIDATES
    (cand,) = (await stub.Locate(pb.LocateRequest(sha256=TAR.sha256), timeout=10)).candidates
    kinds = [s.kind for s in cand.sources]
    assert kinds.count(pb.Source.AGENT) == candidates.MAX_AGENT_SOURCES
    assert kinds.count(pb.Source.MIRROR) == candidates.MAX_MIRROR_SOURCES
    assert cand.live_holders == n_agents, "the true count, though not every source is listed"
    picked = {s.agent_id for s in cand.sources}
    for _ in range(5):  # a random sample each time: the load spreads over every holder
        again = (await stub.Locate(pb.LocateRequest(sha256=TAR.sha256), timeout=10)).candidates[0]
        picked |= {s.agent_id for s in again.sources}
    assert len(picked) > candidates.MAX_AGENT_SOURCES


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def test_flood_of_locates(tracker, stub) -> None:  # type: ignore[no-untyped-def]
    """2,000 locates at once: each answered (OK, NOT_FOUND, or RESOURCE_EXHAUSTED past
    MAX_CONCURRENT_RPCS), the health check answers right after, memory stays bounded."""
    await register(stub)
    await stub.Announce(pb.AnnounceRequest(agent_id="a", added=[content_ok()]), timeout=10)
    before = _rss_mb()
    reqs = [pb.LocateRequest(name="ok") if i % 2 else pb.LocateRequest(sha256=bytes(32))
            for i in range(2000)]
    t0 = time.monotonic()
    codes = await asyncio.gather(*(code(stub.Locate(r, timeout=60)) for r in reqs))
    elapsed = time.monotonic() - t0
    # (before MAX_PENDING, gRPC core CANCELLED ~10% of them)
    assert set(codes) <= {Code.OK, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}, set(codes)
    assert codes.count(Code.OK) >= 1
    async with grpc.aio.insecure_channel(tracker.address) as ch:
        t1 = time.monotonic()
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - t1 < 2
    assert elapsed < 60
    assert _rss_mb() - before < 300, "memory bounded (client and server share this process)"


class _SlowStore:
    """A store whose name lookups take a while: calls pile up in flight."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)

    async def locate_name(self, name: str, max_contents: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.5)
        return await self._inner.locate_name(name, max_contents)


async def test_calls_past_the_concurrency_cap_are_resource_exhausted(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(server, "MAX_CONCURRENT_RPCS", 8)
    store = await SqliteStore.open(str(tmp_path / "t.db"), FakeClock())
    running = await server.start(TrackerConfig(listen="127.0.0.1:0"),
                                 store=_SlowStore(store), clock=FakeClock())  # type: ignore[arg-type]
    try:
        async with grpc.aio.insecure_channel(running.address) as ch:
            s = pb_grpc.TrackerStub(ch)
            codes = await asyncio.gather(*(code(s.Locate(pb.LocateRequest(name="x"), timeout=30))
                                           for _ in range(40)))
            assert codes.count(Code.RESOURCE_EXHAUSTED) >= 20
            assert set(codes) == {Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}
            await still_up(s)
    finally:
        await running.stop(grace=1)
        await store.close()
