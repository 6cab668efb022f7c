#!/usr/bin/env python3
"""mfetch benchmark harness: multi-mirror downloads over shaped links.

Run as root (it creates network namespaces):

    .venv/bin/python bench/run.py              # full run, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick      # smoke run, small files
    .venv/bin/python bench/run.py --cases hetero --size 512M --tools aria2c,axel

Topology (all of it inside namespaces this script creates; nothing is added
to the root namespace and nothing leaves the machine):

    mfb-c (client)                      mfb-m<i> (mirror i)
      m<i> 10.77.<i>.1/24  <== veth ==>  eth0 10.77.<i>.2/24  nginx :80
                                         egress: tc tbf at the mirror's rate

The client tools run in mfb-c (`ip netns exec mfb-c TOOL ...`, which exec()s,
so the measured child is the tool itself). The loopback case runs one unshaped
nginx on 127.0.0.1:8080 inside mfb-c. Every mirror serves the same generated
random file (sendfile on) from bench/work/data.

Cases
  hetero    4 mirrors at 200/100/50/20 Mbit/s
  stall     same 4; at 30% (--event-at) of the ideal time the fastest mirror's tbf is
            replaced by a 8 kbit/s one (packets beyond a tiny queue are
            dropped), and it stays stalled: connections stay open, data trickles
  die       same 4; at 30% of the ideal time the fastest mirror dies: every
            process in its namespace gets SIGKILL (--die-mode kill, default:
            connections end, new connects are refused) or its link is set down
            (--die-mode linkdown: packets vanish, peers see silence)
  sixteen   16 mirrors at 100/50/25/10 Mbit/s (x4)
  loopback  one unshaped source on loopback: raw speed and CPU; `curl -o` is
            the reference. Outputs go to this machine's disk, left dirty in
            the page cache by every tool (mfetch flushes only with --sync);
            before each tool runs, what earlier ones wrote is synced. An
            untimed curl download comes first, so that every timed run, the
            first one too, follows another's output written and deleted
  loopback-tmpfs
            the same with every output on a tmpfs, so the disk is left out
            and what remains is the network path and the tool's CPU
  memory-1g, memory-4g
            one loopback source, mfetch with 32 connections (mfetch-32) and
            aria2c tuned: peak RSS must stay flat as the file grows 1 -> 4 GiB

Every case runs in rounds (--repeat, 3 by default, 1 with --quick; the two
loopback cases, which take seconds and vary the most, two more): each round
runs every installed tool once, the order turned by one each round, so no tool
always goes first. This machine's CPU and loopback speed drift 10-40% over
minutes; a median of runs taken side by side is the fair comparison, and the
range shows the drift. Before each run the served file is read through, so it
is in the page cache whichever tool comes first.

Measurements per tool and case (the table: the median over the tool's right
runs, or over all of them if none was right, with the range in brackets; peak
RSS: the highest of all runs; result: how many runs ended which way, e.g.
"right 3/3" or "right 2/3, WRONG 1/3")
  wall      seconds from spawn to exit (monotonic clock)
  cpu       user+sys seconds of the child (os.wait4 rusage, includes its
            reaped descendants)
  rss       peak resident set of the tool: ru_maxrss from wait4, taken by GNU
            /usr/bin/time (package `time`) which forks the tool; our own wait4's
            ru_maxrss would start at the harness's own peak (vfork + execve
            keep the old mm's high-water mark)
  result    right (exit 0 and sha256 matches the generated file), WRONG
            (exit 0 but the bytes differ), failed (exit!=0 / timeout / no file)
Below each table of several rounds, mfetch's CPU over aria2c's (and tuned
aria2c's) round by round, where both were right: a round's runs come one after
the other, so these ratios carry less of the drift than the medians do.
  steal     the share of the machine's CPU time the hypervisor gave to other
            guests during a run (/proc/stat), given below each table (median
            and most), and in a run's own line when 5% or more: its times and
            CPU figures are suspect

Ideal time and efficiency
  Rates r_i are the nominal tbf rates (bits/s / 8). Let R(t) be the sum of the
  rates of the sources alive at time t (t from tool start; a stalled source
  counts with its stall rate, a dead one with 0; the change happens at the
  measured instant t_e when the tc / kill command returned). ideal_time T is
  the smallest T with  integral_0^T R(t) dt = file bytes. With one event:
      T = B / R0                          if B <= R0 * t_e (or no event fired)
      T = t_e + (B - R0 * t_e) / R1       otherwise
  efficiency = T / wall. tbf counts Ethernet+IP+TCP headers, so the payload
  ceiling is about 1448/1514 = 0.956, not 1.0. No ideal for loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"
PREFIX = "mfb-"
CLIENT_NS = PREFIX + "c"
MIB = 1 << 20
LOOPBACK_PORT = 8080
STALL_KBIT = 8
EVENT_FRACTION = 0.30  # of the nominal ideal time (--event-at)
PAYLOAD_CEILING = 1448 / 1514

# --------------------------------------------------------------------------- shell


def sh(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def ns_exec(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- topology


def our_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(PREFIX)]


def kill_ns_processes(ns: str) -> None:
    """SIGKILL every process whose network namespace is `ns`."""
    for _ in range(20):
        pids = [int(x) for x in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def cleanup_all() -> None:
    """Remove every namespace (and so every veth and nginx) we may have left, and the
    outputs' tmpfs."""
    tmp_out = WORK / "out-tmpfs"
    if os.path.ismount(tmp_out):
        sh("umount", str(tmp_out), check=False)
    for ns in our_namespaces():
        kill_ns_processes(ns)
        sh("ip", "netns", "del", ns, check=False)
    left = our_namespaces()
    if left:
        raise RuntimeError(f"could not delete namespaces: {left}")


