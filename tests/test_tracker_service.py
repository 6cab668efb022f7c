"""The tracker API through a real in-process gRPC server on 127.0.0.1:0 and TrackerClient."""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.api import tracker_pb2 as pb
from common.api import tracker_pb2_grpc as pb_grpc
from common.errors import NotFoundError, TrackerError
from common.identity import Identity
from common.tracker_client import Candidate, SourceKind, TrackerClient
from tests.tracker_fakes import FakeClock, ident
from tracker import server
from tracker.config import MirrorSpec, TrackerConfig
from tracker.redis_store import RedisStore

ISO = ident("iso", 3_000_000)
OTHER_ISO = ident("other-iso", 3_000_001)
TAR = ident("tar")


@pytest.fixture(params=["sqlite", "redis"])
async def tracker(request, tmp_path: pathlib.Path):
    clock = FakeClock()
    cfg = TrackerConfig(listen="127.0.0.1:0", db=str(tmp_path / "t.db"))
    store = None
    if request.param == "redis":
        store = await RedisStore.open(request.getfixturevalue("redis_url"), clock,
                                      redis_time=False)
    running = await server.start(cfg, store=store, clock=clock)
    running.clock = clock  # type: ignore[attr-defined]
    yield running
    await running.stop(grace=1)
    if store is not None:
        await store.close()


@pytest.fixture
async def client(tracker):
    async with TrackerClient(tracker.address, timeout=20) as c:
        yield c


async def _agent(client: TrackerClient, agent_id: str, holdings: dict[str, Identity]) -> None:
    await client.register(agent_id, f"http://10.0.0.{len(agent_id)}:7070")
    await client.announce(agent_id, holdings, replace=True)


async def test_register_returns_lease_settings(client) -> None:
    lease = await client.register("a1", "http://10.0.0.1:7070")
    assert (lease.lease_seconds, lease.heartbeat_seconds) == (30, 10)
    assert await client.heartbeat("a1") == 30


async def test_announce_whole_then_changes_and_locate(client) -> None:
    await client.register("a1", "http://10.0.0.1:7070/")
    assert await client.announce("a1", {"iso/ubuntu.iso": ISO, "x.tar": TAR}, replace=True) == 2
    (cand,) = await client.locate(name="ubuntu.iso")
    assert cand.content == ISO and cand.name == "ubuntu.iso" and cand.live_holders == 1
    (src,) = cand.sources
    assert src.kind is SourceKind.AGENT and src.agent_id == "a1"
    assert src.url == "http://10.0.0.1:7070/files/iso/ubuntu.iso"
    assert src.pieces_url == f"http://10.0.0.1:7070/pieces/{ISO.sha256.hex()}"
    assert (await client.locate(name="iso/ubuntu.iso"))[0].content == ISO
    assert (await client.locate(sha256=TAR.sha256))[0].content == TAR

    assert await client.announce("a1", {"y.tar": TAR}, removed=["x.tar"]) == 2
    with pytest.raises(NotFoundError):
        await client.locate(name="x.tar")
    (cand,) = await client.locate(name="y.tar")
    assert cand.sources[0].url.endswith("/files/y.tar")


async def test_disagreeing_contents_are_two_candidates_by_holders(client) -> None:
    await _agent(client, "a1", {"ubuntu.iso": ISO})
    await _agent(client, "a22", {"dl/ubuntu.iso": OTHER_ISO})
    await _agent(client, "a333", {"ubuntu.iso": OTHER_ISO})
    first, second = await client.locate(name="ubuntu.iso")
    assert (first.content, first.live_holders) == (OTHER_ISO, 2)
    assert {s.agent_id for s in first.sources} == {"a22", "a333"}
    assert (second.content, second.live_holders) == (ISO, 1)


async def test_same_content_under_other_name_is_a_source(client) -> None:
    await _agent(client, "a1", {"ubuntu.iso": ISO})
    await _agent(client, "a22", {"renamed.iso": ISO})
    (cand,) = await client.locate(name="ubuntu.iso")
    assert cand.live_holders == 2


