"""Background fetches on the agent: the JSON API on a real agent (127.0.0.1, port 0),
fetching from real servers on loopback (a trickling one keeps a fetch running)."""
from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from agent.app import RunningAgent, start
from agent.config import AgentConfig
from tests.agent_helpers import eventually
from tests.faulty import FaultyServer

DATA = os.urandom(3 * 1024 * 1024 + 17)  # 12+ pieces of 256 KiB


@dataclass
class Agent:
    agent: RunningAgent
    dir: str
    http: aiohttp.ClientSession

    async def api(self, path: str, body: object = None, **headers: str) -> tuple[int, dict]:
        url = self.agent.url + path
        if body is None:
            async with self.http.get(url, headers=headers) as r:
                return r.status, await r.json()
        async with self.http.post(url, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def fetch_state(self, fid: str) -> dict:
        status, f = await self.api(f"/api/fetches/{fid}")
        assert status == 200, f
        return f

    async def until(self, fid: str, check, what: str, timeout: float = 60.0) -> dict:
        last: dict = {}

        async def poll() -> bool:
            nonlocal last
            last = await self.fetch_state(fid)
            return bool(check(last))

        import asyncio
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await poll():
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"fetch never {what}: {last}")


@pytest.fixture
async def agent(tmp_path) -> AsyncIterator[Agent]:
    d = tmp_path / "share"
    d.mkdir()
    cfg = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                      settle_seconds=0, rescan_seconds=0.2, hash_workers=1)
    a = await start(cfg, report=False)
    async with aiohttp.ClientSession() as http:
        yield Agent(a, str(d), http)
    await a.stop()


