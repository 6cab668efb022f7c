"""Whole-system runs of the real commands: tracker, agents, nginx and mfetch on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest
from aiohttp import web

from common.errors import MfetchError
from common.tracker_client import TrackerClient
from tests import procs as _procs
from tests.servers import AppServer, ThrottleProxy, free_port, nginx

pytestmark = pytest.mark.system

MiB = 1024 * 1024
AGENT_FLAGS = ["--rescan-seconds", "0.5", "--settle-seconds", "0"]


def make_file(path: pathlib.Path, size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast: SHA-256 counter blocks)."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(2048))
    data = (block * (size // len(block) + 1))[:size]
    data = bytes(b ^ (i * 131 & 0xFF) for i, b in enumerate(data[:4096])) + data[4096:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    old = time.time() - 3600
    os.utime(path, (old, old))
    return data


def wait_holders(tracker: str, name: str, holders: int, timeout: float = 60.0) -> None:
    """Poll the tracker until `name` has `holders` live agents."""
    async def poll() -> None:
        deadline = time.monotonic() + timeout
        async with TrackerClient(tracker) as t:
            while time.monotonic() < deadline:
                with contextlib.suppress(MfetchError):  # not announced yet
                    found = await t.locate(name=name)
                    if found and found[0].live_holders >= holders:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{name} never reached {holders} holders on the tracker")
    asyncio.run(poll())


def mfetch(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return _procs.run([_procs.command("mfetch"), *args], timeout=timeout)


def summary(r: subprocess.CompletedProcess[str]) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mfetch: error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def swarm(procs, tmp_path):
    """A tracker and three agents, each holding its own copy of one 24 MiB file."""
    tracker = procs.tracker(tmp_path)
    data = make_file(tmp_path / "origin" / "of.tar.gz", 24 * MiB)
    agents = []
    for i in range(3):
        d = tmp_path / f"agent{i}"
        d.mkdir()
        (d / "of.tar.gz").write_bytes(data)
        agents.append(procs.agent(d, tracker.address, tmp_path / f"state{i}", *AGENT_FLAGS))
    wait_holders(tracker.address, "of.tar.gz", 3)
    return tracker, agents, data


def test_fetch_by_name_from_three_agents(swarm, tmp_path):
    tracker, _agents, data = swarm
    out = tmp_path / "out.bin"
    s = summary(mfetch("of.tar.gz", "--tracker", tracker.address, "-o", str(out), "--json"))
    assert out.read_bytes() == data
    assert s["sha256"] == hashlib.sha256(data).hexdigest()
    assert s["size"] == len(data) and s["path"] == str(out)
    assert "every piece's sha256" in s["verified"]
    assert {src["kind"] for src in s["sources"]} == {"agent"}
    assert len(s["sources"]) == 3
    assert sum(1 for src in s["sources"] if src["bytes"] > 0) >= 2
    assert not list(tmp_path.glob("out.bin.*")), "no .part or control file is left"


def test_tracker_address_from_environment(swarm, tmp_path):
    tracker, _, data = swarm
    r = _procs.run([_procs.command("mfetch"), "of.tar.gz", "-o", str(tmp_path / "o"), "-q"],
                   env={"MFETCH_TRACKER": tracker.address})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert (tmp_path / "o").read_bytes() == data


def test_nginx_mirror_and_agent_urls_together(procs, tmp_path):
    data = make_file(tmp_path / "www" / "f.bin", 16 * MiB, seed=1)
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "f.bin").write_bytes(data)
    tracker = procs.tracker(tmp_path)
    agent = procs.agent(tmp_path / "share", tracker.address, tmp_path / "st", *AGENT_FLAGS)
    wait_holders(tracker.address, "f.bin", 1)
    with nginx(tmp_path / "www") as base:
        out = tmp_path / "out"
        s = summary(mfetch(f"{base}/f.bin", f"{agent.address}/files/f.bin", "-o", str(out),
                           "--json", "--sha256", hashlib.sha256(data).hexdigest()))
    assert out.read_bytes() == data
    assert [src["bytes"] > 0 for src in s["sources"]] == [True, True], (s["sources"], s["notes"])


def test_agent_killed_mid_fetch_still_completes(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    data = make_file(tmp_path / "origin" / "big.iso", 24 * MiB, seed=2)
    agents, proxies = [], []
    for i in range(3):
        d = tmp_path / f"a{i}"
        d.mkdir()
        (d / "big.iso").write_bytes(data)
        port = free_port()
        proxy = ThrottleProxy(port, rate=3 * MiB)
        proxies.append(proxy)
        agents.append(procs.agent(d, tracker.address, tmp_path / f"s{i}", "--listen",
                                  f"127.0.0.1:{port}", "--advertise",
                                  f"http://127.0.0.1:{proxy.port}", *AGENT_FLAGS))
    try:
        wait_holders(tracker.address, "big.iso", 3)
        out = tmp_path / "out"
        fetch = subprocess.Popen([_procs.command("mfetch"), "big.iso", "--tracker",
                                  tracker.address, "-o", str(out), "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proxies[0].forwarded < 2 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxies[0].forwarded >= 2 * MiB, "the fetch never got going"
        agents[0].kill(signal.SIGKILL)
        stdout, stderr = fetch.communicate(timeout=180)
        assert fetch.returncode == 0, stderr
        assert out.read_bytes() == data
        s = json.loads(stdout)
        killed = next(src for src in s["sources"] if str(proxies[0].port) in src["url"])
        assert killed["bytes"] < len(data)
        assert killed["failures"] > 0 or killed["dropped"]
    finally:
        for p in proxies:
            p.close()


def test_agent_serving_wrong_bytes_is_dropped(swarm, tmp_path):
    tracker, agents, data = swarm
    # Corrupt agent 0's copy behind its back: same size, inode and mtime, so it
    # still vouches for the old hashes while sending other bytes.
    # The agent is stopped meanwhile: a rescan between the write and the utime saw a
    # new mtime, and the agent then announced the zeros as another content (once in
    # CI, when mfetch found only the two honest agents).
    victim = tmp_path / "agent0" / "of.tar.gz"
    st = victim.stat()
    os.kill(agents[0].popen.pid, signal.SIGSTOP)
    try:
        with open(victim, "r+b") as f:
            f.write(bytes(len(data)))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.kill(agents[0].popen.pid, signal.SIGCONT)
    out = tmp_path / "out"
    s = summary(mfetch("of.tar.gz", "--tracker", tracker.address, "-o", str(out), "--json"))
    assert out.read_bytes() == data
    liar = next(src for src in s["sources"] if agents[0].address in src["url"])
    assert liar["dropped"] and "bad piece" in liar["dropped_reason"]
    assert liar["pieces"] == 0


def test_server_ignoring_range_still_yields_the_file(tmp_path):
    data = make_file(tmp_path / "x", 3 * MiB, seed=3)

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=data)  # 200 and every byte, whatever Range says

    server = AppServer(whole)
    try:
        out = tmp_path / "out"
        s = summary(mfetch(f"{server.url}/x", "-o", str(out), "--json"))
        assert out.read_bytes() == data
        assert s["sources"][0]["bytes"] >= len(data)
    finally:
        server.close()


def test_restarted_tracker_keeps_mirrors_and_gets_agents_back(procs, tmp_path):
    port = free_port()
    db = str(tmp_path / "t.db")
    flags = ["--lease-seconds", "6", "--heartbeat-seconds", "1"]
    tracker = procs.start([_procs.command("tracker"), "serve", "--listen", f"127.0.0.1:{port}",
                           "--db", db, *flags])
    data = make_file(tmp_path / "share" / "r.bin", 2 * MiB, seed=4)
    procs.agent(tmp_path / "share", tracker.address, tmp_path / "st", *AGENT_FLAGS)
    wait_holders(tracker.address, "r.bin", 1)
    sha = hashlib.sha256(data).hexdigest()
    dead_mirror = f"http://127.0.0.1:{free_port()}/r.bin"  # nothing listens there
    add = _procs.run([_procs.command("tracker"), "mirror", "add", dead_mirror,
                      "--sha256", sha, "--tracker", tracker.address])
    assert add.returncode == 0, add.stderr
    tracker.kill(signal.SIGKILL)
    tracker = procs.start([_procs.command("tracker"), "serve", "--listen", f"127.0.0.1:{port}",
                           "--db", db, *flags])
    ls = _procs.run([_procs.command("tracker"), "mirror", "ls", "--tracker", tracker.address])
    assert dead_mirror in ls.stdout
    wait_holders(tracker.address, "r.bin", 1, timeout=30)
    out = tmp_path / "out"
    r = mfetch("r.bin", "--tracker", tracker.address, "-o", str(out), "--json")
    s = summary(r)
    assert out.read_bytes() == data
    # The tracker still hands out the mirror; it is dead, so the agent delivers everything.
    mirror = next(src for src in s["sources"] if src["kind"] == "mirror")
    assert mirror["url"] == dead_mirror and mirror["bytes"] == 0


# ---- bad input: one clear line, non-zero exit, never a traceback --------------------


def test_unknown_name(swarm, tmp_path):
    tracker, _, _ = swarm
    assert_one_line_error(mfetch("nope.iso", "--tracker", tracker.address, "-o",
                                 str(tmp_path / "o")), "nope.iso")


def test_unreachable_tracker(tmp_path):
    assert_one_line_error(mfetch("x.iso", "--tracker", f"127.0.0.1:{free_port()}", "-o",
                                 str(tmp_path / "o")), "unreachable")


def test_url_answering_404(tmp_path):
    (tmp_path / "www").mkdir()
    with nginx(tmp_path / "www") as base:
        assert_one_line_error(mfetch(f"{base}/missing.bin", "-o", str(tmp_path / "o")), "404")
    assert not list(tmp_path.glob("o*"))


def test_mirrors_disagreeing_on_size(tmp_path):
    make_file(tmp_path / "www" / "a.bin", 100_000)
    make_file(tmp_path / "www" / "b.bin", 100_001)
    with nginx(tmp_path / "www") as base:
        assert_one_line_error(mfetch(f"{base}/a.bin", f"{base}/b.bin", "-o",
                                     str(tmp_path / "o")), "disagree")


def test_existing_output_is_not_overwritten_without_force(tmp_path):
    data = make_file(tmp_path / "www" / "a.bin", 100_000)
    out = tmp_path / "o"
    out.write_bytes(b"precious")
    with nginx(tmp_path / "www") as base:
        assert_one_line_error(mfetch(f"{base}/a.bin", "-o", str(out)), "--force")
        assert out.read_bytes() == b"precious"
        assert mfetch(f"{base}/a.bin", "-o", str(out), "--force", "-q").returncode == 0
    assert out.read_bytes() == data


def test_bad_flags_and_sha(tmp_path):
    assert_one_line_error(mfetch("http://127.0.0.1:1/x", "--sha256", "abc"), "64 hex")
    assert_one_line_error(mfetch("ftp://example/x"), "http")
    assert_one_line_error(mfetch("a.iso", "b.iso"), "one NAME")


def test_disagreeing_holders_majority_wins_and_sha256_picks(procs, tmp_path):
    tracker = procs.tracker(tmp_path)
    common_data = make_file(tmp_path / "src" / "a", 1 * MiB, seed=5)
    other_data = make_file(tmp_path / "src" / "b", 1 * MiB + 7, seed=6)
    for i, data in enumerate([common_data, common_data, other_data]):
        d = tmp_path / f"h{i}"
        d.mkdir()
        (d / "tool.tar").write_bytes(data)
        procs.agent(d, tracker.address, tmp_path / f"hs{i}", *AGENT_FLAGS)
    wait_holders(tracker.address, "tool.tar", 2)

    async def both_known() -> None:
        async with TrackerClient(tracker.address) as t:
            for _ in range(600):
                if len(await t.locate(name="tool.tar")) == 2:
                    return
                await asyncio.sleep(0.1)
        raise AssertionError("the tracker never saw both versions")
    asyncio.run(both_known())

    r = mfetch("tool.tar", "--tracker", tracker.address, "-o", str(tmp_path / "m"), "--json")
    s = summary(r)
    assert (tmp_path / "m").read_bytes() == common_data
    assert "2 versions" in r.stderr and "--sha256" in r.stderr
    assert any("2 versions" in n for n in s["notes"])
    minority = hashlib.sha256(other_data).hexdigest()
    r = mfetch("tool.tar", "--tracker", tracker.address, "-o", str(tmp_path / "n"), "--sha256",
               minority, "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "n").read_bytes() == other_data


def test_sigkilled_fetch_resumes_without_refetching(tmp_path):
    data = make_file(tmp_path / "www" / "r.bin", 12 * MiB, seed=7)
    with nginx(tmp_path / "www") as base:
        proxy = ThrottleProxy(int(base.rsplit(":", 1)[1]), rate=2 * MiB)
        try:
            url = f"http://127.0.0.1:{proxy.port}/r.bin"
            out = tmp_path / "out"
            argv = [_procs.command("mfetch"), url, "-o", str(out), "--json",
                    "--sha256", hashlib.sha256(data).hexdigest()]
            first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            control = tmp_path / "out.mfetch"
            # Wait until the control file vouches for something, then kill without warning.
            while time.monotonic() < deadline and proxy.forwarded < 5 * MiB:
                time.sleep(0.05)
            time.sleep(1.5)  # past a checkpoint
            first.kill()
            first.wait()
            assert control.exists() and (tmp_path / "out.part").exists()
            before = proxy.forwarded
            r = _procs.run(argv, timeout=120)
            s = summary(r)
            assert "resuming" in r.stderr
            assert out.read_bytes() == data
            refetched = proxy.forwarded - before
            # The second run fetched only what was not verified (plus what was in flight).
            assert refetched < len(data) - 3 * MiB, (before, refetched)
            assert s["sources"][0]["bytes"] <= refetched  # the proxy also carried headers
            assert not control.exists()
        finally:
            proxy.close()


def test_progress_display_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    data = make_file(tmp_path / "www" / "p.bin", 3 * MiB, seed=8)
    with nginx(tmp_path / "www") as base:
        proxy = ThrottleProxy(int(base.rsplit(":", 1)[1]), rate=1 * MiB)
        try:
            leader, follower = pty.openpty()
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
            p = subprocess.Popen([_procs.command("mfetch"), f"http://127.0.0.1:{proxy.port}/p.bin",
                                  "-o", str(tmp_path / "o")], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=follower)
            os.close(follower)
            seen = b""
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            assert p.wait(60) == 0
            os.close(leader)
        finally:
            proxy.close()
    text = seen.decode(errors="replace")
    # A rate is shown: the proxy's 1 MiB/s, less its overhead, may read as KiB/s.
    assert "ETA" in text and re.search(r"\d [KM]iB/s", text) and "127.0.0.1" in text
    assert (tmp_path / "o").read_bytes() == data


def test_output_folder_missing_or_not_a_folder(tmp_path):
    data = make_file(tmp_path / "www" / "a.bin", 100_000, seed=9)
    (tmp_path / "file").write_bytes(b"x")
    with nginx(tmp_path / "www") as base:
        assert_one_line_error(mfetch(f"{base}/a.bin", "-o", str(tmp_path / "no" / "out")),
                              "does not exist")
        assert_one_line_error(mfetch(f"{base}/a.bin", "-o", str(tmp_path / "file" / "out")),
                              "does not exist")
        (tmp_path / "dl").mkdir()
        r = mfetch(f"{base}/a.bin", "-o", str(tmp_path / "dl"), "-q")
        assert r.returncode == 0, r.stderr  # an existing folder: saved inside it by name
    assert (tmp_path / "dl" / "a.bin").read_bytes() == data