async def test_lapsed_lease_drops_out_and_heartbeat_says_register_again(tracker, client) -> None:
    await _agent(client, "a1", {"ubuntu.iso": ISO})
    await _agent(client, "a22", {"ubuntu.iso": ISO})
    tracker.clock.advance(20)
    await client.heartbeat("a22")
    tracker.clock.advance(15)  # a1's lease (30 s) lapsed, a22's was renewed at 20 s
    (cand,) = await client.locate(name="ubuntu.iso")
    assert [s.agent_id for s in cand.sources] == ["a22"]
    with pytest.raises(NotFoundError, match="register again"):
        await client.heartbeat("a1")
    with pytest.raises(NotFoundError, match="register again"):
        await client.announce("a1", {"new.iso": TAR})
    await client.register("a1", "http://10.0.0.2:7070")  # holdings kept while lapsed
    assert (await client.locate(name="ubuntu.iso"))[0].live_holders == 2


async def test_unknown_agent(client) -> None:
    with pytest.raises(NotFoundError, match="unknown agent; register again"):
        await client.heartbeat("nobody")
    with pytest.raises(NotFoundError, match="unknown agent"):
        await client.announce("nobody", {"a": TAR}, replace=True)


async def test_locate_nothing_is_not_found(client) -> None:
    with pytest.raises(NotFoundError):
        await client.locate(name="nothing.iso")
    with pytest.raises(NotFoundError):
        await client.locate(sha256=bytes(32))


async def test_mirrors_join_candidates_and_stand_alone(client) -> None:
    await _agent(client, "a1", {"ubuntu.iso": ISO})
    await client.add_mirror("https://m.example/pub/ubuntu.iso", ISO.sha256, size=ISO.size)
    await client.add_mirror("https://m.example/pub/only%20mirror.tar", TAR.sha256)
    (cand,) = await client.locate(name="ubuntu.iso")
    assert [s.kind for s in cand.sources] == [SourceKind.AGENT, SourceKind.MIRROR]
    assert cand.sources[1].pieces_url == "" and cand.live_holders == 1
    (cand,) = await client.locate(sha256=TAR.sha256)
    assert cand.content == Identity(0, TAR.sha256, 0, b"") and not cand.has_pieces
    assert cand.name == "only mirror.tar" and cand.live_holders == 0
    (cand,) = await client.locate(name="only mirror.tar")
    assert cand.sources[0].url == "https://m.example/pub/only%20mirror.tar"
    mirrors = await client.list_mirrors()
    assert [m.name for m in mirrors] == ["only mirror.tar", "ubuntu.iso"]
    assert await client.remove_mirror("https://m.example/pub/only%20mirror.tar")
    assert not await client.remove_mirror("https://m.example/pub/only%20mirror.tar")
    with pytest.raises(NotFoundError):
        await client.locate(sha256=TAR.sha256)


async def test_configured_mirrors_are_upserted_at_start(tmp_path) -> None:
    spec = MirrorSpec("http://m/u.iso", ISO.sha256, "u.iso", 0)
    cfg = TrackerConfig(listen="127.0.0.1:0", db=str(tmp_path / "t.db"), mirrors=(spec,))
    running = await server.start(cfg)
    try:
        async with TrackerClient(running.address) as c:
            assert [m.url for m in await c.list_mirrors()] == ["http://m/u.iso"]
    finally:
        await running.stop(grace=1)


def _bad(h: Identity, **changes) -> Identity:
    return dataclasses.replace(h, **changes)


