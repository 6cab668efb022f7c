#!/usr/bin/env python3
"""Tracker load test: many agents (announce + heartbeat) and many clients (locate)
against real `tracker serve` processes on loopback, SQLite and Redis, one and two trackers.

    bench/tracker_load.py                          # default: 1,000 agents x 100 files
    bench/tracker_load.py --agents 10000 --files 1000 --locate-seconds 30   # the issue's scale

For each setup it starts the trackers (and a private redis-server for Redis), then:

1. announce: every agent registers and announces its whole inventory
   (`--files` holdings, replace=true), `--concurrency` at a time, spread
   round-robin over the trackers; reports announces/s, holdings/s, p50/p99.
2. locate: `--clients` worker processes send Locate(name) as fast as they can
   (`--concurrency` in flight each) for `--locate-seconds`, while another
   process heartbeats every agent once per `--heartbeat-seconds`; reports
   locates/s, p50/p99, heartbeats/s.
3. memory: each tracker's peak RSS (VmHWM from /proc) and redis-server's.

Setups (`--setups`): `sqlite-1`, `redis-1`, `redis-2` (two tracker processes on one
Redis), `sqlite-1w2` (one `tracker serve --workers 2`), and `null-1`: the ceiling, a
gRPC server with the tracker's methods that answers each call with a fixed,
pre-encoded reply and does nothing else (bench/null_tracker.py). The report gives
each tracker's locates/s as a share of it. `--tracker-cmd` runs another tree's
`tracker` (A/B comparisons under the same load generator).

Each file name is held by about `--holders` agents (the catalog is sized so), and
every locate resolves to one content with that many sources. The load generator
runs on the same machine and competes with the trackers for its cores: the numbers
are a floor for what the tracker does on a machine of its own.

Writes bench/TRACKER-RESULTS.md (or --out).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import pathlib
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN = pathlib.Path(sys.executable).parent
MAX_MESSAGE = 64 * 1024 * 1024
SIZE = 700 * 1024 * 1024  # every made-up content's size


@dataclass(frozen=True)
class Params:
    agents: int
    files: int
    catalog: int
    concurrency: int
    clients: int
    locate_seconds: float
    heartbeat_seconds: int


# --- load generation (runs in worker processes; grpc is imported only there) ------------------

def _holding(pb, j: int):  # type: ignore[no-untyped-def]
    from common.identity import piece_size_for

    seed = f"content-{j}".encode()
    return pb.Holding(path=f"data/file-{j}.bin", content=pb.Content(
        size=SIZE, sha256=hashlib.sha256(seed).digest(), piece_size=piece_size_for(SIZE),
        root=hashlib.sha256(b"root" + seed).digest()))


_ENCODED: dict[int, bytes] = {}  # catalog entry -> its AnnounceRequest.added field, encoded


def _added(pb, j: int) -> bytes:  # type: ignore[no-untyped-def]
    """Field 3 (added) of an AnnounceRequest holding catalog entry j, encoded once per
    process: the generator shares the cores with the tracker, so it should not spend
    them rebuilding the same 10 million messages."""
    raw = _ENCODED.get(j)
    if raw is None:
        body = _holding(pb, j).SerializeToString()
        raw = _ENCODED[j] = b"\x1a" + _varint(len(body)) + body
    return raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _inventory(agent: int, p: Params) -> list[int]:
    rng = random.Random(agent)
    return rng.sample(range(p.catalog), p.files)


def _channel(address: str):  # type: ignore[no-untyped-def]
    import grpc

    return grpc.aio.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE)])


async def _announce(addresses: list[str], agents: range, p: Params) -> list[float]:
    from common.api import tracker_pb2 as pb
    from common.api import tracker_pb2_grpc as pb_grpc

    channels = [_channel(a) for a in addresses]
    stubs = [pb_grpc.TrackerStub(c) for c in channels]
    # Announce requests go out as bytes built from the encoded holdings (see _added).
    announces = [c.unary_unary("/mfetch.v1.Tracker/Announce",
                               response_deserializer=pb.AnnounceReply.FromString)
                 for c in channels]
    queue = list(agents)
    lat: list[float] = []
    registered: list[int] = []

    async def keep_alive() -> None:
        # Agents registered early heartbeat while the others announce, as real ones do:
        # at 10,000 agents the announce phase lasts longer than a lease.
        sem = asyncio.Semaphore(256)

        async def beat(i: int) -> None:
            async with sem:
                await stubs[i % len(stubs)].Heartbeat(
                    pb.HeartbeatRequest(agent_id=f"agent-{i:06d}"), timeout=60)

        while True:  # each registered agent once per heartbeat interval, as agents do
            started = time.perf_counter()
            await asyncio.gather(*(beat(i) for i in list(registered)))
            await asyncio.sleep(max(0.0, p.heartbeat_seconds - (time.perf_counter() - started)))

    async def one() -> None:
        while queue:
            i = queue.pop()
            stub = stubs[i % len(stubs)]
            agent_id = f"agent-{i:06d}"
            req = pb.AnnounceRequest(agent_id=agent_id, replace=True).SerializeToString() + \
                b"".join(_added(pb, j) for j in _inventory(i, p))
            await stub.Register(pb.RegisterRequest(
                agent_id=agent_id, base_url=f"http://10.{i >> 16 & 255}.{i >> 8 & 255}."
                f"{i & 255}:7070"), timeout=60)
            registered.append(i)
            t = time.perf_counter()
            await announces[i % len(announces)](req, timeout=120)
            lat.append(time.perf_counter() - t)

    beats = asyncio.create_task(keep_alive())
    await asyncio.gather(*(one() for _ in range(p.concurrency)))
    beats.cancel()
    for c in channels:
        await c.close()
    return lat


async def _locate(addresses: list[str], seed: int, p: Params) -> list[float]:
    import grpc

    from common.api import tracker_pb2 as pb
    from common.api import tracker_pb2_grpc as pb_grpc

    channels = [_channel(a) for a in addresses]
    stubs = [pb_grpc.TrackerStub(c) for c in channels]
    rng = random.Random(seed)
    lat: list[float] = []
    end = time.perf_counter() + p.locate_seconds
    errors = 0

    async def one(k: int) -> None:
        nonlocal errors
        stub = stubs[(seed + k) % len(stubs)]
        while time.perf_counter() < end:
            req = pb.LocateRequest(name=f"file-{rng.randrange(p.catalog)}.bin")
            t = time.perf_counter()
            try:
                await stub.Locate(req, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1  # NOT_FOUND for a catalog entry nobody drew: still an answer
            lat.append(time.perf_counter() - t)

    await asyncio.gather(*(one(k) for k in range(p.concurrency)))
    for c in channels:
        await c.close()
    return lat


async def _heartbeat(addresses: list[str], p: Params) -> list[float]:
    """Every agent once per heartbeat interval, evenly paced, for the locate window.
    A heartbeat answered NOT_FOUND (lease lapsed) is recorded as -1."""
    import grpc

    from common.api import tracker_pb2 as pb
    from common.api import tracker_pb2_grpc as pb_grpc

    channels = [_channel(a) for a in addresses]
    stubs = [pb_grpc.TrackerStub(c) for c in channels]
    rate = p.agents / p.heartbeat_seconds
    start = time.perf_counter()
    lat: list[float] = []
    sem = asyncio.Semaphore(64)
    tasks = []

    async def beat(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            try:
                await stubs[i % len(stubs)].Heartbeat(
                    pb.HeartbeatRequest(agent_id=f"agent-{i:06d}"), timeout=30)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                lat.append(-1.0)  # its lease lapsed (counted and reported), as a real agent would see
                return
            lat.append(time.perf_counter() - t)

    n = 0
    while time.perf_counter() - start < p.locate_seconds:
        due = int((time.perf_counter() - start) * rate)
        while n < due:
            tasks.append(asyncio.create_task(beat(n % p.agents)))
            n += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    for c in channels:
        await c.close()
    return lat


def _worker(job: tuple[str, list[str], object, Params]) -> list[float]:
    kind, addresses, arg, p = job
    if kind == "announce":
        assert isinstance(arg, range)
        return asyncio.run(_announce(addresses, arg, p))
    if kind == "locate":
        assert isinstance(arg, int)
        return asyncio.run(_locate(addresses, arg, p))
    return asyncio.run(_heartbeat(addresses, p))


# --- processes under test -------------------------------------------------------------------

TRACKER_CMD = [str(BIN / "tracker")]  # --tracker-cmd replaces it (A/B against another tree)


def _start_tracker(db: str, p: Params, workers: int = 1) -> tuple[subprocess.Popen[str], str]:
    if db == "null":  # the ceiling: bench/null_tracker.py, a tracker that does no work
        argv = [sys.executable, str(ROOT / "bench" / "null_tracker.py"), "--listen", "127.0.0.1:0"]
    else:
        argv = [*TRACKER_CMD, "serve", "--listen", "127.0.0.1:0", "--db", db, "--http", "off",
                "--lease-seconds", str(p.heartbeat_seconds * 3),
                "--heartbeat-seconds", str(p.heartbeat_seconds)]
        if workers > 1:
            argv += ["--workers", str(workers)]
    popen = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "GRPC_VERBOSITY": "NONE"})
    assert popen.stdout is not None
    for line in popen.stdout:
        m = re.search(r"listening on (\S+)", line)
        if m:
            return popen, m.group(1)
    raise RuntimeError(f"tracker did not start (exit {popen.wait()})")


def _peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) in bytes, summed with its children's (--workers N: the
    workers; the supervisor itself is small)."""
    total = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                total = int(line.split()[1]) * 1024
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                total += _peak_rss(int(entry.name))
    return total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Result:
    setup: str
    announce_per_s: float
    holdings_per_s: float
    announce_p50: float
    announce_p99: float
    locate_per_s: float
    locate_p50: float
    locate_p99: float
    heartbeat_per_s: float
    heartbeat_p99: float
    tracker_rss: list[int]
    redis_rss: int
    lapsed: int = 0  # heartbeats answered NOT_FOUND during the locate phase


