"""Metrics, status JSON, `tracker status`/`agent status` and logs, through the real commands
(tracker, agents and mfetch as processes on loopback) and an in-process agent."""
from __future__ import annotations

import asyncio
import hashlib
import re

import aiohttp
import pytest
from prometheus_client import generate_latest

from agent import app as agent_app
from agent.config import AgentConfig
from agent.status import OBSERVER, is_loopback
from tests import procs as _procs
from tests.agent_helpers import eventually, write
from tests.obs_helpers import get, get_json, parse_metrics, scrape, tracker_http, value
from tests.servers import free_port
from tests.test_system import AGENT_FLAGS, MiB, make_file, mfetch, summary, wait_holders

LOG_LINE = re.compile(r"^ts=\S+Z level=(debug|info|warning|error|critical) logger=\S+ msg=")


def _agent_bytes(samples) -> float:
    return value(samples, "mfetch_agent_bytes_served_total")


@pytest.mark.system
def test_metrics_move_with_a_fetch_and_status_shows_it(procs, tmp_path):
    tracker = procs.tracker(tmp_path, "--http", "127.0.0.1:0")
    http = tracker_http(tracker)
    data = make_file(tmp_path / "origin" / "of.tar.gz", 8 * MiB, seed=5)
    agents = []
    for i in range(2):
        d = tmp_path / f"share{i}"
        d.mkdir()
        (d / "of.tar.gz").write_bytes(data)
        agents.append(procs.agent(d, tracker.address, tmp_path / f"st{i}", *AGENT_FLAGS))
    wait_holders(tracker.address, "of.tar.gz", 2)

    t0 = scrape(http)
    a0 = [scrape(a.address) for a in agents]
    assert value(t0, "mfetch_tracker_live_agents") == 2
    assert value(t0, "mfetch_tracker_contents") == 1
    assert value(t0, "mfetch_tracker_mirrors") == 0
    assert value(t0, "mfetch_tracker_registers_total") >= 2
    assert value(t0, "mfetch_tracker_announces_total", result="ok") >= 2

    out = tmp_path / "out"
    s = summary(mfetch("of.tar.gz", "--tracker", tracker.address, "-o", str(out), "--json"))
    assert out.read_bytes() == data

    t1 = scrape(http)
    a1 = [scrape(a.address) for a in agents]
    found = "mfetch_tracker_locates_total"
    assert value(t1, found, result="found") >= value(t0, found, result="found") + 1
    assert (value(t1, "mfetch_tracker_locate_seconds_count")
            >= value(t0, "mfetch_tracker_locate_seconds_count") + 1)
    served = sum(_agent_bytes(b) - _agent_bytes(a) for a, b in zip(a0, a1, strict=True))
    assert served >= len(data), "the agents served at least the whole file between scrapes"
    assert sum(src["bytes"] for src in s["sources"]) == len(data)
    assert sum(value(b, "mfetch_agent_requests_total", code="206")
               - value(a, "mfetch_agent_requests_total", code="206")
               for a, b in zip(a0, a1, strict=True)) >= 2
    assert all(value(b, "mfetch_agent_shared_files") == 1 for b in a1)
    assert all(value(b, "mfetch_agent_hashing_backlog") == 0 for b in a1)

    st = get_json(http + "/api/status")
    assert st["counts"] == {"live_agents": 2, "contents": 1, "mirrors": 0}
    assert len(st["agents"]) == 2
    assert all(0 <= a["last_heartbeat_seconds_ago"] <= 30 for a in st["agents"])
    (content,) = st["contents"]
    assert content["names"] == ["of.tar.gz"] and content["holder_count"] == 2
    assert content["sha256"] == hashlib.sha256(data).hexdigest()
    locate = next(e for e in st["recent_locates"] if e["query"] == "name of.tar.gz")
    assert locate["sources"] == 2 and locate["peer"]

    r = _procs.run([_procs.command("tracker"), "status", "--http", http])
    assert r.returncode == 0, r.stderr
    assert "2 live agents, 1 contents, 0 mirrors" in r.stdout
    assert "of.tar.gz" in r.stdout and "name of.tar.gz" in r.stdout
    r = _procs.run([_procs.command("agent"), "status", agents[0].address])
    assert r.returncode == 0, r.stderr
    assert "sharing 1 files (8.0 MiB)" in r.stdout and "(connected)" in r.stdout

    for p in (tracker, *agents):
        assert p.stop() == 0
        lines = [ln for ln in p.output().splitlines() if ln.strip()]
        logs = [ln for ln in lines if "listening on" not in ln]
        assert logs and all(LOG_LINE.match(ln) for ln in logs), "\n".join(lines)


