#!/usr/bin/env python3
"""Swarm benchmark: one origin and N fetching hosts, each behind its own shaped link.

Run as root (it creates network namespaces):

    .venv/bin/python bench/swarm.py                  # writes bench/SWARM-RESULTS.md
    .venv/bin/python bench/swarm.py --size 16M --hosts 4 --rate 20   # smaller

Topology (namespaces named mfs-*, so it never touches `make bench`'s mfb-*):

    mfs-hub: bridge br0 10.78.0.254/24, the tracker
    mfs-o  : eth0 10.78.0.1   the origin agent, serving the file; egress tbf RATE
    mfs-h<i>: eth0 10.78.0.<i+1>  an agent (empty DIR) and mfetch; egress tbf RATE

Every host's uplink is shaped (tc tbf on its eth0 egress, helpers from
bench/run.py); downlinks are not. All fetchers are spawned together and each
host's finishing time is taken from that common start. Bytes the origin sent
are its eth0 tx_bytes counter (so they include TCP/IP headers, ~4%, and the
agent's few gRPC messages), read before and after each run.

Runs: swarming on (each mfetch with --agent of its host's agent, writing into
the agent's DIR), swarming off (plain mfetch, no agents on the hosts), and one
fetcher alone (swarming on, nobody else). Every output is checked by SHA-256.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as benchrun

REPO = HERE.parent
WORK = HERE / "work-swarm"
PREFIX = "mfs-"
HUB = PREFIX + "hub"
ORIGIN = PREFIX + "o"
NET = "10.78.0"
TRACKER = f"{NET}.254:7700"
BIN = REPO / ".venv" / "bin"
NAME = "swarm.bin"
VERBOSE: list[str] = []  # ["-v"] to log every request into mfetchN.err
TIMELINE = 0.0  # seconds between samples of every port's bytes (0: none); --timeline

# Runs in the hub: every TIMELINE seconds a line "monotonic-time rx(p0) tx(p0) rx(p1) ...".
# A bridge port's rx is what its host sent, its tx what the host received; p0 is the
# origin, p<i+1> fetcher i. One small process, so the sampling costs little CPU.
SAMPLER = """\
import sys, time
ports, step = sys.argv[2:], float(sys.argv[1])
def rd(p, d):
    with open(f"/sys/class/net/{p}/statistics/{d}_bytes") as f:
        return f.read().strip()
while True:
    print(f"{time.monotonic():.3f}", *(rd(p, d) for p in ports for d in ("rx", "tx")),
          flush=True)
    time.sleep(step)
"""

sh, ns_exec, log, tbf = benchrun.sh, benchrun.ns_exec, benchrun.log, benchrun.tbf


def our_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(PREFIX)]


def cleanup() -> None:
    for ns in our_namespaces():
        benchrun.kill_ns_processes(ns)
        sh("ip", "netns", "del", ns, check=False)


def host_ns(i: int) -> str:
    return f"{PREFIX}h{i}"


def addr(i: int) -> str:
    """Host i's address; the origin is host -1 -> .1, fetchers .2 .. ."""
    return f"{NET}.{i + 2}"


