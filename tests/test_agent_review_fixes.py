"""Regression tests for the agent review's defects: swarm registration limits, the local
APIs' cross-site guard, background fetch names and caps. Real agents on 127.0.0.1:0."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from agent.app import RunningAgent, start
from agent.config import AgentConfig
from common import agent_api
from common.identity import Identity, piece_size_for, root_of

PIECE = 256 * 1024


@dataclass
class Agent:
    agent: RunningAgent
    dir: str
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.agent.url

    async def post(self, path: str, doc: object, **headers: str) -> tuple[int, dict]:
        async with self.http.post(self.url + path, json=doc, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        async with self.http.get(self.url + path, headers=headers) as r:
            return r.status, await r.read()


async def _start(tmp_path, **cfg: object) -> RunningAgent:
    d = tmp_path / "share"
    d.mkdir(exist_ok=True)
    cfg = {"settle_seconds": 0, "rescan_seconds": 0.2, "hash_workers": 1, **cfg}
    config = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                         **cfg)  # type: ignore[arg-type]
    return await start(config, report=False)


@pytest.fixture
async def agent(tmp_path) -> AsyncIterator[Agent]:
    a = await _start(tmp_path)
    async with aiohttp.ClientSession() as http:
        yield Agent(a, str(tmp_path / "share"), http)
    await a.stop()


def identity_of(data: bytes) -> tuple[Identity, bytes]:
    ps = piece_size_for(len(data))
    pieces = b"".join(hashlib.sha256(data[i:i + ps]).digest()
                      for i in range(0, len(data), ps)) or hashlib.sha256(b"").digest()
    return Identity(len(data), hashlib.sha256(data).digest(), ps, root_of(ps, pieces)), pieces


def registration(data: bytes, path: str, name: str = "thing.bin", have: bytes | None = None
                 ) -> dict:
    ident, pieces = identity_of(data)
    doc = {"sha256": ident.sha256.hex(), "size": ident.size, "piece_size": ident.piece_size,
           "root": ident.root.hex(), "pieces": base64.b64encode(pieces).decode(),
           "name": name, "path": path}
    if have is not None:
        doc["have"] = base64.b64encode(have).decode()
    return doc


# ---- 1. /local/swarm serves only downloads in progress under shareable names ----------

async def test_swarm_registration_refuses_hidden_and_non_part_files(agent: Agent) -> None:
    secret = b"API_KEY=hunter2\n" * 100
    d = agent.dir
    pathlib.Path(os.path.join(d, ".env")).write_bytes(secret)
    os.makedirs(os.path.join(d, ".git"))
    pathlib.Path(os.path.join(d, ".git", "config")).write_bytes(secret)
    pathlib.Path(os.path.join(d, ".git", "x.part")).write_bytes(secret)
    pathlib.Path(os.path.join(d, "notes.txt")).write_bytes(secret)
    pathlib.Path(os.path.join(d, ".hidden.part")).write_bytes(secret)
    for rel in (".env", ".git/config", ".git/x.part", "notes.txt", ".hidden.part"):
        status, answer = await agent.post(agent_api.LOCAL_SWARM,
                                          registration(secret, os.path.join(d, rel)))
        assert status == 403, (rel, answer)
    assert not agent.agent.swarm.downloads
    sha = hashlib.sha256(secret).hexdigest()
    status, _ = await agent.get(f"/swarm/{sha}")
    assert status == 404


async def test_swarm_complete_must_name_the_registered_file(agent: Agent) -> None:
    data = os.urandom(3 * PIECE)
    part = os.path.join(agent.dir, "thing.bin.part")
    pathlib.Path(part).write_bytes(data)
    pathlib.Path(os.path.join(agent.dir, ".env")).write_bytes(bytes(len(data)))
    pathlib.Path(os.path.join(agent.dir, "other.bin")).write_bytes(bytes(len(data)))
    status, answer = await agent.post(agent_api.LOCAL_SWARM, registration(data, part))
    assert status == 200, answer
    sha = hashlib.sha256(data).hexdigest()
    for other in (".env", "other.bin"):
        status, answer = await agent.post(f"{agent_api.LOCAL_SWARM}/{sha}",
                                          {"complete": os.path.join(agent.dir, other)})
        assert status == 403, (other, answer)
    # The same file under a hidden name is refused too.
    os.rename(part, os.path.join(agent.dir, ".thing.bin"))
    status, answer = await agent.post(f"{agent_api.LOCAL_SWARM}/{sha}",
                                      {"complete": os.path.join(agent.dir, ".thing.bin")})
    assert status == 403, answer
    os.rename(os.path.join(agent.dir, ".thing.bin"), os.path.join(agent.dir, "thing.bin"))
    status, answer = await agent.post(f"{agent_api.LOCAL_SWARM}/{sha}",
                                      {"complete": os.path.join(agent.dir, "thing.bin")})
    assert status == 200, answer
    status, body = await agent.get(f"/swarm/{sha}")
    assert status == 200 and body == data


async def test_swarm_never_serves_bytes_that_do_not_match_the_piece_list(agent: Agent) -> None:
    secret = os.urandom(3 * PIECE)
    claimed = os.urandom(3 * PIECE)  # an identity the caller made up for the file
    part = os.path.join(agent.dir, "thing.bin.part")
    pathlib.Path(part).write_bytes(secret)
    status, answer = await agent.post(agent_api.LOCAL_SWARM,
                                      registration(claimed, part, have=b"\xe0"))
    assert status == 200, answer
    sha = hashlib.sha256(claimed).hexdigest()
    status, body = await agent.get(f"/swarm/{sha}", Range=f"bytes=0-{PIECE - 1}")
    assert status == 416 and secret[:100] not in body
    status, bits = await agent.get(f"/swarm/{sha}/have")
    assert status == 200 and bits == b"\x60"  # piece 0 no longer claimed
    # Pieces that do match are served (checked once).
    pathlib.Path(part).write_bytes(secret[:PIECE] + claimed[PIECE:])  # same inode
    status, body = await agent.get(f"/swarm/{sha}", Range=f"bytes={PIECE}-{3 * PIECE - 1}")
    assert status == 206 and body == claimed[PIECE:]


# ---- 2. the local pages and APIs refuse cross-site and DNS-rebound requests ------------

async def test_local_apis_refuse_foreign_hosts_origins_and_non_json_posts(agent: Agent) -> None:
    import socket

    data = os.urandom(2 * PIECE)
    part = os.path.join(agent.dir, "thing.bin.part")
    pathlib.Path(part).write_bytes(data)
    doc = registration(data, part)
    port = agent.agent.port
    import json as _json
    # A no-cors fetch from a web page: text/plain (or a form type), the page's Origin.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": ctype} if ctype else {}
        async with agent.http.post(agent.url + agent_api.LOCAL_SWARM,
                                   data=_json.dumps(doc).encode(),
                                   headers=headers, skip_auto_headers=["Content-Type"]) as r:
            assert r.status == 415, (ctype, await r.text())
    status, answer = await agent.post(agent_api.LOCAL_SWARM, doc, Origin="http://evil.example")
    assert status == 403 and "cross-site" in answer["error"]
    status, answer = await agent.post(agent_api.LOCAL_SWARM, doc,
                                      Host=f"rebound.example:{port}")
    assert status == 403 and "Host" in answer["error"]
    assert not agent.agent.swarm.downloads
    sha = hashlib.sha256(data).hexdigest()
    status, answer = await agent.post(agent_api.LOCAL_SWARM, doc)  # mfetch's own request
    assert status == 200, answer
    async with agent.http.delete(f"{agent.url}{agent_api.LOCAL_SWARM}/{sha}",
                                 headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403
    assert agent.agent.swarm.downloads
    # DNS rebinding: a page at rebound.example, now resolving to 127.0.0.1, reads nothing.
    for path in ("/status", "/api/status", "/metrics", "/fetches", "/api/fetches"):
        status, body = await agent.get(path, Host=f"rebound.example:{port}")
        assert status == 403, (path, body[:200])
        # By IP address (Prometheus scrapes so), localhost or this machine's name: served.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"{socket.gethostname()}:{port}",
                     "127.0.0.1"):
            status, body = await agent.get(path, Host=host)
            assert status == 200, (path, host, body[:200])
    # The data side is not affected.
    status, body = await agent.get("/healthz", Host="anything.example")
    assert status == 200


# ---- 3. background fetches of one name never share NAME.part ---------------------------

async def _until(agent: Agent, fid: str, check, what: str, timeout: float = 60.0) -> dict:
    import asyncio
    import time
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        async with agent.http.get(f"{agent.url}/api/fetches/{fid}") as r:
            last = await r.json()
        if check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"fetch never {what}: {last}")


async def test_a_second_fetch_of_a_name_in_use_is_refused_and_cancel_keeps_the_others_files(
        agent: Agent) -> None:
    from tests.faulty import FaultyServer

    data = os.urandom(3 * 1024 * 1024 + 17)
    part = os.path.join(agent.dir, "file.bin.part")
    with FaultyServer(data, trickle=400_000) as src:
        status, a = await agent.post("/api/fetches", {"targets": [src.url]})
        assert status == 201, a
        await _until(agent, a["id"], lambda f: f["bytes"] >= 512 * 1024, "got two pieces")
        status, paused = await agent.post(f"/api/fetches/{a['id']}/pause", {})
        assert status == 200 and paused["state"] == "paused"
        verified = pathlib.Path(part[:-5] + ".mfetch").read_bytes()
        # The same URL again: its name is known only once planned; it fails there.
        status, b = await agent.post("/api/fetches", {"targets": [src.url]})
        assert status == 201, b
        b = await _until(agent, b["id"], lambda f: f["state"] == "failed", "failed")
        assert f"fetch {a['id']} (paused) is already fetching file.bin" in b["error"]
        assert pathlib.Path(part[:-5] + ".mfetch").read_bytes() == verified  # untouched
        status, _ = await agent.post(f"/api/fetches/{b['id']}/resume", {})
        assert status == 409
        status, cancelled = await agent.post(f"/api/fetches/{b['id']}/cancel", {})
        assert status == 200 and cancelled["state"] == "cancelled"
        assert os.path.exists(part) and os.path.exists(part[:-5] + ".mfetch")
        # A resumes from its own pieces and finishes.
        status, _ = await agent.post(f"/api/fetches/{a['id']}/resume", {})
        assert status == 200
        await _until(agent, a["id"], lambda f: f["state"] == "done", "finished")
    assert pathlib.Path(agent.dir, "file.bin").read_bytes() == data


async def test_a_name_held_by_a_paused_fetch_is_refused_at_start(agent: Agent) -> None:
    from agent.downloads import Download, State

    downloads = agent.agent.downloads
    assert downloads is not None
    held = Download("aaaaaaaaaaaa", ("x.iso",), None, name="x.iso", state=State.PAUSED,
                    owns_part=True)
    downloads.items[held.id] = held
    status, answer = await agent.post("/api/fetches", {"targets": ["x.iso"]})
    assert status == 409 and "aaaaaaaaaaaa" in answer["error"], answer
    held.state = State.FAILED  # failed, its partial files kept: still its name
    status, answer = await agent.post("/api/fetches", {"targets": ["x.iso"]})
    assert status == 409, answer


# ---- 8. the number of fetches not ended is bounded --------------------------------------

async def test_fetches_not_ended_are_capped_with_429(agent: Agent) -> None:
    from agent.downloads import MAX_OPEN, Download, State

    downloads = agent.agent.downloads
    assert downloads is not None
    for i in range(MAX_OPEN):
        d = Download(f"p{i:011d}", (f"n{i}.iso",), None, name=f"n{i}.iso", state=State.PAUSED)
        downloads.items[d.id] = d
    failed = Download("f00000000000", ("gone.iso",), None, name="gone.iso", state=State.FAILED)
    downloads.items[failed.id] = failed
    status, answer = await agent.post("/api/fetches", {"targets": ["http://127.0.0.1:9/x.iso"]})
    assert status == 429 and f"{MAX_OPEN} fetches" in answer["error"], answer
    status, answer = await agent.post(f"/api/fetches/{failed.id}/resume", {})
    assert status == 429, answer
    status, _ = await agent.post("/api/fetches/p00000000000/cancel", {})
    assert status == 200
    status, answer = await agent.post("/api/fetches", {"targets": ["http://127.0.0.1:9/x.iso"]})
    assert status == 201, answer


# ---- 4. the per-client connection cap covers /swarm/ -----------------------------------

async def test_agent_refuses_one_swarm_request_too_many_from_a_client(tmp_path) -> None:
    import asyncio

    a = await _start(tmp_path, upload_rate="256K", max_client_connections=2)
    try:
        async with aiohttp.ClientSession() as http:
            agent = Agent(a, str(tmp_path / "share"), http)
            data = os.urandom(8 * PIECE)
            part = os.path.join(agent.dir, "big.bin.part")
            await asyncio.to_thread(pathlib.Path(part).write_bytes, data)
            status, answer = await agent.post(agent_api.LOCAL_SWARM,
                                              registration(data, part, have=b"\xff"))
            assert status == 200, answer
            url = f"{agent.url}/swarm/{hashlib.sha256(data).hexdigest()}"
            rng = {"Range": f"bytes=0-{len(data) - 1}"}
            slow = [await http.get(url, headers=rng) for _ in range(2)]  # both throttled
            assert [r.status for r in slow] == [206, 206]
            async with http.get(url, headers=rng) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
            for resp in slow:
                resp.close()
    finally:
        await a.stop()


# ---- 6. absurd numbers and paths are a 400 with one line, never a 500 -----------------

async def test_swarm_api_answers_absurd_input_with_400(agent: Agent) -> None:
    data = os.urandom(2 * PIECE)
    part = os.path.join(agent.dir, "thing.bin.part")
    await asyncio_to_thread(pathlib.Path(part).write_bytes, data)
    doc = registration(data, part)
    raw = json.dumps({**doc, "size": 0}).replace('"size": 0', '"size": 1e400').encode()
    async with agent.http.post(agent.url + agent_api.LOCAL_SWARM, data=raw,
                               headers={"Content-Type": "application/json"}) as r:
        text = await r.text()
        assert r.status == 400 and "Traceback" not in text, text
        assert len(text.strip().splitlines()) == 1
    status, answer = await agent.post(agent_api.LOCAL_SWARM, doc)
    assert status == 200, answer
    sha = hashlib.sha256(data).hexdigest()
    for bad in ("/x\u0000y", agent.dir + "/a\udc80b", "/" + "\u2028"):
        async with agent.http.post(f"{agent.url}{agent_api.LOCAL_SWARM}/{sha}",
                                   data=json.dumps({"complete": bad}).encode(),
                                   headers={"Content-Type": "application/json"}) as r:
            text = await r.text()
            assert r.status == 400 and "Traceback" not in text, (bad, text)
            assert len(text.strip().splitlines()) == 1
    async with agent.http.post(agent.url + agent_api.LOCAL_SWARM, data=b"[" * 200_000,
                               headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400


async def asyncio_to_thread(fn, *args):
    import asyncio
    return await asyncio.to_thread(fn, *args)


# ---- 5. completed swarm downloads do not pile up ---------------------------------------

async def _register_and_complete(agent: Agent, name: str, data: bytes) -> str:
    part = os.path.join(agent.dir, name + ".part")
    await asyncio_to_thread(pathlib.Path(part).write_bytes, data)
    status, answer = await agent.post(agent_api.LOCAL_SWARM,
                                      registration(data, part, name=name, have=b"\xc0"))
    assert status == 200, answer
    os.rename(part, os.path.join(agent.dir, name))
    sha = hashlib.sha256(data).hexdigest()
    status, answer = await agent.post(f"{agent_api.LOCAL_SWARM}/{sha}",
                                      {"complete": os.path.join(agent.dir, name)})
    assert status == 200, answer
    return sha


async def test_completed_swarm_downloads_leave_room_and_are_dropped(tmp_path, monkeypatch
                                                                    ) -> None:
    from agent import swarm as swarm_mod
    from tests.agent_helpers import eventually

    monkeypatch.setattr(swarm_mod, "MAX_DOWNLOADS", 2)
    monkeypatch.setattr(swarm_mod, "PRUNE_SECONDS", 0.1, raising=False)
    # A slow rescan: the completed files are not in the inventory for a while.
    a = await _start(tmp_path, rescan_seconds=3600)
    try:
        async with aiohttp.ClientSession() as http:
            agent = Agent(a, str(tmp_path / "share"), http)
            await eventually(lambda: a.inventory.scans >= 1, what="first scan")
            withdrawn: list[str] = []
            a.swarm.on_change = lambda path, ident, have: (
                withdrawn.append(path) if have is None else None)
            first = await _register_and_complete(agent, "one.bin", os.urandom(2 * PIECE))
            await _register_and_complete(agent, "two.bin", os.urandom(2 * PIECE))
            # Two completed: a download in progress still gets in.
            data = os.urandom(2 * PIECE)
            part = os.path.join(agent.dir, "three.bin.part")
            await asyncio_to_thread(pathlib.Path(part).write_bytes, data)
            status, answer = await agent.post(agent_api.LOCAL_SWARM,
                                              registration(data, part, name="three.bin"))
            assert status == 200, answer
            # A finished file deleted is no longer served nor announced.
            os.unlink(os.path.join(agent.dir, "one.bin"))
            await eventually(lambda: bytes.fromhex(first) not in a.swarm.downloads,
                             what="the deleted file dropped")
            status, _ = await agent.get(f"/swarm/{first}")
            assert status == 404
            assert any(first in p for p in withdrawn)
            # Once the inventory holds two.bin, its registration goes too.
            await a.inventory.scan()
            await eventually(lambda: all(not d.complete for d in a.swarm.downloads.values()),
                             what="two.bin dropped once the inventory holds it")
            assert len(a.swarm.downloads) == 1 and len(withdrawn) == 2
    finally:
        await a.stop()


# ---- 7. a finished fetch never replaces a file that appeared meanwhile -----------------

async def test_a_finished_fetch_does_not_replace_a_file_that_appeared(agent: Agent) -> None:
    from tests.faulty import FaultyServer

    data = os.urandom(1024 * 1024 + 17)
    out = pathlib.Path(agent.dir, "file.bin")
    with FaultyServer(data, trickle=400_000) as src:
        status, f = await agent.post("/api/fetches", {"targets": [src.url]})
        assert status == 201, f
        await _until(agent, f["id"], lambda f: f["bytes"] > 0, "started")
        await asyncio_to_thread(out.write_bytes, b"mine, written meanwhile")
        failed = await _until(agent, f["id"], lambda f: f["state"] in ("failed", "done"),
                              "ended")
        assert failed["state"] == "failed", failed
        assert "appeared in the shared folder" in failed["error"]
        assert out.read_bytes() == b"mine, written meanwhile"
        assert pathlib.Path(agent.dir, "file.bin.part").read_bytes() == data
        # Once the name is free again, resume finishes it (the pieces are all verified).
        out.unlink()
        status, _ = await agent.post(f"/api/fetches/{f['id']}/resume", {})
        assert status == 200
        await _until(agent, f["id"], lambda f: f["state"] == "done", "finished")
    assert out.read_bytes() == data


async def test_a_finished_stream_does_not_replace_a_file_that_appeared(agent: Agent) -> None:
    import asyncio

    from aiohttp import web

    from tests.servers import AppServer

    data = os.urandom(300_000)
    out = pathlib.Path(agent.dir, "s.bin")

    async def sizeless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked, no Content-Length: a stream
        await resp.prepare(request)
        if request.method == "GET":
            for i in range(0, len(data), 30_000):
                await resp.write(data[i:i + 30_000])
                await asyncio.sleep(0.1)
        return resp

    server = AppServer(sizeless)
    try:
        status, f = await agent.post("/api/fetches", {"targets": [server.url + "/s.bin"]})
        assert status == 201, f
        await _until(agent, f["id"], lambda f: f["state"] == "running", "started")
        await asyncio_to_thread(out.write_bytes, b"mine, written meanwhile")
        failed = await _until(agent, f["id"], lambda f: f["state"] in ("failed", "done"),
                              "ended")
    finally:
        server.close()
    assert failed["state"] == "failed", failed
    assert "appeared in the shared folder" in failed["error"]
    assert out.read_bytes() == b"mine, written meanwhile"
    status, cancelled = await agent.post(f"/api/fetches/{f['id']}/cancel", {})
    assert status == 200 and cancelled["state"] == "cancelled"
    assert os.listdir(agent.dir) == ["s.bin"]