def test_status_commands_say_when_nothing_answers(tmp_path):
    port = free_port()
    r = _procs.run([_procs.command("tracker"), "status", "--http", f"127.0.0.1:{port}"])
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"tracker: error: no tracker answers at http://127.0.0.1:{port}")
    r = _procs.run([_procs.command("agent"), "status", f"http://127.0.0.1:{port}"])
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"agent: error: no agent answers at http://127.0.0.1:{port}")


def test_tracker_http_can_be_off_and_a_bad_address_is_one_line(procs, tmp_path):
    tracker = procs.tracker(tmp_path, "--http", "off")
    assert tracker.stop() == 0
    assert "http listening" not in tracker.output()
    r = _procs.run([_procs.command("tracker"), "serve", "--listen", "127.0.0.1:0",
                    "--db", str(tmp_path / "t2.db"), "--http", "nowhere"])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "tracker: error: bad http address 'nowhere': expected HOST:PORT"], r.stderr
    busy = free_port()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen()
        r = _procs.run([_procs.command("tracker"), "serve", "--listen", "127.0.0.1:0",
                        "--db", str(tmp_path / "t3.db"), "--http", f"127.0.0.1:{busy}"])
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("tracker: error:")]
    assert errors == [(f"tracker: error: cannot listen for HTTP on 127.0.0.1:{busy}: "
                       "Address already in use")], r.stderr
    assert "Traceback" not in r.stderr