def topology_up(hosts: int, rate_bits: float) -> None:
    sh("ip", "netns", "add", HUB)
    sh("ip", "-n", HUB, "link", "set", "lo", "up")
    sh("ip", "-n", HUB, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", HUB, "addr", "add", f"{NET}.254/24", "dev", "br0")
    sh("ip", "-n", HUB, "link", "set", "br0", "up")
    for i, ns in [(-1, ORIGIN)] + [(i, host_ns(i)) for i in range(hosts)]:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        port = f"p{i + 1}"
        sh("ip", "link", "add", port, "netns", HUB, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", HUB, "link", "set", port, "master", "br0")
        sh("ip", "-n", HUB, "link", "set", port, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr(i)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        tbf(ns, "eth0", rate_bits)


def tx_bytes(ns: str) -> int:
    p = sh(*ns_exec(ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes"))
    return int(p.stdout.strip())


class Server:
    """A command in a namespace whose output goes to a log; waits for `listening on`."""

    def __init__(self, ns: str, argv: list[str], logfile: Path) -> None:
        self.logfile = logfile
        self.f = open(logfile, "w")  # noqa: SIM115
        self.p = subprocess.Popen(ns_exec(ns, *argv), stdout=self.f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening on" in self.logfile.read_text():
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.logfile.name}: did not start:\n"
                           f"{self.logfile.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.f.close()


def wait_located(timeout: float = 120.0) -> None:
    code = ("import asyncio,sys\n"
            "from common.tracker_client import TrackerClient\n"
            "async def m():\n"
            f"  async with TrackerClient('{TRACKER}') as t:\n"
            f"    await t.locate(name='{NAME}')\n"
            "asyncio.run(m())\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sh(*ns_exec(HUB, str(BIN / "python"), "-c", code), check=False).returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError("the origin's file never showed up at the tracker")


@dataclass
class HostResult:
    host: int
    seconds: float
    ok: bool
    own_seconds: float = 0.0  # what mfetch --json says: from after its start-up to the end
    from_origin: int = 0
    from_peers: int = 0
    error: str = ""


@dataclass
class RunResult:
    label: str
    fetchers: int
    swarm: bool
    hosts: list[HostResult] = field(default_factory=list)
    origin_tx: int = 0

    @property
    def last(self) -> float:
        return max(h.seconds for h in self.hosts)

    @property
    def last_own(self) -> float:
        return max(h.own_seconds for h in self.hosts)


def make_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            f.write(block)
            h.update(block)
            left -= len(block)
    old = time.time() - 3600
    os.utime(path, (old, old))
    return h.hexdigest()


def one_run(label: str, fetchers: int, swarm: bool, rate_bits: float, data: Path,
            digest: str, timeout: float) -> RunResult:
    run_dir = WORK / label
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    servers: list[Server] = []
    try:
        tr = Server(HUB, [str(BIN / "tracker"), "serve", "--listen", TRACKER,
                          "--db", str(run_dir / "tracker.db")], run_dir / "tracker.log")
        servers.append(tr)
        tr.wait_listening()
        agent_common = ["--tracker", TRACKER, "--rescan-seconds", "3600", "--settle-seconds",
                        "0", "--hash-workers", "1"]
        origin = Server(ORIGIN, [str(BIN / "agent"), "serve", str(data.parent), "--listen",
                                 f"{addr(-1)}:7070", "--state-dir", str(WORK / "origin-state"),
                                 *agent_common], run_dir / "origin.log")
        servers.append(origin)
        origin.wait_listening()
        wait_located()
        for i in range(fetchers):
            (run_dir / f"h{i}").mkdir()
            if swarm:
                a = Server(host_ns(i), [str(BIN / "agent"), "serve", str(run_dir / f"h{i}"),
                                        "--listen", "0.0.0.0:7070", "--advertise",
                                        f"http://{addr(i)}:7070", "--state-dir",
                                        str(run_dir / f"state{i}"), "--swarm-announce-seconds",
                                        "1", *agent_common], run_dir / f"agent{i}.log")
                servers.append(a)
        for s in servers[2:]:
            s.wait_listening()
        time.sleep(1.0)  # agents registered with the tracker
        tx0 = tx_bytes(ORIGIN)
        procs: list[tuple[int, subprocess.Popen, Path]] = []
        ends: dict[int, float] = {}
        sampler = None
        if TIMELINE:
            sampler = Server(HUB, [str(BIN / "python"), "-c", SAMPLER, str(TIMELINE),
                                   *(f"p{i}" for i in range(fetchers + 1))],
                             run_dir / "timeline.txt")
            servers.append(sampler)
        t0 = time.monotonic()
        (run_dir / "t0.txt").write_text(f"{t0:.3f}\n")  # the spawn, on the sampler's clock
        for i in range(fetchers):
            argv = [str(BIN / "mfetch"), NAME, "--tracker", TRACKER, "-o",
                    str(run_dir / f"h{i}" / NAME), "--json", *VERBOSE]
            if swarm:
                argv += ["--agent", "http://127.0.0.1:7070"]  # the registration API is loopback-only
            out = run_dir / f"mfetch{i}.json"
            p = subprocess.Popen(ns_exec(host_ns(i), *argv), stdout=open(out, "w"),  # noqa: SIM115
                                 stderr=open(run_dir / f"mfetch{i}.err", "w"),  # noqa: SIM115
                                 stdin=subprocess.DEVNULL)
            procs.append((i, p, out))

        def waiter(i: int, p: subprocess.Popen) -> None:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            ends[i] = time.monotonic() - t0

        threads = [threading.Thread(target=waiter, args=(i, p)) for i, p, _ in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)
        result = RunResult(label, fetchers, swarm, origin_tx=tx_bytes(ORIGIN) - tx0)
        for i, p, out in procs:
            target = run_dir / f"h{i}" / NAME
            ok = p.returncode == 0 and target.exists() and benchrun.sha256_file(target) == digest
            hr = HostResult(i, ends[i], ok)
            try:
                summary = json.loads(out.read_text())
                hr.own_seconds = float(summary["seconds"])
                for s in summary["sources"]:
                    if f"{addr(-1)}:" in s["url"]:
                        hr.from_origin += s["bytes"]
                    else:
                        hr.from_peers += s["bytes"]
            except (ValueError, KeyError, OSError):
                hr.error = (run_dir / f"mfetch{i}.err").read_text()[-300:]
            result.hosts.append(hr)
        return result
    finally:
        for s in reversed(servers):
            s.stop()


def fmt(size: int, rate_mbit: float, hosts: int, results: list[RunResult]) -> str:
    mib = 1 << 20
    alone = next((r for r in results if r.fetchers == 1), None)
    lines = [
        "# Swarm benchmark (`make bench-swarm`, bench/swarm.py)",
        "",
        (f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
         f"load average {os.getloadavg()[0]:.1f} at the end of the run."),
        (f"One origin and {hosts} fetching hosts in network namespaces on one bridge, every "
         f"host's uplink shaped to {rate_mbit:g} Mbit/s (tc tbf), downlinks unshaped; a "
         f"{size / mib:.0f} MiB random file; all fetchers spawned at the same moment."),
        ("Origin bytes: the origin's eth0 tx_bytes (with TCP/IP headers, about 4% over the "
         "payload). Seconds: from the common spawn to each mfetch's exit (Python start-up "
         "included: eight interpreters importing at once on two cores); mfetch's own "
         "`seconds` (--json) starts after its imports. Every output checked by SHA-256."),
        "",
        ("| run | fetchers | last finishes (s) | all finish times (s) | longest mfetch "
         "`seconds` | origin sent | origin / file | outputs right |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        times = ", ".join(f"{h.seconds:.1f}" for h in sorted(r.hosts, key=lambda h: h.host))
        lines.append(
            f"| {r.label} | {r.fetchers} | {r.last:.1f} | {times} | {r.last_own:.1f} | "
            f"{r.origin_tx / mib:.1f} MiB | {r.origin_tx / size:.2f}x | "
            f"{sum(h.ok for h in r.hosts)}/{len(r.hosts)} |")
    lines += ["", "Bytes each fetcher took from the origin and from peers (mfetch --json):", "",
              "| run | host | from origin (MiB) | from peers (MiB) |", "|---|---|---|---|"]
    for r in results:
        for h in sorted(r.hosts, key=lambda h: h.host):
            lines.append(f"| {r.label} | h{h.host} | {h.from_origin / mib:.1f} | "
                         f"{h.from_peers / mib:.1f} |" + (f" {h.error}" if h.error else ""))
    on = next((r for r in results if r.swarm and r.fetchers > 1), None)
    if on and alone:
        lines += ["", "Targets:", "",
                  (f"- origin bytes with {on.fetchers} fetchers, swarming on: "
                   f"{on.origin_tx / size:.2f}x the file (target <= 1.3x)"),
                  (f"- last of {on.fetchers} finishes at {on.last:.1f} s against "
                   f"{alone.last:.1f} s for one alone: {on.last / alone.last:.2f}x "
                   "(target <= 1.5x); without Python start-up (mfetch's own `seconds`): "
                   f"{on.last_own:.1f} s against {alone.last_own:.1f} s, "
                   f"{on.last_own / max(alone.last_own, 1e-9):.2f}x")]
    return "\n".join(lines) + "\n"


def parse_size(s: str) -> int:
    return benchrun.parse_size(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--rate", type=float, default=20.0, help="Mbit/s of every uplink")
    ap.add_argument("--size", default="32M")
    ap.add_argument("--runs", default="on,off,alone", help="which runs, in order")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default=str(HERE / "SWARM-RESULTS.md"))
    ap.add_argument("--timeline", type=float, default=0.0, metavar="SECONDS",
                    help="sample every port's bytes this often into "
                         "bench/work-swarm/RUN/timeline.txt (spawn time in t0.txt)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="mfetch -v: every request logged in bench/work-swarm/RUN/mfetchN.err")
    args = ap.parse_args()
    if args.verbose:
        VERBOSE.append("-v")
    global TIMELINE
    TIMELINE = args.timeline
    if os.geteuid() != 0:
        log("bench/swarm.py must run as root (network namespaces)")
        return 2
    size = parse_size(args.size)
    cleanup()
    if WORK.exists():
        shutil.rmtree(WORK)
    data = WORK / "origin" / NAME
    digest = make_file(data, size)
    results: list[RunResult] = []
    try:
        topology_up(args.hosts, args.rate * 1e6)
        for run in args.runs.split(","):
            label = {"on": "swarming on", "off": "swarming off",
                     "alone": "one fetcher alone"}[run]
            n = 1 if run == "alone" else args.hosts
            log(f"run: {label}, {n} fetchers")
            r = one_run(run, n, run != "off", args.rate * 1e6, data, digest, args.timeout)
            log(f"  last finished at {r.last:.1f}s, origin sent {r.origin_tx / size:.2f}x "
                f"the file, {sum(h.ok for h in r.hosts)}/{n} right")
            results.append(r)
    finally:
        cleanup()
    text = fmt(size, args.rate, args.hosts, results)
    Path(args.out).write_text(text)
    print(text)
    return 0 if all(h.ok for r in results for h in r.hosts) else 1


if __name__ == "__main__":
    sys.exit(main())
