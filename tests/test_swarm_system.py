"""Swarming end to end with the real commands on loopback: a slow origin agent (behind a
ThrottleProxy), fetchers that each run their own agent and feed each other; a partial
agent refusing unverified pieces; a lying peer dropped."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from common import agent_api, bitfield
from common.identity import hash_file
from common.tracker_client import TrackerClient
from tests import procs as _procs
from tests.servers import AppServer, ThrottleProxy, free_port
from tests.test_system import AGENT_FLAGS, MiB, make_file, summary, wait_holders

pytestmark = pytest.mark.system
SWARM_FLAGS = [*AGENT_FLAGS, "--swarm-announce-seconds", "0.5"]


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def have_count(agent_url: str, sha: bytes, token: str | None = None) -> int:
    status, body, _ = http("GET", f"{agent_url}/swarm/{sha.hex()}/have",
                           headers={"Authorization": f"Bearer {token}"} if token else None)
    return bitfield.count(body) if status == 200 else -1


def start_fetch(tracker: str, out, agent_url: str | None,
                *extra: str) -> subprocess.Popen[str]:
    argv = [_procs.command("mfetch"), out.name, "--tracker", tracker, "-o", str(out), "--json",
            "-v", *extra]
    if agent_url:
        argv += ["--agent", agent_url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "http-token"])
def test_second_fetcher_gets_pieces_from_the_first_ones_partial_download(procs, tmp_path,
                                                                         with_token):
    """With an HTTP token on every agent, the peers' data and bitfields need it (and
    get it: mfetch sends its agent token to the agents the tracker names), while
    registering with the local agent from loopback needs none."""
    token = "swarm-token-0123456789abcdef" if with_token else None
    token_file = tmp_path / "http.token"
    token_file.write_text(f"{token}\n")
    agent_extra = ["--http-token-file", str(token_file)] if token else []
    fetch_extra = ["--agent-token-file", str(token_file)] if token else []
    tracker = procs.tracker(tmp_path)
    data = make_file(tmp_path / "origin" / "big.iso", 24 * MiB, seed=6)
    sha = hashlib.sha256(data).digest()
    port = free_port()
    proxy = ThrottleProxy(port, rate=2 * MiB)  # the origin's slow uplink
    try:
        procs.agent(tmp_path / "origin", tracker.address, tmp_path / "s0", "--listen",
                    f"127.0.0.1:{port}", "--advertise", f"http://127.0.0.1:{proxy.port}",
                    *AGENT_FLAGS, *agent_extra)
        wait_holders(tracker.address, "big.iso", 1)
        agents = {}
        for name in "ab":
            (tmp_path / name).mkdir()
            agents[name] = procs.agent(tmp_path / name, tracker.address, tmp_path / f"s{name}",
                                       *SWARM_FLAGS, *agent_extra).address
        fa = start_fetch(tracker.address, tmp_path / "a" / "big.iso", agents["a"], *fetch_extra)
        deadline = time.monotonic() + 120
        while have_count(agents["a"], sha, token) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert have_count(agents["a"], sha, token) >= 20, "A never shared its partial download"
        if token:
            assert have_count(agents["a"], sha) == -1, "the bitfield was served without the token"
        # A's agent announced the partial holding to the tracker.
        wait_holders(tracker.address, "big.iso", 2)
        fb = start_fetch(tracker.address, tmp_path / "b" / "big.iso", agents["b"], *fetch_extra)
        _, err_a = fa.communicate(timeout=240)
        out_b, err_b = fb.communicate(timeout=240)
        assert fa.returncode == 0, err_a
        assert fb.returncode == 0, err_b
        assert (tmp_path / "a" / "big.iso").read_bytes() == data
        assert (tmp_path / "b" / "big.iso").read_bytes() == data
        sb = json.loads(out_b)
        from_a = sum(s["bytes"] for s in sb["sources"] if agents["a"] in s["url"])
        from_origin = sum(s["bytes"] for s in sb["sources"] if str(proxy.port) in s["url"])
        assert from_a >= 20 * 256 * 1024, (sb, err_b[-3000:])
        assert from_origin < len(data), sb
        assert all(agents["b"] not in s["url"] for s in sb["sources"]), "B fetched from itself"
        # Both keep seeding as whole holders: the whole file from A's agent by content.
        status, body, _ = http("GET", f"{agents['a']}/swarm/{sha.hex()}",
                               headers={"Authorization": f"Bearer {token}"} if token else None)
        assert status == 200 and body == data
        assert have_count(agents["b"], sha, token) == len(data) // (256 * 1024)
    finally:
        proxy.close()


def _register(agent_url: str, part, data: bytes, have: bytes, **over) -> tuple[int, dict]:
    ident, pieces = hash_file(_WHOLE[0])
    doc = {"sha256": ident.sha256.hex(), "size": ident.size, "piece_size": ident.piece_size,
           "root": ident.root.hex(), "pieces": base64.b64encode(pieces).decode(),
           "name": "thing.bin", "path": str(part), "have": base64.b64encode(have).decode()}
    doc.update(over)
    status, body, _ = http("POST", agent_url + agent_api.LOCAL_SWARM, json.dumps(doc).encode(),
                           {"Content-Type": "application/json"})
    return status, json.loads(body)


_WHOLE: list = []


def test_partial_agent_serves_only_verified_pieces(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    d = tmp_path / "share"
    d.mkdir()
    agent = procs.agent(d, tracker.address, tmp_path / "state", *SWARM_FLAGS).address
    data = make_file(d / ".whole-src", 10 * MiB, seed=3)
    (d / "whole").write_bytes(data)  # only for hashing; the agent also shares it
    _WHOLE[:] = [d / "whole"]
    part = d / "thing.bin.part"
    part.write_bytes(data)
    sha = hashlib.sha256(data).digest()
    pieces = 40
    flags = bytearray(pieces)
    flags[2] = flags[3] = 1
    status, answer = _register(agent, part, data, bitfield.pack(flags))
    assert status == 200, answer
    url = f"{agent}/swarm/{sha.hex()}"
    piece = 256 * 1024
    status, body, _ = http("GET", url, headers={"Range": f"bytes={2 * piece}-{4 * piece - 1}"})
    assert status == 206 and body == data[2 * piece:4 * piece]
    status, body, headers = http("GET", url, headers={"Range": f"bytes={3 * piece}-{5 * piece}"})
    assert status == 416 and b"not verified here yet: 4-5" in body
    assert headers["Content-Range"] == f"bytes */{len(data)}"
    status, body, _ = http("GET", url)  # the whole file: not until complete
    assert status == 416
    assert have_count(agent, sha) == 2
    status, body, _ = http("GET", f"{agent}/pieces/{sha.hex()}")
    assert status == 200 and len(body) == pieces * 32
    # Bad input from the local side is refused with a reason and changes nothing.
    status, answer = _register(agent, part, data, b"\xff")
    assert status == 400 and "bitfield has 1 bytes" in answer["error"]
    outside = tmp_path / "elsewhere.part"
    outside.write_bytes(data)
    status, answer = _register(agent, outside, data, b"")
    assert status == 403 and "outside this agent's directory" in answer["error"]
    status, answer = _register(agent, part, data, b"", root="00" * 32)
    assert status == 400 and "root" in answer["error"]
    assert have_count(agent, sha) == 2
    # The tracker hears of the partial holding with its bitfield.
    async def located() -> bytes:
        async with TrackerClient(tracker.address) as t:
            for _ in range(200):
                for c in await t.locate(sha256=sha):
                    for s in c.sources:
                        if s.have:
                            return s.have
                await asyncio.sleep(0.1)
        return b""
    assert bitfield.unpack(asyncio.run(located()), pieces) == flags
    # A part file replaced behind the agent's back is no longer served.
    part.rename(d / ".old")  # kept, so the new file cannot reuse its inode number
    part.write_bytes(bytes(len(data)))
    status, body, _ = http("GET", url, headers={"Range": f"bytes={2 * piece}-{3 * piece - 1}"})
    assert status == 404 and b"no such download" in body


def test_lying_peer_is_dropped_and_its_pieces_fetched_elsewhere(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    data = make_file(tmp_path / "origin" / "big.iso", 8 * MiB, seed=9)
    ident, piece_list = hash_file(tmp_path / "origin" / "big.iso")
    port = free_port()
    proxy = ThrottleProxy(port, rate=4 * MiB)
    n = ident.pieces

    async def liar(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.endswith("/have"):
            return web.Response(body=bitfield.pack(b"\x01" * (n - 1) + b"\x00"))
        if path.startswith("/pieces/"):
            return web.Response(body=piece_list)
        start, end = request.headers["Range"][6:].split("-")
        body = bytes(int(end) - int(start) + 1)  # zeros: every piece fails its hash
        return web.Response(status=206, body=body, headers={
            "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    fake = AppServer(liar)
    try:
        procs.agent(tmp_path / "origin", tracker.address, tmp_path / "s0", "--listen",
                    f"127.0.0.1:{port}", "--advertise", f"http://127.0.0.1:{proxy.port}",
                    *AGENT_FLAGS)
        wait_holders(tracker.address, "big.iso", 1)

        async def announce_liar() -> None:
            async with TrackerClient(tracker.address) as t:
                await t.register("liar", fake.url)
                path = agent_api.swarm_path(ident.sha256, "big.iso")
                await t.announce("liar", {path: ident}, replace=True,
                                 have={path: bitfield.pack(b"\x01" * (n - 1) + b"\x00")})
        asyncio.run(announce_liar())
        out = tmp_path / "out.iso"
        r = _procs.run([_procs.command("mfetch"), "big.iso", "--tracker", tracker.address,
                        "-o", str(out), "--json"], timeout=180)
        s = summary(r)
        assert out.read_bytes() == data
        (lying,) = [src for src in s["sources"] if fake.url in src["url"]]
        assert lying["kind"] == "peer"
        assert lying["dropped"] and "bad piece" in lying["dropped_reason"]
        assert lying["pieces"] == 0
    finally:
        fake.close()
        proxy.close()


def test_output_outside_the_agents_dir_is_fetched_without_sharing(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    data = make_file(tmp_path / "origin" / "small.iso", 2 * MiB, seed=4)
    procs.agent(tmp_path / "origin", tracker.address, tmp_path / "s0", *AGENT_FLAGS)
    (tmp_path / "share").mkdir()
    local = procs.agent(tmp_path / "share", tracker.address, tmp_path / "s1",
                        *SWARM_FLAGS).address
    wait_holders(tracker.address, "small.iso", 1)
    out = tmp_path / "elsewhere.iso"
    r = _procs.run([_procs.command("mfetch"), "small.iso", "--tracker", tracker.address,
                    "-o", str(out), "--json"], env={"MFETCH_AGENT": local}, timeout=120)
    summary(r)
    assert out.read_bytes() == data
    assert "not swarming" in r.stderr and "outside this agent's directory" in r.stderr


def test_swarm_settings_are_checked(tmp_path):
    r = _procs.run([_procs.command("mfetch"), "x.iso", "--agent", "127.0.0.1:7070"])
    assert r.returncode == 1 and "agent must be the local agent's URL" in r.stderr
    (tmp_path / "d").mkdir()
    r = _procs.run([_procs.command("agent"), "serve", str(tmp_path / "d"),
                    "--swarm-announce-seconds", "0"])
    assert r.returncode == 1 and "swarm_announce_seconds must be positive" in r.stderr


def test_part_renamed_to_out_is_still_served_until_complete(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    d = tmp_path / "share"
    d.mkdir()
    agent = procs.agent(d, tracker.address, tmp_path / "state", *SWARM_FLAGS).address
    data = make_file(d / "whole", 1 * MiB, seed=8)
    _WHOLE[:] = [d / "whole"]
    part = d / "thing.bin.part"
    part.write_bytes(data)
    status, answer = _register(agent, part, data, bitfield.pack(b"\x01" * 4))
    assert status == 200, answer
    part.rename(d / "thing.bin")  # what mfetch does just before "complete"
    sha = hashlib.sha256(data).digest()
    status, body, _ = http("GET", f"{agent}/swarm/{sha.hex()}", headers={"Range": "bytes=0-9"})
    assert status == 206 and body == data[:10]


def test_a_restarted_agent_gets_the_download_registered_again(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    data = make_file(tmp_path / "origin" / "mid.iso", 16 * MiB, seed=5)
    sha = hashlib.sha256(data).digest()
    port = free_port()
    proxy = ThrottleProxy(port, rate=1 * MiB)
    try:
        procs.agent(tmp_path / "origin", tracker.address, tmp_path / "s0", "--listen",
                    f"127.0.0.1:{port}", "--advertise", f"http://127.0.0.1:{proxy.port}",
                    *AGENT_FLAGS)
        wait_holders(tracker.address, "mid.iso", 1)
        (tmp_path / "a").mkdir()
        listen = f"127.0.0.1:{free_port()}"
        argv = [tmp_path / "a", tracker.address, tmp_path / "sa", "--listen", listen,
                *SWARM_FLAGS]
        agent = procs.agent(*argv)
        fetch = start_fetch(tracker.address, tmp_path / "a" / "mid.iso", agent.address)
        deadline = time.monotonic() + 120
        while have_count(agent.address, sha) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert have_count(agent.address, sha) >= 2
        agent.kill()
        agent = procs.agent(*argv)
        deadline = time.monotonic() + 60
        while have_count(agent.address, sha) < 1 and time.monotonic() < deadline \
                and fetch.poll() is None:
            time.sleep(0.1)
        assert have_count(agent.address, sha) >= 1, "the download was not registered again"
        _, err = fetch.communicate(timeout=240)
        assert fetch.returncode == 0, err
        assert (tmp_path / "a" / "mid.iso").read_bytes() == data
    finally:
        proxy.close()