async def test_fetch_by_url_lands_in_dir_and_is_shared(agent: Agent) -> None:
    with FaultyServer(DATA) as src:
        status, f = await agent.api("/api/fetches", {"targets": [src.url]})
        assert status == 201 and f["state"] in ("planning", "running"), f
        done = await agent.until(f["id"], lambda f: f["state"] == "done", "finished")
    assert done["progress"] == 1.0 and done["bytes"] == len(DATA)
    assert done["sources"][0]["url"] == src.url and done["sources"][0]["bytes"] >= len(DATA)
    path = os.path.join(agent.dir, "file.bin")
    assert done["path"] == path
    assert pathlib.Path(path).read_bytes() == DATA
    assert not [n for n in os.listdir(agent.dir) if n != "file.bin"]  # no .part, no .mfetch
    await eventually(lambda: agent.agent.inventory.entry("file.bin") is not None, what="shared")
    async with agent.http.get(agent.agent.url + "/files/file.bin") as r:
        assert r.status == 200
        assert r.headers["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    shared = await agent.fetch_state(f["id"])
    assert shared["shared"] is True


async def test_pause_keeps_the_part_resume_continues_cancel_deletes(agent: Agent) -> None:
    with FaultyServer(DATA, trickle=400_000) as src:
        _, f = await agent.api("/api/fetches", {"targets": [src.url]})
        fid = f["id"]
        await agent.until(fid, lambda f: f["bytes"] >= 512 * 1024, "got two pieces")
        status, paused = await agent.api(f"/api/fetches/{fid}/pause", {})
        assert status == 200 and paused["state"] == "paused"
        part = os.path.join(agent.dir, "file.bin.part")
        assert os.path.exists(part) and os.path.exists(part[:-5] + ".mfetch")
        assert 0 < paused["bytes"] < len(DATA) and paused["rate"] == 0
        sent = src.sent
        import asyncio
        await asyncio.sleep(1.0)
        assert src.sent - sent < 300 * 1024, "a paused fetch went on fetching"
        status, again = await agent.api(f"/api/fetches/{fid}/pause", {})
        assert status == 409 and "paused" in again["error"]

        status, resumed = await agent.api(f"/api/fetches/{fid}/resume", {})
        assert status == 200 and resumed["state"] in ("planning", "running")
        before = src.sent
        done = await agent.until(fid, lambda f: f["state"] == "done", "finished")
        # Resumed from the verified pieces, not from zero.
        assert src.sent - before < len(DATA) - paused["bytes"] + 512 * 1024
        assert pathlib.Path(agent.dir, "file.bin").read_bytes() == DATA
        assert done["progress"] == 1.0

        # Cancel: a second fetch of another name, stopped mid-way, leaves nothing behind.
        _, f2 = await agent.api("/api/fetches", {"targets": [src.url.replace("file.bin", "other.bin")]})
        await agent.until(f2["id"], lambda f: f["state"] == "running" and f["bytes"] > 0,
                          "started", timeout=60)
        status, cancelled = await agent.api(f"/api/fetches/{f2['id']}/cancel", {})
    assert status == 200 and cancelled["state"] == "cancelled"
    assert sorted(os.listdir(agent.dir)) == ["file.bin"]


async def test_bad_requests_get_one_line_errors(agent: Agent) -> None:
    cases = [
        ({"targets": []}, 400, "give a NAME"),
        ({"targets": ["ftp://x/y"]}, 400, "only http:// and https://"),
        ({"targets": ["a", "b"]}, 400, "one NAME at a time"),
        ({"targets": ["../etc/passwd"]}, 400, "not a plain file name"),
        ({"targets": ["http://me:secret@127.0.0.1:9/x"]}, 400, "user or password"),
        ({"targets": ["http://127.0.0.1:9/x"], "sha256": "zz"}, 400, "sha256"),
        ({"nothing": 1}, 400, "expected"),
    ]
    for body, status, text in cases:
        got, answer = await agent.api("/api/fetches", body)
        assert got == status and text in answer["error"], (body, answer)
        assert "\n" not in answer["error"]
    got, answer = await agent.api("/api/fetches/nope")
    assert got == 404
    async with agent.http.post(agent.agent.url + "/api/fetches", data="targets=http://x/y",
                               headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 415  # a cross-site form cannot send JSON without a preflight
    got, answer = await agent.api("/api/fetches", {"targets": ["http://127.0.0.1:9/x"]},
                                  Origin="http://evil.example")
    assert got == 403 and "cross-site" in answer["error"]
    # A site that rebinds its name to 127.0.0.1 is same-origin to itself: its Host gives it away.
    port = agent.agent.port
    got, answer = await agent.api("/api/fetches", {"targets": ["http://127.0.0.1:9/x"]},
                                  Host=f"evil.example:{port}",
                                  Origin=f"http://evil.example:{port}")
    assert got == 403 and "Host" in answer["error"]
    got, _ = await agent.api("/api/fetches", Host=f"localhost:{port}")
    assert got == 200
    _, listed = await agent.api("/api/fetches")
    assert listed == {"fetches": []}  # nothing was started by any of these


async def test_unreachable_source_fails_with_its_reason(agent: Agent) -> None:
    _, f = await agent.api("/api/fetches", {"targets": ["http://127.0.0.1:9/file.bin"]})
    failed = await agent.until(f["id"], lambda f: f["state"] == "failed", "failed")
    assert "cannot connect" in failed["error"]


async def test_fetches_are_refused_to_addresses_not_allowed(tmp_path) -> None:
    d = tmp_path / "share"
    d.mkdir()
    cfg = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                      fetch_allow=("10.0.0.0/8",))
    a = await start(cfg, report=False)
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in (("GET", "/fetches"), ("GET", "/api/fetches"),
                                 ("POST", "/api/fetches")):
                async with http.request(method, a.url + path,
                                        json={"targets": ["http://127.0.0.1:9/x"]}) as r:
                    assert r.status == 403, (method, path)
            async with http.get(a.url + "/healthz") as r:
                assert r.status == 200  # the data side is unaffected
    finally:
        await a.stop()
    assert os.listdir(d) == []


async def test_mfetch_background_hands_the_fetch_to_the_agent(agent: Agent) -> None:
    import asyncio

    from tests import procs as _procs

    mfetch = _procs.command("mfetch")
    with FaultyServer(DATA) as src:
        r = await asyncio.to_thread(_procs.run, [mfetch, "--background", "--agent",
                                                 agent.agent.url, src.url])
        assert r.returncode == 0, r.stderr
        fid = r.stdout.strip()
        assert f"{agent.agent.url}/fetches" in r.stderr and fid in r.stderr
        done = await agent.until(fid, lambda f: f["state"] == "done", "finished")
    assert done["targets"] == [src.url]
    assert pathlib.Path(agent.dir, "file.bin").read_bytes() == DATA
    # No agent there: one clear line, exit 1. A refused fetch: the agent's reason.
    r = await asyncio.to_thread(_procs.run, [mfetch, "--background", "--agent",
                                             "http://127.0.0.1:9", src.url])
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "no agent answers at http://127.0.0.1:9" in r.stderr
    r = await asyncio.to_thread(_procs.run, [mfetch, "--background", "--agent",
                                             agent.agent.url, "../x"])
    assert r.returncode == 1 and "refused the fetch: '../x' is not a plain file name" in r.stderr
    # Flags the agent would not honour are refused here, not silently dropped.
    r = await asyncio.to_thread(_procs.run, [mfetch, "--background", "--agent",
                                             agent.agent.url, "-u", "me:pw", "--limit-rate",
                                             "1M", src.url])
    assert r.returncode == 1 and "-u, --limit-rate would be ignored" in r.stderr, r.stderr


async def test_a_restarted_agent_lists_its_fetches_paused_and_resumes_them(tmp_path) -> None:
    d = tmp_path / "share"
    d.mkdir()
    cfg = AgentConfig(dir=str(d), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                      settle_seconds=0, rescan_seconds=0.2, hash_workers=1)
    with FaultyServer(DATA, trickle=400_000) as src:
        first = await start(cfg, report=False)
        try:
            async with aiohttp.ClientSession() as http:
                a = Agent(first, str(d), http)
                _, f = await a.api("/api/fetches", {"targets": [src.url]})
                await a.until(f["id"], lambda f: f["bytes"] >= 512 * 1024, "got two pieces")
        finally:
            await first.stop()  # stops the fetch as a pause would
        assert (d / "file.bin.part").exists()
        second = await start(cfg, report=False)
        try:
            async with aiohttp.ClientSession() as http:
                b = Agent(second, str(d), http)
                back = await b.fetch_state(f["id"])
                assert back["state"] == "paused" and back["bytes"] >= 512 * 1024, back
                sent = src.sent
                status, _ = await b.api(f"/api/fetches/{f['id']}/resume", {})
                assert status == 200
                await b.until(f["id"], lambda f: f["state"] == "done", "finished")
                assert src.sent - sent < len(DATA) - 256 * 1024  # continued, not restarted
        finally:
            await second.stop()
    assert (d / "file.bin").read_bytes() == DATA


def test_mfetch_background_sends_the_agent_token_when_given(tmp_path) -> None:
    """An agent with an HTTP token wants it from any client but loopback: --background
    sends the agents' token (--agent-token-file) with the hand-over."""
    from aiohttp import web

    from tests import procs as _procs
    from tests.servers import AppServer

    seen: list[str | None] = []

    async def fetches(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"id": "abc123", "state": "planning"}, status=201)

    token = tmp_path / "http.token"
    token.write_text("bg-token-0123456789abcdef\n")
    server = AppServer(fetches)
    try:
        base = [_procs.command("mfetch"), "--background", "--agent", server.url,
                "http://example.invalid/f.bin"]
        assert _procs.run(base).returncode == 0
        r = _procs.run([*base, "--agent-token-file", str(token)])
        assert r.returncode == 0 and r.stdout.strip() == "abc123", r.stderr
    finally:
        server.close()
    assert seen == [None, "Bearer bg-token-0123456789abcdef"]
