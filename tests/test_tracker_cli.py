"""Whole-system runs of the real `tracker` command."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from common.errors import NotFoundError
from common.tracker_client import TrackerClient
from tests import procs as _procs
from tests.tracker_fakes import ident

pytestmark = pytest.mark.system

TRACKER = _procs.command("tracker")
SHA = "ab" * 32
ISO = ident("iso")


def _cli(*args: str, env: dict[str, str] | None = None):
    return _procs.run([TRACKER, *args], timeout=120, env=env)


def _one_error_line(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tracker: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_mirrors_and_agents_survive_sigkill(procs, tmp_path) -> None:
    lease = 15
    t = procs.tracker(tmp_path, "--lease-seconds", str(lease), "--heartbeat-seconds", "5")
    assert t.address.startswith("127.0.0.1:") and not t.address.endswith(":0")

    r = _cli("mirror", "add", "https://m.example/pub/u.iso", "--sha256", SHA, "--size", "7",
             "--tracker", t.address)
    assert r.returncode == 0, r.stderr
    r = _cli("mirror", "ls", "--json", env={"MFETCH_TRACKER": t.address})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"url": "https://m.example/pub/u.iso", "name": "u.iso",
                                     "sha256": SHA, "size": 7}]
    async with TrackerClient(t.address, timeout=30) as c:
        await c.register("a1", "http://10.0.0.1:7070")
        registered = time.monotonic()
        await c.announce("a1", {"agent.iso": ISO}, replace=True)

    t.kill(signal.SIGKILL)
    t2 = procs.tracker(tmp_path)  # same db (tmp_path/tracker.db)
    r = _cli("mirror", "ls", "--tracker", t2.address)
    assert r.returncode == 0 and "https://m.example/pub/u.iso" in r.stdout, r.stderr
    async with TrackerClient(t2.address, timeout=30) as c:
        assert time.monotonic() - registered < lease - 1, "machine too slow to check the lease"
        (cand,) = await c.locate(name="agent.iso")
        assert cand.sources[0].agent_id == "a1"
        deadline = time.monotonic() + lease + 90
        while True:  # the lease granted before the crash still runs out
            try:
                await c.locate(name="agent.iso")
            except NotFoundError:
                break
            assert time.monotonic() < deadline, "lease never lapsed"
            await asyncio.sleep(0.5)

    r = _cli("mirror", "rm", "https://m.example/pub/u.iso", "--tracker", t2.address)
    assert r.returncode == 0, r.stderr
    r = _cli("mirror", "ls", "--tracker", t2.address)
    assert r.returncode == 0 and r.stdout == ""
    assert "no mirror" in _one_error_line(
        _cli("mirror", "rm", "https://m.example/pub/u.iso", "--tracker", t2.address))
    assert t2.stop() == 0, t2.output()


def test_bad_config_is_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    _one_error_line(_cli("serve", "--config", str(bad), "--db", str(tmp_path / "t.db")))
    bad.write_text("lease_seconds: soon\n")
    assert "lease_seconds" in _one_error_line(_cli("serve", "--config", str(bad)))
    bad.write_text("mirrors:\n  - url: http://m/x.iso\n    sha256: nothex\n")
    assert "sha256" in _one_error_line(_cli("serve", "--config", str(bad)))
    _one_error_line(_cli("serve", "--config", str(tmp_path / "missing.yaml")))


def test_bad_flags_are_one_line(tmp_path) -> None:
    _one_error_line(_cli("serve", "--listen", "nowhere", "--db", str(tmp_path / "t.db")))
    _one_error_line(_cli("serve", "--lease-seconds", "10", "--heartbeat-seconds", "10",
                         "--db", str(tmp_path / "t.db")))
    _one_error_line(_cli("mirror", "add", "http://m/x", "--sha256", "12",
                         "--tracker", "127.0.0.1:1"))


def test_unreachable_tracker_is_one_line() -> None:
    line = _one_error_line(_cli("mirror", "ls", "--tracker", "127.0.0.1:1"))
    assert "unreachable" in line


def test_config_file_mirrors_and_port_in_use(procs, tmp_path) -> None:
    conf = tmp_path / "t.yaml"
    conf.write_text(f"lease_seconds: 40\nmirrors:\n  - url: http://m/a%20b.iso\n    sha256: {SHA}\n")
    t = procs.tracker(tmp_path, "--config", str(conf))
    r = _cli("mirror", "ls", "--tracker", t.address)
    assert r.returncode == 0 and "a b.iso" in r.stdout, r.stderr
    line = _one_error_line(_cli("serve", "--listen", t.address, "--db", str(tmp_path / "2.db")))
    assert "cannot listen" in line