def run_setup(name: str, backend: str, trackers: int, p: Params, pool: mp.pool.Pool,
              workdir: pathlib.Path, workers: int = 1) -> Result:
    from tests import redis_server

    redis = None
    procs: list[subprocess.Popen[str]] = []
    try:
        if backend == "redis":
            redis = redis_server.start()
            db = redis.url
        elif backend == "null":
            db = "null"
        else:
            db = str(workdir / f"{name}.db")
        addresses = []
        for _ in range(trackers):
            popen, address = _start_tracker(db, p, workers)
            procs.append(popen)
            addresses.append(address)
        print(f"[{name}] announcing {p.agents} agents x {p.files} files ...", flush=True)
        parts = max(1, min(p.clients, 2))
        chunks = [range(k, p.agents, parts) for k in range(parts)]
        t = time.perf_counter()
        lats = pool.map(_worker, [("announce", addresses, c, p) for c in chunks])
        took = time.perf_counter() - t
        ann = [x for lat in lats for x in lat]
        print(f"[{name}] locating for {p.locate_seconds:.0f}s with {p.clients} client "
              f"processes x {p.concurrency} in flight, heartbeats in another ...", flush=True)
        jobs = [("heartbeat", addresses, 0, p)] + [
            ("locate", addresses, k, p) for k in range(p.clients)]
        t2 = time.perf_counter()
        out = pool.map(_worker, jobs)
        took2 = time.perf_counter() - t2
        beats, loc = [x for x in out[0] if x >= 0], [x for lat in out[1:] for x in lat]
        lapsed = len(out[0]) - len(beats)
        if lapsed:
            print(f"[{name}] {lapsed} heartbeats found their lease lapsed", flush=True)
        rss = [_peak_rss(pr.pid) for pr in procs]
        redis_rss = _peak_rss(redis.popen.pid) if redis else 0
        return Result(name, len(ann) / took, len(ann) * p.files / took,
                      _pct(ann, 0.5), _pct(ann, 0.99), len(loc) / p.locate_seconds,
                      _pct(loc, 0.5), _pct(loc, 0.99), len(beats) / max(took2, 1e-9),
                      _pct(beats, 0.99), rss, redis_rss, lapsed)
    finally:
        for pr in procs:
            pr.terminate()
            try:
                pr.wait(10)
            except subprocess.TimeoutExpired:
                pr.kill()
        if redis:
            redis.stop()