BAD_ANNOUNCEMENTS = {
    "short sha256": {"a.iso": _bad(TAR, sha256=b"x" * 31)},
    "long root": {"a.iso": _bad(TAR, root=b"x" * 33)},
    "wrong piece size": {"a.iso": _bad(TAR, piece_size=TAR.piece_size * 2)},
    "empty path": {"": TAR},
    "absolute path": {"/etc/passwd": TAR},
    "dotdot": {"a/../../b": TAR},
    "NUL": {"a\0b": TAR},
    "control char": {"a\nb": TAR},
    "overlong path": {"a/" * 2100 + "b": TAR},
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOUNCEMENTS))
async def test_malformed_announcement_is_invalid_argument(client, case) -> None:
    await client.register("a1", "http://10.0.0.1:7070")
    with pytest.raises(TrackerError) as err:
        await client.announce("a1", BAD_ANNOUNCEMENTS[case])
    assert not isinstance(err.value, NotFoundError)
    assert "internal" not in str(err.value), "a validation message, not a crash"
    assert await client.heartbeat("a1") == 30, "the server still answers"


async def _raw_code(address: str, method: str, request) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            await getattr(pb_grpc.TrackerStub(ch), method)(request, timeout=20)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method,request_", [
    ("Register", pb.RegisterRequest(agent_id="", base_url="http://h:1")),
    ("Register", pb.RegisterRequest(agent_id="x" * 129, base_url="http://h:1")),
    ("Register", pb.RegisterRequest(agent_id="a", base_url="ftp://h:1")),
    ("Register", pb.RegisterRequest(agent_id="a", base_url="http://h:99999")),
    ("Register", pb.RegisterRequest(agent_id="a", base_url="http://h:1/some/path")),
    ("Register", pb.RegisterRequest(agent_id="a", base_url="not a url")),
    ("Heartbeat", pb.HeartbeatRequest(agent_id="")),
    ("Announce", pb.AnnounceRequest(agent_id="a", removed=["../x"])),
    ("Announce", pb.AnnounceRequest(agent_id="a", added=[pb.Holding(path="a")])),
    ("Locate", pb.LocateRequest()),
    ("Locate", pb.LocateRequest(sha256=b"abc")),
    ("Locate", pb.LocateRequest(name="")),
    ("AddMirror", pb.AddMirrorRequest(mirror=pb.Mirror(url="file:///x", sha256=bytes(32)))),
    ("AddMirror", pb.AddMirrorRequest(mirror=pb.Mirror(url="http://h/x", sha256=bytes(3)))),
    ("AddMirror", pb.AddMirrorRequest(mirror=pb.Mirror(url="http://h/", sha256=bytes(32)))),
])
async def test_malformed_requests_are_invalid_argument(tracker, method, request_) -> None:
    assert await _raw_code(tracker.address, method, request_) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _raw_code(tracker.address, "ListMirrors", pb.ListMirrorsRequest()) \
        == grpc.StatusCode.OK


async def test_too_many_holdings_in_one_message(tracker, client) -> None:
    await client.register("a", "http://10.0.0.1:7070")
    holding = pb.Holding(path="a", content=pb.Content(size=TAR.size, sha256=TAR.sha256,
                                                      piece_size=TAR.piece_size, root=TAR.root))
    req = pb.AnnounceRequest(agent_id="a", added=[holding] * 100_001)
    assert await _raw_code(tracker.address, "Announce", req) == grpc.StatusCode.INVALID_ARGUMENT


async def test_large_inventory_announce(client) -> None:
    await client.register("a1", "http://10.0.0.1:7070")
    inv = {f"d/{i:06d}.bin": ident(str(i)) for i in range(20_000)}
    assert await client.announce("a1", inv, replace=True) == 20_000
    (cand,) = await client.locate(name="012345.bin")
    assert cand.content == inv["d/012345.bin"]


async def test_health_serving(tracker) -> None:
    async with grpc.aio.insecure_channel(tracker.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "mfetch.v1.Tracker"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=20)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unreachable_tracker_is_tracker_error() -> None:
    async with TrackerClient("127.0.0.1:1", timeout=20) as c:
        with pytest.raises(TrackerError, match="unreachable") as err:
            await c.list_mirrors()
    assert not isinstance(err.value, NotFoundError)


def test_candidate_type_is_frozen() -> None:
    c = Candidate(TAR, "x", (), 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.name = "y"  # type: ignore[misc]
    assert c.has_pieces and hashlib.sha256(b"tar").digest() == TAR.sha256
