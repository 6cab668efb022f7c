"""`tracker serve --workers N`: real worker processes on one port, sharing one store."""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal

import pytest

from common.errors import NotFoundError
from common.tracker_client import TrackerClient
from tests.tracker_fakes import ident

pytestmark = pytest.mark.system

ISO = ident("iso")


def _children(pid: int) -> list[int]:
    out = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_workers_share_the_port_and_the_store(procs, tmp_path, request, backend) -> None:
    db = request.getfixturevalue("redis_url") if backend == "redis" else None
    t = procs.tracker(tmp_path, "--workers", "3", "--http", "off", db=db)
    assert "(3 workers)" in t.output()
    workers = _children(t.popen.pid)
    assert len(workers) == 3, t.output()
    # Each client is its own connection, spread by the kernel over the workers; whatever
    # worker answers, it answers from the one store.
    clients = [TrackerClient(t.address, timeout=20) for _ in range(12)]
    try:
        for i, c in enumerate(clients):
            await c.register(f"a{i}", f"http://10.0.0.{i + 1}:7070")
            await c.announce(f"a{i}", {"u.iso": ISO}, replace=True)
        for c in clients:
            assert await c.heartbeat("a0") == 30, "a lease granted by one worker renews on all"
        found = await asyncio.gather(*(c.locate(name="u.iso") for c in clients))
        assert all(cands[0].live_holders == 12 for cands in found)
        await clients[5].announce("a0", {}, removed=["u.iso"])
        for c in clients:
            assert (await c.locate(name="u.iso"))[0].live_holders == 11
    finally:
        for c in clients:
            await c.close()
    assert t.stop() == 0, t.output()
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")], "SIGTERM stops every worker"


async def test_a_dead_worker_stops_the_others(procs, tmp_path) -> None:
    t = procs.tracker(tmp_path, "--workers", "2", "--http", "off")
    workers = _children(t.popen.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    assert t.popen.wait(60) == 1
    assert "worker 1 exited" in t.output()
    assert not os.path.exists(f"/proc/{workers[0]}"), "the other worker was stopped"
    async with TrackerClient(t.address, timeout=5) as c:
        with pytest.raises(Exception) as e:  # nobody answers there any more
            await c.locate(name="u.iso")
        assert not isinstance(e.value, NotFoundError)


def test_workers_stop_when_their_supervisor_is_killed(procs, tmp_path) -> None:
    """A SIGKILL gives the supervisor no chance to stop its workers: they notice on
    their own (within a second) and stop, rather than serve on unsupervised."""
    import time

    t = procs.tracker(tmp_path, "--workers", "2", "--http", "off")
    workers = _children(t.popen.pid)
    assert len(workers) == 2
    t.popen.kill()
    t.popen.wait(30)
    deadline = time.monotonic() + 60  # generous: a loaded machine
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
        time.sleep(0.2)
        for w in workers:  # reap them if they were reparented to us (a subreaper)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w, os.WNOHANG)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}")
             and pathlib.Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, t.output()
    assert "the supervisor (pid" in t.output()


def test_workers_need_a_shared_database(procs, tmp_path) -> None:
    from tests import procs as _procs

    result = _procs.run([_procs.command("tracker"), "serve", "--listen", "127.0.0.1:0",
                         "--db", ":memory:", "--workers", "2", "--http", "off"])
    assert result.returncode == 1
    assert "--workers needs a database the workers can share" in result.stderr
