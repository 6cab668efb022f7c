"""Interruptions: SIGKILL at several points, and a disk that fills up mid-download."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from tests import procs as _procs
from tests.faulty import FaultyServer
from tests.test_system import make_file

MiB = 1024 * 1024


def test_sigkill_at_several_points_fetches_about_the_file_once(tmp_path):
    data = make_file(tmp_path / "d", 8 * MiB, seed=50)
    out = tmp_path / "out"
    argv = [_procs.command("mfetch"), "", "-o", str(out), "--json",
            "--sha256", hashlib.sha256(data).hexdigest()]
    with FaultyServer(data, trickle=1 * MiB) as server:
        argv[1] = server.url
        kills = 0
        for delay in (1.5, 2.0, 2.5):  # each run is killed after this long
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
            assert not out.exists() or kills < 3
        r = _procs.run(argv, timeout=120)
        assert r.returncode == 0, r.stderr
        total = server.sent
    assert kills >= 2, "the runs finished before they could be killed"
    assert out.read_bytes() == data
    # Each kill loses at most what arrived since the last checkpoint (1 s, 1 MiB here)
    # and the pieces in flight.
    assert total <= len(data) + kills * 1.5 * MiB, (total, kills)
    assert json.loads(r.stdout)["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_too_small_is_a_clear_error_before_any_download(tmp_path):
    data = make_file(tmp_path / "d", 6 * MiB, seed=51)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "out"
        argv = [_procs.command("mfetch"), "", "-o", str(out), "--no-head-start",
                "--sha256", hashlib.sha256(data).hexdigest()]
        with FaultyServer(data) as server:
            argv[1] = server.url
            r = _procs.run(argv, timeout=120)
            assert r.returncode == 1 and "Traceback" not in r.stderr
            assert "not enough space" in r.stderr and str(len(data)) in r.stderr, r.stderr
            assert server.sent <= 1 and not out.exists()  # the probe asked for one byte
            # Make room, run the same command again.
            subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
            r = _procs.run(argv, timeout=120)
            assert r.returncode == 0, r.stderr
        assert out.read_bytes() == data
    finally:
        subprocess.run(["umount", str(disk)], check=False)