def tbf(ns: str, dev: str, bits: float, stalled: bool = False) -> None:
    if stalled:
        args = ["rate", f"{STALL_KBIT}kbit", "burst", "3000", "latency", "100ms"]
    else:
        burst = max(64 * 1024, int(bits / 8 * 0.005))  # >= 5 ms at rate, >= a GSO skb
        args = ["rate", f"{int(bits)}bit", "burst", str(burst), "latency", "50ms"]
    sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", *args)


NGINX_CONF = """\
daemon off;
master_process on;
user root;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    types {{ application/octet-stream bin; }}
    server {{
        listen {listen};
        root {root};
        location / {{ }}
    }}
}}
"""


@dataclass
class Mirror:
    idx: int
    ns: str
    dev: str
    addr: str
    port: int
    rate_bits: float | None  # None = unshaped
    prefix: Path
    nginx: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"http://{self.addr}:{self.port}/{name}"


class Topology:
    def __init__(self, rates_mbit: list[float] | None, data_dir: Path):
        self.data_dir = data_dir
        self.probe = next(f.name for f in data_dir.iterdir() if f.suffix == ".bin")
        self.mirrors: list[Mirror] = []
        self.rates_mbit = rates_mbit
        run = WORK / "run"
        if run.exists():
            shutil.rmtree(run)
        if rates_mbit is None:  # loopback case: one unshaped nginx inside the client ns
            self.mirrors.append(Mirror(0, CLIENT_NS, "lo", "127.0.0.1", LOOPBACK_PORT,
                                       None, run / "lo"))
        else:
            for i, r in enumerate(rates_mbit):
                self.mirrors.append(Mirror(i, f"{PREFIX}m{i}", "eth0", f"10.77.{i}.2", 80,
                                           r * 1e6, run / f"m{i}"))

    def up(self) -> None:
        sh("ip", "netns", "add", CLIENT_NS)
        sh("ip", "-n", CLIENT_NS, "link", "set", "lo", "up")
        for m in self.mirrors:
            if m.rate_bits is not None:
                i = m.idx
                sh("ip", "netns", "add", m.ns)
                sh("ip", "-n", m.ns, "link", "set", "lo", "up")
                sh("ip", "link", "add", f"m{i}", "netns", CLIENT_NS, "type", "veth",
                   "peer", "name", m.dev, "netns", m.ns)
                sh("ip", "-n", CLIENT_NS, "addr", "add", f"10.77.{i}.1/24", "dev", f"m{i}")
                sh("ip", "-n", m.ns, "addr", "add", f"{m.addr}/24", "dev", m.dev)
                sh("ip", "-n", CLIENT_NS, "link", "set", f"m{i}", "up")
                sh("ip", "-n", m.ns, "link", "set", m.dev, "up")
                tbf(m.ns, m.dev, m.rate_bits)
            self.start_nginx(m)
        for m in self.mirrors:
            self.wait_ready(m)

    def start_nginx(self, m: Mirror) -> None:
        (m.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = m.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            workers=2 if m.rate_bits is None else 1, prefix=m.prefix,
            listen=f"{m.addr}:{m.port}", root=self.data_dir))
        m.nginx = subprocess.Popen(
            ns_exec(m.ns, "nginx", "-c", str(conf), "-p", str(m.prefix),
                    "-e", str(m.prefix / "error.log")),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def wait_ready(self, m: Mirror) -> None:
        probe = self.probe
        for _ in range(100):
            p = sh(*ns_exec(CLIENT_NS, "curl", "-sf", "-o", "/dev/null", "-r", "0-0",
                            "--max-time", "1", m.url(probe)), check=False)
            if p.returncode == 0:
                return
            time.sleep(0.05)
        err = (m.prefix / "error.log").read_text() if (m.prefix / "error.log").exists() else ""
        raise RuntimeError(f"mirror {m.idx} ({m.url(probe)}) not ready: {err[-500:]}")

    def nginx_alive(self, m: Mirror) -> bool:
        return m.nginx is not None and m.nginx.poll() is None

    def reset(self) -> None:
        """Restore every mirror to its base state between tool runs."""
        for m in self.mirrors:
            if m.rate_bits is not None:
                sh("ip", "-n", m.ns, "link", "set", m.dev, "up")
                tbf(m.ns, m.dev, m.rate_bits)
            if not self.nginx_alive(m):
                if m.ns != CLIENT_NS:
                    kill_ns_processes(m.ns)
                self.start_nginx(m)
        for m in self.mirrors:
            self.wait_ready(m)
        time.sleep(0.3)  # let the previous run's sockets close

    def down(self) -> None:
        for m in self.mirrors:
            if m.nginx is not None and m.nginx.poll() is None:
                try:
                    os.killpg(m.nginx.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        cleanup_all()
        for m in self.mirrors:
            if m.nginx is not None:
                m.nginx.wait()

    # events
    def stall(self, i: int) -> None:
        m = self.mirrors[i]
        tbf(m.ns, m.dev, 0, stalled=True)

    def die(self, i: int, mode: str) -> None:
        m = self.mirrors[i]
        if mode == "linkdown":
            sh("ip", "-n", m.ns, "link", "set", m.dev, "down")
        else:
            kill_ns_processes(m.ns)
            if m.nginx is not None:
                m.nginx.wait()


# -------------------------------------------------------------------------- data


def make_file(size: int) -> tuple[Path, str]:
    d = WORK / "data" / f"{size}"
    f = d / f"bench-{size}.bin"
    side = d / "sha256"
    if f.exists() and side.exists() and f.stat().st_size == size:
        return f, side.read_text().strip()
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    log(f"generating {size / MIB:.0f} MiB random file ...")
    h = hashlib.sha256()
    left = size
    with open(f, "wb") as fh:
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            h.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    side.write_text(h.hexdigest() + "\n")
    return f, h.hexdigest()


def warm(p: Path) -> None:
    """Read `p` through, so its pages are in the page cache when a tool asks nginx
    for them. The data files stay on disk between runs, and a case's outputs (up to
    4 GiB each) evict them: the first tool of a case could wait for the disk (in one
    run it took 4.9 s on loopback against 2.7-3.1 s for the same tool's later rounds,
    part of which was the other handicap of a first run: see run_case's warm-up)."""
    buf = bytearray(8 * MIB)
    with open(p, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)i?B?", s.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. 256M, 1G)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


# ------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    build: Callable[[list[str], Path], list[str]]
    binary: str
    single_source: bool = False  # only ever given the first URL


def tool_table(mfetch_bin: str) -> dict[str, Tool]:
    def aria2_common(out: Path) -> list[str]:
        # output-only flags; they do not change how it downloads
        return ["aria2c", "-d", str(out.parent), "-o", out.name, "--allow-overwrite=true",
                "--auto-file-renaming=false", "--console-log-level=error",
                "--summary-interval=0", "--download-result=hide", "-q"]

    def aria2_tuned(urls: list[str], out: Path) -> list[str]:
        return aria2_common(out) + [
            "-x16", f"-s{max(16, 2 * len(urls))}", "-k1M", "--file-allocation=none",
            "--uri-selector=adaptive", "--lowest-speed-limit=10K",
            "--connect-timeout=5", "--timeout=10", "--retry-wait=1", "--max-tries=0",
        ] + urls

    return {
        "mfetch": Tool("mfetch", lambda urls, out: [mfetch_bin, *urls, "-o", str(out),
                                                    "--quiet", "--json"], mfetch_bin),
        # Memory under many connections: 32 to one source from the start.
        "mfetch-32": Tool("mfetch-32", lambda urls, out: [
            mfetch_bin, *urls, "-o", str(out), "--quiet", "--json",
            "--connections", "32", "--max-connections", "32",
            "--max-host-connections", "32"], mfetch_bin),
        "aria2c": Tool("aria2c", lambda urls, out: aria2_common(out) + urls, "aria2c"),
        "aria2c-tuned": Tool("aria2c-tuned", aria2_tuned, "aria2c"),
        "axel": Tool("axel", lambda urls, out: ["axel", "-q", "-n", str(max(16, len(urls))),
                                                "-o", str(out), *urls], "axel"),
        "curl": Tool("curl", lambda urls, out: ["curl", "-sS", "-f", "-o", str(out), urls[0]],
                     "curl", single_source=True),
    }


# ------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    desc: str
    rates: list[float] | None  # Mbit/s; None = loopback
    size: int
    quick_size: int
    tools: list[str]
    event: str | None = None  # "stall" | "die"
    event_mirror: int = 0
    # Outputs on a tmpfs: what the network and the tool's CPU allow, without this
    # machine's disk.
    out_tmpfs: bool = False
    # Rounds beyond --repeat: the loopback cases take seconds and vary the most.
    extra_rounds: int = 0


MULTI = ["mfetch", "aria2c", "aria2c-tuned", "axel"]
CASES = [
    Case("hetero", "4 mirrors, heterogeneous rates", [200, 100, 50, 20],
         384 * MIB, 24 * MIB, MULTI + ["curl"]),
    Case("stall", "4 mirrors; fastest stalls (tbf -> 8 kbit/s) at 30% and stays stalled",
         [200, 100, 50, 20], 256 * MIB, 24 * MIB, MULTI, event="stall"),
    Case("die", "4 mirrors; fastest dies at 30%", [200, 100, 50, 20],
         256 * MIB, 24 * MIB, MULTI, event="die"),
    Case("sixteen", "16 mirrors at 100/50/25/10 Mbit/s (x4)", [100, 50, 25, 10] * 4,
         512 * MIB, 32 * MIB, MULTI),
    Case("loopback", "1 unshaped source on loopback (raw speed, CPU); curl -o is the reference",
         None, 2048 * MIB, 128 * MIB, MULTI + ["curl"], extra_rounds=2),
    Case("loopback-tmpfs", "the same, every output on a tmpfs (the disk left out)",
         None, 2048 * MIB, 128 * MIB, MULTI + ["curl"], out_tmpfs=True, extra_rounds=2),
    # Peak RSS must not grow with the file: the same 32 connections at 1 and 4 GiB.
    Case("memory-1g", "1 unshaped source on loopback, 32 connections, 1 GiB (peak RSS)",
         None, 1024 * MIB, 64 * MIB, ["mfetch-32", "aria2c-tuned"]),
    Case("memory-4g", "1 unshaped source on loopback, 32 connections, 4 GiB (peak RSS)",
         None, 4096 * MIB, 256 * MIB, ["mfetch-32", "aria2c-tuned"]),
]


@dataclass
class Result:
    tool: str
    result: str
    wall: float
    cpu: float
    rss_mib: float | None
    exit_code: int | None
    ideal: float | None
    event_at: float | None = None
    note: str = ""
    sources: list[dict] = field(default_factory=list)
    run: int = 1  # which round of the case (--repeat)
    steal: float | None = None  # share of the machine's CPU time stolen during the run

    @property
    def efficiency(self) -> float | None:
        if self.ideal is None or self.result != "right":
            return None
        return self.ideal / self.wall


def ideal_time(size: int, r0: float, event_at: float | None, r1: float) -> float:
    """Seconds to move `size` bytes at r0 B/s until event_at, r1 B/s after it."""
    if event_at is None or size <= r0 * event_at:
        return size / r0
    return event_at + (size - r0 * event_at) / r1


CURRENT_CHILD: list[int] = []


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def kill_timed_out(pid: int) -> tuple[int, resource.struct_rusage]:
    """Kill a hung tool. Under GNU time, kill the tool (time's child) first so time
    still reaps it and reports its rusage; then kill whatever is left in the group."""
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    while kids and time.monotonic() < deadline:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            return status, ru
        time.sleep(0.01)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, ru = os.wait4(pid, 0)
    return status, ru


def steal_ticks() -> int | None:
    """The machine's stolen time so far (/proc/stat, all CPUs, in clock ticks): time
    the hypervisor ran other guests while this one's CPUs wanted to run. None if the
    kernel does not say."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def steal_share(before: int | None, after: int | None, wall: float) -> float | None:
    """Stolen time between two steal_ticks() over `wall` seconds, as a share of the
    machine's CPU time."""
    if before is None or after is None or wall <= 0:
        return None
    return (after - before) / os.sysconf("SC_CLK_TCK") / (wall * (os.cpu_count() or 1))


def run_tool(cmd: list[str], timeout: float, stdout_path: Path, stderr_path: Path,
             rusage_path: Path, events: list[tuple[float, Callable[[], None]]]) -> tuple:
    """Spawn cmd in the client namespace, fire events at their offsets, reap with wait4.

    Returns (exit_code or None on timeout, wall, rusage, peak RSS KiB, fired event
    offsets, the share of the machine's CPU time stolen meanwhile)."""
    fired: list[float] = []
    pending = sorted(events, key=lambda e: e[0])
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        stolen = steal_ticks()
        t0 = time.monotonic()
        if GNU_TIME:
            rusage_path.unlink(missing_ok=True)
            cmd = [GNU_TIME, "-q", "-f", "%M", "-o", str(rusage_path), *cmd]
        p = subprocess.Popen(ns_exec(CLIENT_NS, *cmd), stdin=subprocess.DEVNULL,
                             stdout=so, stderr=se, start_new_session=True)
        CURRENT_CHILD.append(p.pid)
        timed_out = False
        # Woken the moment the child exits (a pidfd turns readable), not at the next
        # poll: polling every 5 ms added 0-5 ms to every wall time.
        exited, pidfd = None, -1
        try:
            pidfd = os.pidfd_open(p.pid)
        except (AttributeError, OSError):  # before Linux 5.3, or a seccomp profile: poll
            pass
        if pidfd >= 0:
            exited = select.poll()
            exited.register(pidfd, select.POLLIN)
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                now = time.monotonic() - t0
                while pending and now >= pending[0][0]:
                    _, fn = pending.pop(0)
                    fn()
                    fired.append(time.monotonic() - t0)
                if now > timeout:
                    timed_out = True
                    status, ru = kill_timed_out(p.pid)
                    break
                wake = min(pending[0][0] if pending else timeout, timeout) + 0.001
                rest = max(0.0, wake - (time.monotonic() - t0))
                if exited is not None:
                    exited.poll(rest * 1000)
                else:
                    time.sleep(min(rest, 0.001))
            wall = time.monotonic() - t0
            steal = steal_share(stolen, steal_ticks(), wall)
        finally:
            CURRENT_CHILD.remove(p.pid)
            if pidfd >= 0:
                os.close(pidfd)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped by us, tell Popen
        try:  # a timed-out tool's helpers may be in its group still
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    # ru_maxrss of a child we spawn starts at *our* high-water mark (Python spawns with
    # vfork and the kernel carries the old mm's peak across execve), so the tool's own
    # peak comes from GNU time, which forks it from a ~2 MiB process and reports the
    # ru_maxrss of its wait4. CPU (user+sys) is from our wait4 (time's own is ~0).
    rss_kib: float | None = None
    if GNU_TIME:
        try:
            rss_kib = float(rusage_path.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            rss_kib = None
    else:
        rss_kib = float(ru.ru_maxrss)
    return (None if timed_out else p.returncode), wall, ru, rss_kib, fired, steal


def run_case(case: Case, size: int, tools: dict[str, Tool], only: list[str] | None,
             timeout_factor: float, die_mode: str, min_timeout: float,
             repeat: int = 1, event_fraction: float = EVENT_FRACTION
             ) -> tuple[list[Result], dict]:
    data, digest = make_file(size)
    topo = Topology(case.rates, data.parent)
    results: list[Result] = []
    meta: dict = {"size": size, "rates": case.rates, "sha256": digest}
    out_dir = WORK / ("out-tmpfs" if case.out_tmpfs else "out")
    if case.out_tmpfs:
        out_dir.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", f"size={size + 64 * MIB}", "mfb-out", str(out_dir))
    try:
        log(f"[{case.name}] building topology ({len(topo.mirrors)} source(s)) ...")
        topo.up()
        urls = [m.url(data.name) for m in topo.mirrors]
        meta["urls"] = urls
        r0_all = sum(case.rates) * 1e6 / 8 if case.rates else 0.0
        if case.rates is None:
            # One untimed download first: on loopback, the run right after another
            # tool's output was written and deleted is 0.15-0.2 s quicker (2 GiB, the
            # same tool) than the first run of all, which then had a handicap of its
            # own (mfetch, first of round 1: 3.46 s against 1.89-2.00 after).
            empty_dir(out_dir)
            sh(*ns_exec(CLIENT_NS, "curl", "-sSf", "-o", str(out_dir / data.name), urls[0]))
            empty_dir(out_dir)
        # Round k runs every installed tool once, the order turned by k: with two
        # rounds or more no tool always runs first (the first run of all, right after
        # the topology came up, is still the first listed: every tool's served file
        # is warm, see warm()). The cyclic order stays: a tool always follows the same
        # other one within a round.
        names = []
        for t in case.tools:
            if only and t not in only:
                continue
            if shutil.which(tools[t].binary) is None and not Path(tools[t].binary).is_file():
                results.append(Result(t, "skipped (not installed)", 0, 0, 0, None, None))
            else:
                names.append(t)
        rounds = repeat + case.extra_rounds
        runs = [(names[(i + k) % len(names)], k) for k in range(rounds)
                for i in range(len(names))]
        for tname, k in runs:
            tool = tools[tname]
            label = f"{tname} #{k + 1}" if rounds > 1 else tname
            topo.reset()
            empty_dir(out_dir)
            out = out_dir / data.name
            tool_urls = urls[:1] if tool.single_source else urls

            # rates: for a single-source tool only the first mirror counts
            r_0: float | None
            r_1: float = 0.0
            if case.rates is None:
                r_0 = None
            elif tool.single_source:
                r_0 = case.rates[0] * 1e6 / 8
                r_1 = r_0
            else:
                r_0 = r_1 = r0_all
            events: list[tuple[float, Callable[[], None]]] = []
            if case.event and r_0 and case.rates:
                victim = case.event_mirror
                rate_v = case.rates[victim] * 1e6 / 8
                planned = event_fraction * size / r_0
                if case.event == "stall":
                    r_1 = r_0 - rate_v + STALL_KBIT * 1e3 / 8
                    events.append((planned, partial(topo.stall, victim)))
                else:
                    r_1 = r_0 - rate_v
                    events.append((planned, partial(topo.die, victim, die_mode)))
                expected: float | None = ideal_time(size, r_0, planned, r_1)
            else:
                expected = size / r_0 if r_0 else None
            if expected is None:
                timeout = max(min_timeout, 60.0)
            else:
                timeout = max(min_timeout, timeout_factor * expected + 10)

            cmd = tool.build(tool_urls, out)
            log(f"[{case.name}] {label}: timeout {timeout:.0f}s: {' '.join(cmd)}")
            so, se = WORK / "out.stdout", WORK / "out.stderr"
            # What earlier tools (and cases) wrote goes to disk now, not during this
            # tool's run: the one that came first in a case paid for the writeback.
            os.sync()
            warm(data)
            code, wall, ru, rss_kib, fired, steal = run_tool(cmd, timeout, so, se,
                                                             WORK / "out.rusage", events)
            event_at = fired[0] if fired else None
            ideal = ideal_time(size, r_0, event_at, r_1) if r_0 else None
            stderr_tail = se.read_text(errors="replace").strip().splitlines()[-1:]
            note = ""
            if code is None:
                res = "failed (timeout)"
            elif code != 0:
                # GNU time (and shells) report death by signal N as exit 128+N
                res = f"failed (exit {code})"
                if code > 128 and code - 128 in signal.valid_signals():
                    res = f"failed ({signal.Signals(code - 128).name})"
                elif code < 0:
                    res = f"failed ({signal.Signals(-code).name})"
                note = stderr_tail[0][:120] if stderr_tail else ""
            elif not out.exists():
                res = "failed (no file)"
            elif out.stat().st_size != size or sha256_file(out) != digest:
                res = "WRONG"
                note = f"size {out.stat().st_size}"
            else:
                res = "right"
            r = Result(tname, res, wall, ru.ru_utime + ru.ru_stime,
                       rss_kib / 1024 if rss_kib is not None else None,
                       code, ideal, event_at, note, run=k + 1, steal=steal)
            if tname == "mfetch" and code is not None:
                try:
                    summary = json.loads(so.read_text())
                    r.sources = summary.get("sources", [])
                except (ValueError, AttributeError):
                    if code == 0:
                        r.note = (r.note + " no/invalid JSON summary").strip()
            results.append(r)
            eff = f"{r.efficiency:.3f}" if r.efficiency is not None else "-"
            stole = f" steal {steal:.0%}" if steal is not None else ""
            log(f"[{case.name}] {label}: {res} wall {wall:.2f}s cpu {r.cpu:.2f}s "
                f"rss {r.rss_mib}MiB eff {eff}{stole}")
            empty_dir(out_dir)
    finally:
        log(f"[{case.name}] tearing down")
        topo.down()
        if case.out_tmpfs:
            sh("umount", str(out_dir), check=False)
    return results, meta


def empty_dir(d: Path) -> None:
    """`d` exists and is empty (it may be a mount point, which stays)."""
    d.mkdir(parents=True, exist_ok=True)
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# ----------------------------------------------------------------------- reports


STEAL_NOTED = 0.05  # a run's steal is worth a note from this share on

TABLE_HEAD = ("| tool | result | wall s | MB/s | CPU s | peak RSS MiB | ideal s | efficiency |",
              "|---|---|---:|---:|---:|---:|---:|---:|")


def fmt_table(case: Case, results: list[Result], size: int) -> list[str]:
    """The case's table: one row per run, or with --repeat one row per tool giving
    the median of its runs and, in brackets, their range."""
    by_tool: dict[str, list[Result]] = {}
    for r in results:
        by_tool.setdefault(r.tool, []).append(r)
    if all(len(rs) == 1 for rs in by_tool.values()):
        return _single_table(results, size)
    rows = list(TABLE_HEAD)
    notes = []
    for tool, runs in by_tool.items():
        if runs[0].result.startswith("skipped"):
            rows.append(f"| {tool} | {runs[0].result} | | | | | | |")
            continue
        right = [r for r in runs if r.result == "right"]
        counted = right or runs  # medians of the right runs, if any
        outcomes: dict[str, int] = {}
        for r in runs:
            outcomes[r.result] = outcomes.get(r.result, 0) + 1
        result = ", ".join(f"{o} {n}/{len(runs)}" for o, n in outcomes.items())
        wall = [r.wall for r in counted]
        mid = statistics.median(wall)
        cpu = [r.cpu for r in counted]
        mbs = f"{size / mid / 1e6:.1f}" if right else "-"
        rss = [r.rss_mib for r in runs if r.rss_mib is not None]
        ideals = [r.ideal for r in counted if r.ideal is not None]
        effs = [e for r in right if (e := r.efficiency) is not None]
        rows.append(f"| {tool} | {result} | {_spread(wall, 3)} | {mbs} | {_spread(cpu, 2)} | "
                    f"{f'{max(rss):.0f}' if rss else '-'} | "
                    f"{f'{statistics.median(ideals):.3f}' if ideals else '-'} | "
                    f"{_spread(effs, 3) if effs else '-'} |")
        each = "; ".join(f"#{r.run} {r.result} {r.wall:.3f}/{r.cpu:.2f}"
                         + (f"/{r.efficiency:.3f}" if r.efficiency is not None else "")
                         + (f" event at {r.event_at:.2f}s" if r.event_at is not None else "")
                         + (f" {note}" if (note := _steal_note(r)) else "")
                         + (f" ({r.note})" if r.note else "")
                         for r in sorted(runs, key=lambda r: r.run))
        notes.append(f"{tool} runs (wall s / CPU s / efficiency): {each}")
        typical = min(counted, key=lambda r: abs(r.wall - mid))
        if typical.sources:
            notes.append(f"{tool} per source (run #{typical.run}): "
                         + _per_source(typical.sources))
    steals = [r.steal for r in results if r.steal is not None]
    if steals:
        notes.append(f"CPU time stolen by the hypervisor during the runs: median "
                     f"{statistics.median(steals):.1%}, at most {max(steals):.1%}")
    rows.append("")
    rows += [f"- {n}" for n in notes + _cpu_pairs(by_tool)]
    return rows


def _steal_note(r: Result) -> str:
    """A run's steal, when it is worth a note (STEAL_NOTED or more), else ""."""
    return f"steal {r.steal:.0%}" if r.steal is not None and r.steal >= STEAL_NOTED else ""


def _cpu_pairs(by_tool: dict[str, list[Result]]) -> list[str]:
    """mfetch's CPU over aria2c's, round by round: a round's runs come one after the
    other, so each ratio carries less of the machine's drift than the medians do."""
    def right_cpu(tool: str) -> dict[int, float]:
        return {r.run: r.cpu for r in by_tool.get(tool, []) if r.result == "right"}

    out = []
    for mine in ("mfetch", "mfetch-32"):
        a = right_cpu(mine)
        for theirs in ("aria2c", "aria2c-tuned"):
            b = right_cpu(theirs)
            ratios = {k: a[k] / b[k] for k in sorted(a) if k in b and b[k] > 0}
            if len(ratios) > 1:
                out.append(f"CPU of {mine} / {theirs}, round by round: "
                           + ", ".join(f"#{k} {x:.2f}" for k, x in ratios.items())
                           + f" (median {statistics.median(ratios.values()):.2f})")
    return out


def _spread(xs: list[float], digits: int) -> str:
    """The median of `xs`, with their range in brackets when there are several."""
    m = f"{statistics.median(xs):.{digits}f}"
    return m if len(xs) == 1 else f"{m} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def _per_source(sources: list[dict]) -> str:
    return ", ".join(f"{s.get('url', '?').split('//')[-1].split('/')[0]}="
                     f"{s.get('bytes', 0) / 1e6:.0f}MB"
                     + (" dropped" if s.get("dropped") else "")
                     + (f" fail={s['failures']}" if s.get("failures") else "")
                     for s in sources)


def _single_table(results: list[Result], size: int) -> list[str]:
    rows = list(TABLE_HEAD)
    for r in results:
        if r.result.startswith("skipped"):
            rows.append(f"| {r.tool} | {r.result} | | | | | | |")
            continue
        mbs = f"{size / r.wall / 1e6:.1f}" if r.result == "right" else "-"
        ideal = f"{r.ideal:.3f}" if r.ideal is not None else "-"
        eff = f"{r.efficiency:.3f}" if r.efficiency is not None else "-"
        rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else "-"
        rows.append(f"| {r.tool} | {r.result} | {r.wall:.3f} | {mbs} | {r.cpu:.2f} | "
                    f"{rss} | {ideal} | {eff} |")
    notes = []
    for r in results:
        if r.event_at is not None:
            notes.append(f"{r.tool}: event at {r.event_at:.2f}s")
        if r.note:
            notes.append(f"{r.tool}: {r.note}")
        if r.sources:
            notes.append(f"{r.tool} per source: " + _per_source(r.sources))
        if note := _steal_note(r):
            notes.append(f"{r.tool}: {note}")
    if notes:
        rows.append("")
        rows += [f"- {n}" for n in notes]
    return rows


def version(cmd: list[str], pattern: str = r".*") -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
        text = (p.stdout + p.stderr).strip().splitlines()
        return text[0].split(" (")[0].strip() if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def mfetch_version(mfetch_bin: str) -> str:
    if not Path(mfetch_bin).exists():
        return "not installed"
    rev = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    dirty = sh("git", "-C", str(REPO), "status", "--porcelain", "--", "client", "common",
               check=False).stdout.strip()
    return f"{mfetch_bin} at git {rev or '?'}" + (" + uncommitted changes" if dirty else "")


def machine_info(mfetch_bin: str) -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cc = sh("sysctl", "-n", "net.ipv4.tcp_congestion_control", check=False).stdout.strip()
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"nproc {os.cpu_count()}, {cpu}, kernel {platform.release()}, "
                   f"tcp cc {cc or '?'}",
        "aria2c": version(["aria2c", "--version"]),
        "axel": version(["axel", "--version"]),
        "nginx": version(["nginx", "-v"]),
        "curl": version(["curl", "--version"]),
        "mfetch": mfetch_version(mfetch_bin),
        "python": platform.python_version(),
    }


def write_results(path: Path, info: dict, blocks: list[tuple[Case, list[Result], dict]],
                  argv: list[str], die_mode: str,
                  event_fraction: float = EVENT_FRACTION, repeat: int = 1) -> None:
    doc = __doc__ or ""
    formula = doc[doc.index("Ideal time and efficiency"):].strip()
    lines = ["# mfetch benchmark results", "",
             f"Generated by `bench/run.py {' '.join(argv)}`.", ""]
    for k, v in info.items():
        lines.append(f"- **{k}**: {v}")
    death = "link set down" if die_mode == "linkdown" else "nginx SIGKILLed"
    topology = (
        "Topology: one client namespace, one namespace per mirror, a veth pair each; "
        "each mirror's egress shaped with `tc tbf` (no netem, so no added latency); "
        "nginx with sendfile serves a random file from the page cache. "
        f"Stall: fastest mirror's tbf replaced by {STALL_KBIT} kbit/s at "
        f"{event_fraction:.0%} of the ideal time. Die: fastest mirror {death} at "
        f"{event_fraction:.0%} of the ideal time."
    )
    settings = [
        "- mfetch: `mfetch URL... -o OUT --quiet --json` (defaults)",
        "- aria2c: defaults (-x1 -s5 -k20M, prealloc), all mirrors as URIs of one file",
        ("- aria2c-tuned: `-x16 -s16 (2xN if more) -k1M --file-allocation=none "
         "--uri-selector=adaptive --lowest-speed-limit=10K --connect-timeout=5 "
         "--timeout=10 --retry-wait=1 --max-tries=0`"),
        "- axel: `-n max(16,N)` with all mirrors",
        ("- curl: `curl -o`, first (fastest) mirror only, so its ideal time uses that "
         "mirror's rate alone"),
    ]
    method = (
        "Wall: spawn to exit. CPU: user+sys from `os.wait4` of the child. Peak RSS: the "
        "tool's `ru_maxrss` as reported by GNU `time` (which forks it), because the "
        "harness's own wait4 value starts at the harness's peak. Tools run with default "
        "signal dispositions (SIGPIPE kills, as in a shell). Result: right = exit 0 and "
        "sha256 equal to the generated file; WRONG = exit 0 but different bytes; "
        "failed = non-zero exit, signal, or timeout "
        "(timeout = max(30 s, 4 x expected ideal + 10 s))."
    )
    more = ", ".join(f"{c.name} {repeat + c.extra_rounds}"
                     for c, _, _ in blocks if c.extra_rounds)
    if repeat > 1 or more:  # (--quick: one round, but the loopback cases have more)
        more = f" ({more})" if more else ""
        method += (
            f" Each case ran in {repeat} rounds{more}, every tool once per round, the "
            "order turned by one each round. A row gives the median of the tool's right "
            "runs (of all its runs if none was right) and their range in brackets; peak RSS "
            "is the highest of the runs; each run's efficiency uses its own event time. "
            "The notes list every run.")
    lines += ["", topology, "", "Tool settings:", "", *settings, "", method, "",
              "```", formula, "```", ""]
    for case, results, meta in blocks:
        rates = ("unshaped loopback" if case.rates is None
                 else "/".join(f"{r:g}" for r in case.rates) + f" Mbit/s (sum {sum(case.rates):g})")
        lines += [f"## {case.name}: {case.desc}", "",
                  f"File {meta['size'] / MIB:.0f} MiB ({meta['size']} bytes), rates {rates}.", ""]
        lines += fmt_table(case, results, meta["size"])
        lines.append("")
    path.write_text("\n".join(lines))


# -------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small files, smoke run")
    ap.add_argument("--size", type=parse_size, help="file size for every case (e.g. 512M)")
    ap.add_argument("--cases", default=",".join(c.name for c in CASES),
                    help="comma list of: " + ",".join(c.name for c in CASES))
    ap.add_argument("--tools", help="comma list (default: all per case): "
                    "mfetch,aria2c,aria2c-tuned,axel,curl")
    ap.add_argument("--mfetch", default=str(REPO / ".venv" / "bin" / "mfetch"),
                    help="path of the mfetch command")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="rounds per case, each running every tool once in a turned order; "
                         "the table gives each tool's median and range (default 3, 1 with "
                         "--quick)")
    ap.add_argument("--die-mode", choices=["kill", "linkdown"], default="kill")
    ap.add_argument("--event-at", type=float, default=EVENT_FRACTION, metavar="FRACTION",
                    help="when the stall or death comes, as a fraction of the nominal ideal "
                         "time (default %(default)s; later tests the tail)")
    ap.add_argument("--timeout-factor", type=float, default=4.0,
                    help="timeout = factor * expected ideal + 10 s")
    ap.add_argument("--min-timeout", type=float, default=30.0)
    ap.add_argument("--results", type=Path,
                    help="markdown output (default bench/RESULTS.md, "
                         "bench/work/RESULTS-quick.md with --quick)")
    ap.add_argument("--cleanup", action="store_true", help="only remove leftovers and exit")
    args = ap.parse_args()
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        ap.error("--repeat must be at least 1")

    if os.geteuid() != 0:
        log("bench/run.py needs root (ip netns, tc)")
        return 2
    for b in ("ip", "tc", "nginx", "curl"):
        if shutil.which(b) is None:
            log(f"missing required command: {b}")
            return 2

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    WORK.mkdir(parents=True, exist_ok=True)
    lock = open(WORK / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another bench/run.py is running (bench/work/.lock); not touching its namespaces")
        return 2
    cleanup_all()  # leftovers from a crashed earlier run
    if args.cleanup:
        return 0

    wanted = args.cases.split(",")
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown case(s): {sorted(unknown)}")
    only = args.tools.split(",") if args.tools else None
    tools = tool_table(args.mfetch)
    if only and set(only) - set(tools):
        ap.error(f"unknown tool(s): {sorted(set(only) - set(tools))}")
    if Path(args.mfetch).exists():
        chk = subprocess.run([args.mfetch, "--help"], capture_output=True, check=False)
        if chk.returncode != 0:
            log(f"note: {args.mfetch} --help exits {chk.returncode}; running it anyway")
    else:
        log(f"note: {args.mfetch} not found; mfetch rows will say 'skipped'")
    results_path = args.results or (WORK / "RESULTS-quick.md" if args.quick
                                    else HERE / "RESULTS.md")

    blocks = []
    t_start = time.monotonic()
    try:
        for case in CASES:
            if case.name not in wanted:
                continue
            size = args.size or (case.quick_size if args.quick else case.size)
            results, meta = run_case(case, size, tools, only, args.timeout_factor,
                                     args.die_mode, args.min_timeout, repeat,
                                     args.event_at)
            blocks.append((case, results, meta))
            print(f"\n## {case.name}: {case.desc} ({size / MIB:.0f} MiB)\n")
            print("\n".join(fmt_table(case, results, size)), flush=True)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for pid in CURRENT_CHILD:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cleanup_all()
        if blocks:
            results_path.parent.mkdir(parents=True, exist_ok=True)
            write_results(results_path, machine_info(args.mfetch), blocks,
                          sys.argv[1:], args.die_mode, args.event_at, repeat)
            log(f"wrote {results_path} (total {time.monotonic() - t_start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