def report(results: list[Result], p: Params, total: float) -> str:
    mib = 1024 * 1024
    ms = 1000
    lines = [
        "# Tracker load test",
        "",
        (f"`make bench-tracker` ({' '.join(sys.argv[1:]) or 'defaults'}): "
        f"{p.agents:,} agents x {p.files:,} files "
        f"({p.agents * p.files:,} holdings; catalog of {p.catalog:,} names, so each name "
        f"has ~{p.agents * p.files // p.catalog} holders), heartbeats every "
        f"{p.heartbeat_seconds} s during the locate phase, {p.clients} locate client "
        f"processes x {p.concurrency} in flight for {p.locate_seconds:.0f} s. "
        f"Machine: {os.cpu_count()} cores; the load generator runs on the same cores as "
        f"the trackers and Redis, so these are lower bounds. Whole run: {total:.0f} s."),
        "",
        ("| setup | announces/s | holdings/s | announce p50 / p99 ms | locates/s | "
        "locate p50 / p99 ms | heartbeats/s (p99 ms) | tracker peak RSS MiB | "
        "redis peak RSS MiB |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.setup} | {r.announce_per_s:,.0f} | {r.holdings_per_s:,.0f} | "
            f"{r.announce_p50 * ms:.1f} / {r.announce_p99 * ms:.1f} | {r.locate_per_s:,.0f} | "
            f"{r.locate_p50 * ms:.1f} / {r.locate_p99 * ms:.1f} | "
            f"{r.heartbeat_per_s:,.0f} ({r.heartbeat_p99 * ms:.1f}) | "
            f"{' + '.join(f'{x / mib:.0f}' for x in r.tracker_rss)} | "
            f"{r.redis_rss / mib:.0f} |" if r.redis_rss else
            f"| {r.setup} | {r.announce_per_s:,.0f} | {r.holdings_per_s:,.0f} | "
            f"{r.announce_p50 * ms:.1f} / {r.announce_p99 * ms:.1f} | {r.locate_per_s:,.0f} | "
            f"{r.locate_p50 * ms:.1f} / {r.locate_p99 * ms:.1f} | "
            f"{r.heartbeat_per_s:,.0f} ({r.heartbeat_p99 * ms:.1f}) | "
            f"{' + '.join(f'{x / mib:.0f}' for x in r.tracker_rss)} | - |")
    by = {r.setup: r for r in results}
    if "null x1" in by:
        ceiling = by["null x1"].locate_per_s
        lines += ["", ("`null x1` is the ceiling: bench/null_tracker.py answers every call with "
                       "a fixed, pre-encoded reply of the same shape (a Locate answer of 10 "
                       "sources) and does no work at all, under the same load generator on the "
                       "same cores. Tracker locates/s as a share of it: " + ", ".join(
                           f"{r.setup} {r.locate_per_s / max(ceiling, 1e-9):.0%}"
                           for r in results if r.setup != "null x1") + ".")]
    lines += ["", ("Targets (issue \"Tracker at scale\", for 10,000 agents x 1,000 files): "
              "one tracker answers >= 3,000 locates/s with p99 < 20 ms in < 2 GiB; two "
              "trackers on Redis answer >= 1.6x the locates of one.")]
    if "redis x1" in by and "redis x2" in by:
        ratio = by["redis x2"].locate_per_s / max(by["redis x1"].locate_per_s, 1e-9)
        lines.append(f"Measured here: two Redis trackers answer {ratio:.2f}x the locates of one "
                     f"({'meets' if ratio >= 1.6 else 'misses'} the 1.6x target; trackers, "
                     "Redis and the load generator share the machine's cores).")
    for r in results:
        if r.lapsed:
            lines.append(f"{r.setup}: {r.lapsed:,} heartbeats found their agent's lease "
                         "lapsed (the tracker fell behind during the announce phase).")
    for r in results:
        if r.setup.endswith("x1") and r.setup != "null x1":
            ok = r.locate_per_s >= 3000 and r.locate_p99 < 0.020
            lines.append(f"{r.setup}: {r.locate_per_s:,.0f} locates/s, p99 "
                         f"{r.locate_p99 * 1000:.0f} ms: {'meets' if ok else 'misses'} the "
                         "3,000/s, p99 < 20 ms target at this scale.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100, help="holdings per agent")
    ap.add_argument("--holders", type=int, default=10, help="agents per file name (about)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight per process")
    ap.add_argument("--clients", type=int, default=2, help="locate client processes")
    ap.add_argument("--locate-seconds", type=float, default=10)
    ap.add_argument("--heartbeat-seconds", type=int, default=10)
    ap.add_argument("--setups", default="null-1,sqlite-1,redis-1,redis-2",
                    help="comma-separated BACKEND-TRACKERS[wWORKERS]: sqlite-1, redis-2 (two "
                         "tracker processes on one Redis), sqlite-1w2 (one `tracker serve "
                         "--workers 2`), null-1 (the no-work ceiling, bench/null_tracker.py)")
    ap.add_argument("--tracker-cmd", default=None,
                    help="command that runs `tracker` (default: this venv's), e.g. another "
                         "tree's, to compare two versions under the same load generator")
    ap.add_argument("--out", default=str(ROOT / "bench" / "TRACKER-RESULTS.md"))
    a = ap.parse_args()
    if a.tracker_cmd:
        TRACKER_CMD[:] = shlex.split(a.tracker_cmd)
    if shutil.which("redis-server") is None and "redis" in a.setups:
        sys.exit("bench-tracker: redis-server is not on PATH (apt-get install -y redis-server)")
    p = Params(agents=a.agents, files=a.files,
               catalog=max(a.files, a.agents * a.files // max(1, a.holders)),
               concurrency=a.concurrency, clients=a.clients, locate_seconds=a.locate_seconds,
               heartbeat_seconds=a.heartbeat_seconds)
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mfetch-bench-") as tmp, \
            mp.get_context("spawn").Pool(a.clients + 1) as pool:
        for setup in a.setups.split(","):
            backend, n = setup.split("-")
            n, _, w = n.partition("w")
            name = f"{backend} x{n}" + (f" ({w} workers)" if w else "")
            r = run_setup(name, backend, int(n), p, pool, pathlib.Path(tmp), int(w or 1))
            print(f"  {r}", flush=True)
            results.append(r)
    text = report(results, p, time.perf_counter() - start)
    pathlib.Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