async def test_agent_shows_a_transfer_in_flight_and_counts_its_bytes(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    size = 32 * MiB
    write(share / "big.bin", b"\x01" * size)
    cfg = AgentConfig(dir=str(share), listen="127.0.0.1:0", state_dir=str(tmp_path / "st"),
                      settle_seconds=0, rescan_seconds=0.2)
    agent = await agent_app.start(cfg, report=False)
    try:
        await eventually(lambda: agent.inventory.entry("big.bin"), what="big.bin hashed")
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as client, \
                aiohttp.ClientSession(timeout=timeout) as other:
            async with client.get(f"{agent.url}/files/big.bin",
                                  headers={"Range": "bytes=1000-"}) as resp:
                assert resp.status == 206
                got = len(await resp.content.readexactly(64 * 1024))
                async with other.get(f"{agent.url}/api/status") as r:
                    st = await r.json()
                (t,) = st["transfers"]
                assert t["path"] == "big.bin" and t["client"] == "127.0.0.1"
                assert t["range"] == [1000, size] and t["sent"] >= got
                assert st["counts"]["transfers"] == 1
                assert st["counts"]["open_connections"] >= 2
                async with other.get(f"{agent.url}/metrics") as r:
                    m1 = parse_metrics(await r.text())
                v1 = value(m1, "mfetch_agent_bytes_served_total")
                assert value(m1, "mfetch_agent_active_transfers") == 1
                assert v1 >= got
                # Read past what had been sent at the first scrape: the counter must move.
                while got <= v1:
                    got += len(await resp.content.read(1024 * 1024))
                async with other.get(f"{agent.url}/metrics") as r:
                    m2 = parse_metrics(await r.text())
                assert value(m2, "mfetch_agent_bytes_served_total") >= got > v1
            observer = agent._runner.app[OBSERVER]
            await eventually(lambda: not observer.transfers, what="the transfer ends")
    finally:
        await agent.stop()


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.5.0.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    for addr in ("10.0.0.1", "192.168.1.2", "::ffff:10.0.0.1", "fe80::1%eth0", "", None, "x"):
        assert not is_loopback(addr), addr


async def test_agent_status_paths_refuse_other_hosts_unless_public(tmp_path):
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the route
            lan_ip = s.getsockname()[0]
    except OSError:
        pytest.skip("no non-loopback IPv4 address on this machine")
    if is_loopback(lan_ip):
        pytest.skip("no non-loopback IPv4 address on this machine")
    share = tmp_path / "share"
    share.mkdir()
    write(share / "f.txt", b"hello")
    for public, expected in ((False, 403), (True, 200)):
        cfg = AgentConfig(dir=str(share), listen="0.0.0.0:0", status_public=public,
                          state_dir=str(tmp_path / f"st{public}"), advertise="http://x:1")
        agent = await agent_app.start(cfg, report=False)
        try:
            for path in ("/status", "/api/status", "/metrics"):
                status, _, body = await asyncio.to_thread(
                    get, f"http://{lan_ip}:{agent.port}{path}")
                assert status == expected, (public, path, status, body)
            status, _, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{agent.port}/status")
            assert status == 200
            status, _, body = await asyncio.to_thread(
                get, f"http://{lan_ip}:{agent.port}/files/f.txt")
            assert (status, body) == (200, "hello"), "files are served to the LAN either way"
        finally:
            await agent.stop()


async def test_servicer_counts_outcomes_and_keeps_a_bounded_ring(tmp_path):
    from common.errors import MfetchError
    from common.tracker_client import TrackerClient
    from tests.tracker_fakes import ident
    from tracker import observe, server
    from tracker.config import TrackerConfig

    running = await server.start(TrackerConfig(listen="127.0.0.1:0", db=str(tmp_path / "t.db")))
    obs = running.observer
    assert obs is not None
    try:
        async with TrackerClient(running.address, timeout=30) as c:
            await c.register("a1", "http://10.0.0.1:7070")
            await c.announce("a1", {"x/of.iso": ident("iso")}, replace=True)
            await c.heartbeat("a1")
            assert await c.locate(name="of.iso")
            for _ in range(observe.RECENT_LOCATES + 5):
                with pytest.raises(MfetchError):
                    await c.locate(name="missing")
            with pytest.raises(MfetchError):
                await c.locate(name="../escape")
            with pytest.raises(MfetchError):
                await c.heartbeat("nobody")
        m = parse_metrics(generate_latest(obs.registry).decode())
        assert value(m, "mfetch_tracker_locates_total", result="found") == 1
        assert value(m, "mfetch_tracker_locates_total", result="not_found") == \
            observe.RECENT_LOCATES + 5
        assert value(m, "mfetch_tracker_locates_total", result="error") == 1
        assert value(m, "mfetch_tracker_locate_seconds_count") == observe.RECENT_LOCATES + 7
        assert value(m, "mfetch_tracker_announces_total", result="ok") == 1
        assert value(m, "mfetch_tracker_announced_holdings_total") == 1
        assert value(m, "mfetch_tracker_registers_total") == 1
        assert value(m, "mfetch_tracker_heartbeats_total", result="ok") == 1
        assert value(m, "mfetch_tracker_heartbeats_total", result="error") == 1
        assert len(obs.recent) == observe.RECENT_LOCATES, "the ring is bounded"
        assert obs.recent[0].query == "name ../escape" and obs.recent[0].sources == 0
        assert obs.recent[-1].query == "name missing"
        ov = await obs.overview()
        assert (ov.live_agents, ov.contents, ov.mirrors) == (1, 1, 0)
    finally:
        await running.stop(grace=1)


def test_agent_status_public_setting_layers(tmp_path, monkeypatch):
    from agent import config as agent_config

    monkeypatch.delenv("AGENT_STATUS_PUBLIC", raising=False)
    assert agent_config.load(None, {"dir": str(tmp_path)}).status_public is False
    monkeypatch.setenv("AGENT_STATUS_PUBLIC", "yes")
    assert agent_config.load(None, {"dir": str(tmp_path)}).status_public is True
    f = tmp_path / "a.yaml"
    f.write_text("status_public: false\n")
    monkeypatch.delenv("AGENT_STATUS_PUBLIC")
    assert agent_config.load(str(f), {"dir": str(tmp_path), "status_public": True}).status_public


async def test_hashing_backlog_is_shown_while_files_wait(tmp_path, monkeypatch):
    share = tmp_path / "share"
    share.mkdir()
    for i in range(3):
        write(share / f"f{i}.bin", bytes([i]) * 1000)
    cfg = AgentConfig(dir=str(share), listen="127.0.0.1:0", state_dir=str(tmp_path / "st"),
                      settle_seconds=0, rescan_seconds=0.2)
    gate = asyncio.Event()
    from agent.hashcache import HashCache
    real_hash = HashCache.hash

    async def gated(self, *args, **kw):  # hold every hash until the test has looked
        await gate.wait()
        return await real_hash(self, *args, **kw)
    monkeypatch.setattr(HashCache, "hash", gated)
    agent = await agent_app.start(cfg, report=False)
    try:
        await eventually(lambda: len(agent.inventory.hashing) == 3, what="3 files queued")
        code, _, body = await asyncio.to_thread(get, f"{agent.url}/metrics")
        assert code == 200
        assert value(parse_metrics(body), "mfetch_agent_hashing_backlog") == 3
        status = await asyncio.to_thread(get_json, f"{agent.url}/api/status")
        assert status["counts"]["hashing"] == 3 and status["counts"]["files"] == 0
        assert [(f["path"], f["state"], f["sha256"]) for f in status["files"]] == [
            (f"f{i}.bin", "hashing", None) for i in range(3)]
        gate.set()
        await eventually(lambda: len(agent.inventory.snapshot()) == 3, what="all hashed")
        code, _, body = await asyncio.to_thread(get, f"{agent.url}/metrics")
        assert code == 200
        assert value(parse_metrics(body), "mfetch_agent_hashing_backlog") == 0
        status = await asyncio.to_thread(get_json, f"{agent.url}/api/status")
        assert {f["state"] for f in status["files"]} == {"shared"}
    finally:
        gate.set()
        await agent.stop()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_tracker_status_json_and_metrics_over_either_store(backend, tmp_path, request):
    from common.tracker_client import TrackerClient
    from tests.tracker_fakes import ident
    from tracker import server, status_http
    from tracker.config import TrackerConfig
    from tracker.redis_store import RedisStore

    store = None
    if backend == "redis":
        store = await RedisStore.open(request.getfixturevalue("redis_url"))
    running = await server.start(TrackerConfig(listen="127.0.0.1:0", db=str(tmp_path / "t.db")),
                                 store=store)
    assert running.observer is not None
    http = await status_http.start(running.observer, "127.0.0.1:0",
                                   grpc_address=running.address, lease_seconds=30)
    try:
        async with TrackerClient(running.address, timeout=30) as c:
            for i in range(3):
                await c.register(f"agent{i}", f"http://10.0.0.{i}:7070")
                await c.announce(f"agent{i}", {f"d/{i}.iso": ident("iso"), "x": ident(f"x{i}")},
                                 replace=True)
            await c.add_mirror("http://m.example/iso", ident("iso").sha256, name="iso")
            await c.locate(name="x")
        st = await asyncio.to_thread(get_json, http.url + "/api/status")
        assert st["counts"] == {"live_agents": 3, "contents": 4, "mirrors": 1}
        assert {a["agent_id"] for a in st["agents"]} == {"agent0", "agent1", "agent2"}
        iso = next(c for c in st["contents"] if c["sha256"] == ident("iso").sha256.hex())
        assert iso["holder_count"] == 3 and iso["mirrors"] == ["http://m.example/iso"]
        assert iso["names"] == ["0.iso", "1.iso", "2.iso"]
        assert st["recent_locates"][0]["query"] == "name x"
        assert st["recent_locates"][0]["sources"] >= 1
        m = parse_metrics((await asyncio.to_thread(get, http.url + "/metrics"))[2])
        assert value(m, "mfetch_tracker_live_agents") == 3
        assert value(m, "mfetch_tracker_contents") == 4
        assert value(m, "mfetch_tracker_mirrors") == 1
        assert value(m, "mfetch_tracker_announces_total", result="ok") == 3
        code, ctype, page = await asyncio.to_thread(get, http.url + "/")
        assert code == 200 and ctype.startswith("text/html")
        assert "3 live agents" in page and "http://m.example/iso" in page
    finally:
        await http.stop()
        await running.stop(grace=1)
        if store is not None:
            await store.close()
