#!/usr/bin/env python3
"""A two-minute tour of mfetch on one machine: `make demo`.

In demo-run/ (git-ignored) it makes one random file (256 MiB by default,
cached between runs), gives each of three agents its own copy, starts a
tracker and the three agents on 127.0.0.1 (free ports), waits until the
tracker knows that all three hold the file, then fetches it by name with
`mfetch --json` and summarises what came from where. It prints the commands it
ran so they can be replayed by hand, and stops every process it started on
every path out (success, failure, Ctrl-C, SIGTERM).

Run it with the project's venv (`.venv/bin/python scripts/demo.py`): it uses
the console scripts beside that interpreter and the project's own tracker
client. Otherwise standard library only.

    scripts/demo.py [--size 256M] [--agents 3] [--timeout 120]
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-run"
BIN = Path(sys.executable).parent          # the venv's bin/: tracker, agent, mfetch
MiB = 1024 * 1024
BLOCK = 4 * MiB
_LISTENING = re.compile(r"listening on (\S+)")


class DemoError(Exception):
    """A step failed; the message says which and where to look."""


# --- output -------------------------------------------------------------------------------

def say(mark: str, what: str, detail: str = "") -> None:
    print(f"  {mark} {what:<10} {detail}".rstrip(), flush=True)


def rel(p: Path | str) -> str:
    """A path as the user would type it from the repo root."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def parse_size(text: str) -> int:
    """'256', '256M', '256MiB', '1G', '512k' -> bytes (a bare number is MiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256M or 1G)")
    unit = {"": MiB, "k": 1024, "m": MiB, "g": 1024 * MiB}[m.group(2).lower()]
    size = int(float(m.group(1)) * unit)
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def size_label(size: int) -> str:
    if size % (1024 * MiB) == 0:
        return f"{size // (1024 * MiB)}GiB"
    if size % MiB == 0:
        return f"{size // MiB}MiB"
    return f"{size}B"


# --- the test file ------------------------------------------------------------------------

def make_source(size: int) -> tuple[Path, str, bool]:
    """The cached random file of `size` bytes and its sha256; True if it was reused."""
    cache = WORK / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"sample-{size_label(size)}.bin"
    meta = path.with_suffix(".json")
    try:
        info = json.loads(meta.read_text())
        if path.stat().st_size == size == info["size"] and info["mtime_ns"] == path.stat().st_mtime_ns:
            return path, str(info["sha256"]), True
    except (OSError, ValueError, KeyError):
        pass
    for old in cache.iterdir():  # one cached size at a time: they are big
        old.unlink()
    digest = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    tmp.rename(path)
    meta.write_text(json.dumps({"size": size, "sha256": digest.hexdigest(),
                                "mtime_ns": path.stat().st_mtime_ns}))
    return path, digest.hexdigest(), False


def clone(src: Path, dst: Path) -> str:
    """Give dst its own copy of src (reflink where the filesystem can, else a copy).

    Never a hard link: each agent must hold a file of its own. Skipped when dst
    already is a copy from an earlier run (same size and mtime), so the agents'
    hash caches stay valid. Returns 'kept', 'reflink' or 'copy'.
    """
    st = src.stat()
    try:
        d = dst.stat()
        if (d.st_size, d.st_mtime_ns) == (st.st_size, st.st_mtime_ns) and d.st_ino != st.st_ino:
            return "kept"
    except FileNotFoundError:
        pass
    dst.unlink(missing_ok=True)
    how = "copy"
    try:
        import fcntl
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fcntl.ioctl(fo.fileno(), 0x40049409, fi.fileno())  # FICLONE
        how = "reflink"
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                           errno.ENOSYS, errno.EBADF):
            raise
        shutil.copyfile(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return how


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --- processes ----------------------------------------------------------------------------

@dataclass
class Proc:
    label: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    address: str = ""

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return ""
        return "\n".join("      | " + line for line in text[-lines:])


class Processes:
    """Everything the demo starts, each in its own session (so its own process
    group: an agent's hashing workers go with it), stopped by stop_all()."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.commands: list[str] = []

    def spawn(self, label: str, argv: list[str], log: Path,
              stdout: int | IO[bytes] | None = None) -> Proc:
        self.commands.append(shlex.join(argv))
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as logf:
            popen = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=logf if stdout is None else stdout, stderr=logf,
                start_new_session=True)
        proc = Proc(label, argv, popen, log)
        self.procs.append(proc)
        return proc

    def start_server(self, label: str, argv: list[str], log: Path, timeout: float = 30) -> Proc:
        """Spawn a server and wait for its `... listening on ADDRESS` line."""
        proc = self.spawn(label, argv, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _LISTENING.search(log.read_text(errors="replace"))
            if m:
                proc.address = m.group(1)
                return proc
            if proc.popen.poll() is not None:
                raise DemoError(f"{label} exited with status {proc.popen.returncode} before "
                                f"listening (log: {rel(log)}):\n{proc.log_tail()}")
            time.sleep(0.05)
        raise DemoError(f"{label} did not report 'listening on' within {timeout:.0f} s "
                        f"(log: {rel(log)}):\n{proc.log_tail()}")

    def stop_all(self) -> list[str]:
        """SIGTERM every process group, SIGKILL what is left after 5 s; returns
        the labels of any group that still has a process (should be none)."""
        for proc in self.procs:
            _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:  # the leader has exited or is stuck: clear its whole group
            _signal_group(proc.popen.pid, signal.SIGKILL)
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 3  # orphaned workers are reaped by init, not us
        while True:
            left = [p.label for p in self.procs if _signal_group(p.popen.pid, 0)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the process group; False if no process is left in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # an unrelated group reused the id: not ours to touch
        return False


def _raise_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# --- waiting for the tracker --------------------------------------------------------------

async def wait_until_located(tracker: str, name: str, sha256: str, agent_urls: list[str],
                             timeout: float) -> float:
    """Poll the tracker until every agent in agent_urls is a source of `name` with this
    sha256. Returns the seconds it took; DemoError after `timeout`."""
    from common.errors import NotFoundError, TrackerError
    from common.tracker_client import SourceKind, TrackerClient

    want = bytes.fromhex(sha256)
    start = time.monotonic()
    have: set[str] = set()
    last_error = ""
    async with TrackerClient(tracker, timeout=2.0) as client:
        while time.monotonic() - start < timeout:
            try:
                found: set[str] = set()
                for cand in await client.locate(name=name):
                    if cand.content.sha256 != want:
                        continue
                    for src in cand.sources:
                        if src.kind is SourceKind.AGENT:
                            found |= {u for u in agent_urls if src.url.startswith(u)}
                have, last_error = found, ""
            except NotFoundError:
                have, last_error = set(), ""
            except TrackerError as e:
                last_error = str(e)
            if len(have) == len(agent_urls):
                return time.monotonic() - start
            if sys.stdout.isatty():
                print(f"\r  … waiting    {len(have)}/{len(agent_urls)} agents have hashed and "
                      f"announced it ({time.monotonic() - start:.0f} s)", end="", flush=True)
            await asyncio.sleep(0.25)
    if sys.stdout.isatty():
        print()
    raise DemoError(f"after {timeout:.0f} s the tracker lists {len(have)} of "
                    f"{len(agent_urls)} agents as holding {name}"
                    + (f" (last error: {last_error})" if last_error else "")
                    + f"; see the logs in {rel(WORK / 'logs')}/ (or raise --timeout)")


# --- the demo -----------------------------------------------------------------------------

def bar(share: float, width: int = 24) -> str:
    full = round(share * width)
    return "█" * full + "·" * (width - full)


def run(args: argparse.Namespace, procs: Processes) -> None:
    for tool in ("tracker", "agent", "mfetch"):
        if not (BIN / tool).exists():
            raise DemoError(f"{BIN / tool} is missing: run the demo with the project's venv "
                            f"(`make demo`, or .venv/bin/python scripts/demo.py)")
    size, n = args.size, args.agents
    print(f"mfetch demo: one {mib(size)} file, {n} agents, a tracker, all on 127.0.0.1"
          f"  (work folder {rel(WORK)}/)")
    t0 = time.monotonic()
    src, sha256, cached = make_source(size)
    name = src.name
    say("✓", "test file", f"{rel(src)}  "
        + ("(cached)" if cached else f"(made in {time.monotonic() - t0:.1f} s)"))

    t0 = time.monotonic()
    dirs = [WORK / "agents" / f"agent{i}" for i in range(1, n + 1)]
    hows = []
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for entry in d.iterdir():  # only the demo's file is served
            if entry.name != name:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        hows.append(clone(src, d / name))
    for stale in (WORK / "agents").iterdir():
        if stale not in dirs:
            shutil.rmtree(stale, ignore_errors=True)
    words = {"copy": "copied", "reflink": "reflinked", "kept": "kept from the last run"}
    kinds = ", ".join(f"{hows.count(h)} {words[h]}" for h in words if h in hows)
    say("✓", "copies", f"{rel(WORK / 'agents')}/agent{{1..{n}}}/{name}  ({kinds}, "
        f"{time.monotonic() - t0:.1f} s)")

    logs = WORK / "logs"
    db = WORK / "tracker.db"
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        p.unlink(missing_ok=True)
    tracker = procs.start_server("tracker", [
        rel(BIN / "tracker"), "serve", "--listen", "127.0.0.1:0", "--db", rel(db),
        "--http", "127.0.0.1:0"],
        logs / "tracker.log")
    say("✓", "tracker", f"{tracker.address}")

    agents = []
    for i, d in enumerate(dirs, 1):
        agents.append(procs.start_server(f"agent{i}", [
            rel(BIN / "agent"), "serve", rel(d), "--tracker", tracker.address,
            "--listen", "127.0.0.1:0", "--state-dir", rel(WORK / "state" / f"agent{i}"),
            "--rescan-seconds", "1", "--settle-seconds", "0"], logs / f"agent{i}.log"))
    say("✓", "agents", "  ".join(a.address for a in agents))

    took = asyncio.run(wait_until_located(tracker.address, name, sha256,
                                          [a.address for a in agents], args.timeout))
    if sys.stdout.isatty():
        print("\r\033[K", end="")
    say("✓", "announced", f"the tracker lists all {n} agents as holders  ({took:.1f} s)")

    fetched = WORK / "fetched"
    shutil.rmtree(fetched, ignore_errors=True)
    fetched.mkdir(parents=True)
    out = fetched / name
    argv = [rel(BIN / "mfetch"), name, "--tracker", tracker.address, "-o", rel(out), "--json"]
    print(f"  → fetching   {shlex.join(argv)}", flush=True)
    t0 = time.monotonic()
    proc = procs.spawn("mfetch", argv, logs / "mfetch.log", stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    try:
        stdout, _ = proc.popen.communicate(timeout=args.timeout + size / MiB)
    except subprocess.TimeoutExpired:
        raise DemoError(f"mfetch took too long; its log: {rel(proc.log)}\n{proc.log_tail()}")
    wall = time.monotonic() - t0
    if proc.popen.returncode != 0:
        raise DemoError(f"mfetch failed with status {proc.popen.returncode} "
                        f"(log: {rel(proc.log)}):\n{proc.log_tail()}")
    try:
        result = json.loads(stdout)
    except ValueError:
        raise DemoError(f"mfetch --json printed no JSON:\n{stdout[:2000]!r}")

    got = sha256_file(out)
    seconds = float(result.get("seconds") or wall)
    print()
    print(f"  fetched   {rel(out)}")
    print(f"  size      {mib(out.stat().st_size)} in {seconds:.2f} s = "
          f"{out.stat().st_size / MiB / seconds:.0f} MiB/s   (wall {wall:.2f} s)")
    if got == sha256:
        print(f"  sha256    {got[:16]}…  ✓ identical to the original")
    else:
        print(f"  sha256    {got[:16]}…  ✗ DIFFERENT from the original {sha256[:16]}…")
    sources = result.get("sources") or []
    total = sum(int(s.get("bytes", 0)) for s in sources) or 1
    print()
    print(f"  {'source':<8} {'url':<24} {'bytes':>11} {'share':>6}")
    for s in sources:
        url = str(s.get("url", ""))
        label = next((a.label for a in agents if url.startswith(a.address)), s.get("kind", "?"))
        short = re.sub(r"^https?://", "", url).split("/", 1)[0]
        share = int(s.get("bytes", 0)) / total
        extra = []
        if s.get("failures"):
            extra.append(f"{s['failures']} failures")
        if s.get("dropped"):
            extra.append(f"dropped: {s.get('dropped_reason') or 'yes'}")
        print(f"  {label:<8} {short:<24} {mib(int(s.get('bytes', 0))):>11} {share:>6.1%}  "
              f"{bar(share)}" + (f"  ({'; '.join(extra)})" if extra else ""))
    for note in result.get("notes") or []:
        print(f"  note: {note}")
    if got != sha256:
        raise DemoError("the fetched file differs from the original")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=256 * MiB,
                    help="size of the test file: 256M (default), 1G, ... (a bare number is MiB)")
    ap.add_argument("--agents", type=int, default=3, choices=range(1, 17), metavar="N",
                    help="how many agents (default 3)")
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds to wait for the agents to announce the file (default 120)")
    args = ap.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    sys.path.insert(0, str(ROOT))  # the project's packages, even from an unrelated cwd
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)

    procs = Processes()
    status = 0
    try:
        run(args, procs)
    except DemoError as e:
        print(f"\n  ✗ demo failed: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt as e:
        print(f"\n  ✗ interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        left = procs.stop_all()
        if procs.commands:
            print(f"\n  commands run, from {ROOT} (logs in {rel(WORK / 'logs')}/; port 0 picks"
                  " a free port, which each server prints):")
            for cmd in procs.commands:
                print(f"    {cmd}")
        if left:
            print(f"  ✗ could not stop: {', '.join(left)}", file=sys.stderr)
            status = status or 1
        elif procs.procs:
            print(f"  stopped all {len(procs.procs)} processes it started.")
    return status


if __name__ == "__main__":
    sys.exit(main())
