"""The real `agent serve` command: errors, signals, and a whole run with a real tracker."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import urllib.request

import pytest

from common.errors import NotFoundError
from common.tracker_client import TrackerClient
from tests import procs as procmod
from tests.agent_helpers import write

AGENT = procmod.command("agent")


def test_missing_dir_is_one_line_error(tmp_path) -> None:
    r = procmod.run([AGENT, "serve", str(tmp_path / "nope"), "--state-dir", str(tmp_path / "s")])
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [f"agent: error: {tmp_path / 'nope'} does not exist"]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--listen", "nonsense"], "bad listen address"),
    (["--rescan-seconds", "soon"], "expected a number"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_flags_are_one_line_errors(tmp_path, argv: list[str], needle: str) -> None:
    r = procmod.run([AGENT, "serve", str(tmp_path), "--state-dir", str(tmp_path / "s"), *argv])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agent: error: ") and needle in lines[0]


def test_bad_config_file_is_one_line_error(tmp_path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("rescan_seconds: 1\nno_such_setting: 3\n")
    r = procmod.run([AGENT, "serve", str(tmp_path), "--config", str(cfg)])
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "no_such_setting" in lines[0]


def test_serves_without_tracker_and_exits_0_on_sigterm(procs, tmp_path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    write(d / "f.txt", b"data")
    # A tracker that is not there: HTTP serves anyway.
    p = procs.agent(d, "127.0.0.1:9", tmp_path / "s", "--rescan-seconds", "0.5")
    assert p.address.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(p.address + "/healthz", timeout=30) as r:
        assert r.read() == b"ok"
    with urllib.request.urlopen(p.address + "/files/f.txt", timeout=30) as r:
        assert r.read() == b"data"
    assert p.stop() == 0
    out = p.output()
    assert out.count("agent listening on") == 1
    assert "unreachable" in out and "Traceback" not in out


@pytest.mark.system
async def test_files_become_locatable_and_disappear(procs, tmp_path) -> None:
    tracker = procs.tracker(tmp_path, "--heartbeat-seconds", "1", "--lease-seconds", "5")
    d = tmp_path / "d"
    d.mkdir()
    write(d / "first.bin", os.urandom(70_000))
    agent = procs.agent(d, tracker.address, tmp_path / "s", "--rescan-seconds", "0.3",
                        "--settle-seconds", "0.5")
    async with TrackerClient(tracker.address) as tc:

        async def found(name: str) -> list:
            try:
                return await tc.locate(name=name)
            except NotFoundError:
                return []

        async def poll(name: str, want: bool) -> None:
            deadline = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < deadline:
                if bool(await found(name)) == want:
                    return
                await asyncio.sleep(0.2)
            raise AssertionError(f"{name} locatable={not want} after 60 s:\n{agent.output()}")

        await poll("first.bin", True)
        data = os.urandom(300_000)
        write(d / "added.bin", data)
        await poll("added.bin", True)
        (cand,) = await found("added.bin")
        assert cand.content.sha256 == hashlib.sha256(data).digest()
        (src,) = cand.sources
        assert src.url.startswith(agent.address)
        with urllib.request.urlopen(src.url, timeout=30) as r:
            assert r.read() == data
        with urllib.request.urlopen(src.pieces_url, timeout=30) as r:
            cand.content.check_piece_list(r.read())

        os.remove(d / "first.bin")
        await poll("first.bin", False)
    assert agent.stop() == 0


@pytest.mark.system
async def test_agent_reannounces_after_tracker_restart(procs, tmp_path) -> None:
    db = str(tmp_path / "tracker.db")
    tracker = procs.tracker(tmp_path, "--heartbeat-seconds", "1", "--lease-seconds", "3", db=db)
    port = tracker.address.rsplit(":", 1)[1]
    d = tmp_path / "d"
    d.mkdir()
    write(d / "kept.bin", b"kept")
    agent = procs.agent(d, tracker.address, tmp_path / "s", "--rescan-seconds", "0.3")

    async def locatable(address: str) -> bool:
        async with TrackerClient(address, timeout=5) as tc:
            try:
                return bool(await tc.locate(name="kept.bin"))
            except NotFoundError:
                return False

    async def wait(address: str) -> None:
        for _ in range(300):
            if await locatable(address):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(agent.output())

    await wait(tracker.address)
    tracker.kill(signal.SIGKILL)
    # A new tracker on the same address that knows nothing (fresh database).
    tracker2 = procs.start([procmod.command("tracker"), "serve", "--listen", f"127.0.0.1:{port}",
                            "--db", str(tmp_path / "fresh.db"), "--heartbeat-seconds", "1",
                            "--lease-seconds", "3"])
    await wait(tracker2.address)
    assert agent.stop() == 0
    out = agent.output()
    assert out.count("registered as") >= 2 and "Traceback" not in out


def test_hash_workers_die_with_a_sigkilled_agent(procs, tmp_path) -> None:
    import pathlib
    import signal as _signal
    import time as _time

    share = tmp_path / "share"
    share.mkdir()
    (share / "f.bin").write_bytes(b"x" * 1_000_000)
    os.utime(share / "f.bin", (1, 1))
    agent = procs.agent(share, "127.0.0.1:9", tmp_path / "st", "--settle-seconds", "0",
                        "--rescan-seconds", "0.5")
    pid = agent.popen.pid

    def children() -> set[int]:
        kids: set[int] = set()
        for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids |= {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                pass
        return kids

    deadline = _time.monotonic() + 60
    while not children() and _time.monotonic() < deadline:
        _time.sleep(0.1)
    workers = children()
    assert workers, "the agent never started its hash workers"
    agent.kill(_signal.SIGKILL)
    deadline = _time.monotonic() + 30
    while _time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") and
                                               "Z" not in _state(w) for w in workers):
        _time.sleep(0.1)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and "Z" not in _state(w)]
    assert not alive, f"hash workers outlived the agent: {alive}"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
