"""The agent as a background download server: fetches handed to it run here.

A :class:`Downloads` manager runs each fetch with the client's own code as a
library (client.plan builds the plan, client.fetcher fetches it, client.storage
keeps ``NAME.part`` and its control file ``NAME.mfetch``) into the agent's
DIR. The inventory never shares ``*.part`` or ``*.mfetch``; the finished file
appears under its own name only by the atomic rename at the end, so no half
file is ever shared, and the next scan announces it.

    start(targets)  a tracker NAME (looked up on the agent's tracker) or URLs of
                    one file (mirrors); returns at once, the fetch runs in a task
    pause(id)       stop; NAME.part and NAME.mfetch stay, so resume continues
                    from the verified pieces
    resume(id)      run again from where it was
    cancel(id)      stop and delete the partial files
    list()/get(id)  state, progress, rate and per-source figures (plain dicts, JSON-ready)

Memory stays small: bytes go straight to disk (client.storage), and only the
last MAX_KEPT finished fetches are remembered. The list is kept in the state
dir (``fetches.json``, rewritten atomically), so after a restart the fetches
that were running come back paused, ready to resume from their partial files.

A finished fetch never replaces a file that appeared in DIR while it ran: the
output is published with link() (which fails if the name exists) and then the
part file unlinked, instead of rename() (which replaces). The fetch then fails
saying so and keeps NAME.part (resume it once the name is free, or cancel it).
A sizeless stream is written to NAME.part.part, renamed to NAME.part when whole
and published the same way.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pathlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from client import config as client_config
from client.fetcher import Fetcher, content_key
from client.http import HttpClient, HttpOptions, check_url, origin, strip_userinfo
from client.plan import Plan, parse_sha256, plan_from_tracker, plan_from_urls, safe_name
from client.storage import PartFile
from client.stream import stream_fetch
from common.errors import ConfigError, MfetchError, StorageError
from common.security import TrackerLink

log = logging.getLogger("agent")

MAX_KEPT = 100  # finished, failed or cancelled fetches remembered for the page
MAX_OPEN = 32  # fetches not ended (planning, running, paused) at once
MAX_TARGETS = 32
MAX_TARGET_LEN = 4096


class State:
    PLANNING = "planning"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (State.PLANNING, State.RUNNING)
ENDED = (State.DONE, State.FAILED, State.CANCELLED)


class NotFound(MfetchError):
    """No fetch with that id."""


class Conflict(MfetchError):
    """The fetch is not in a state that allows the operation."""


class TooMany(MfetchError):
    """MAX_OPEN fetches are not ended yet: finish or cancel one first."""


@dataclass(eq=False)
class Download:
    id: str
    targets: tuple[str, ...]
    sha256: bytes | None
    name: str = ""
    state: str = State.PLANNING
    error: str = ""
    size: int | None = None
    path: str = ""
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    final_sha256: str = ""
    plan: Plan | None = None
    fetcher: Fetcher | None = None
    streamed: int = 0  # a sizeless stream: no pieces, no progress but this
    owns_part: bool = False  # NAME.part is ours (not another fetch's of the same name)
    saved_bytes: int = 0  # progress as last saved (before a restart)
    task: asyncio.Task[None] | None = None


def check_targets(targets: list[str]) -> tuple[str, ...]:
    """One NAME or URLs of one file; raises ConfigError with a one-line reason."""
    targets = [t.strip() for t in targets if isinstance(t, str) and t.strip()]
    if not targets:
        raise ConfigError("give a NAME or the URL(s) of one file")
    if len(targets) > MAX_TARGETS or any(len(t) > MAX_TARGET_LEN for t in targets):
        raise ConfigError(f"at most {MAX_TARGETS} URLs of at most {MAX_TARGET_LEN} characters")
    urls = [t for t in targets if "://" in t]
    if urls and len(urls) != len(targets):
        raise ConfigError("give either one NAME or URLs, not both")
    if not urls and len(targets) > 1:
        raise ConfigError("give one NAME at a time (several URLs are mirrors of one file)")
    for u in urls:
        check_url(u)
        if strip_userinfo(u) != u:
            # They would be kept in fetches.json and shown on the page: never take them.
            raise ConfigError("URLs with a user or password are not accepted for background "
                              "fetches")
    if not urls and safe_name(targets[0], "") != targets[0]:
        raise ConfigError(f"{targets[0]!r} is not a plain file name")
    return tuple(targets)


def publish(src: pathlib.Path, out: pathlib.Path) -> None:
    """Give the finished file `src` the name `out`, never replacing a file there.

    Raises StorageError if `out` exists (then `src` stays) or cannot be written.
    """
    try:
        os.link(src, out)
    except FileExistsError:
        raise StorageError(f"{out.name} appeared in the shared folder while it was fetched; "
                           f"not replacing it (the download is kept as {src.name})") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS,
                           errno.EMLINK):
            raise StorageError(f"cannot finish {out}: {e.strerror}") from None
        # No hard links on this filesystem: check, then rename (a small window remains).
        if os.path.lexists(out):
            raise StorageError(f"{out.name} appeared in the shared folder while it was "
                               f"fetched; not replacing it (kept as {src.name})") from None
        try:
            os.replace(src, out)
        except OSError as e2:
            raise StorageError(f"cannot finish {out}: {e2.strerror}") from None
        return
    try:
        os.unlink(src)
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"cannot finish {out}: {e.strerror}") from None


class _NoReplacePartFile(PartFile):
    """client.storage's PartFile, finished by publish(): never over a file that appeared."""

    def finish(self) -> pathlib.Path:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
        except OSError as e:
            raise StorageError(f"cannot finish {self.out}: {e.strerror}") from None
        publish(self.part, self.out)
        self._unlink(self.control)
        return self.out


PART_SUFFIXES = (".part", ".mfetch", ".part.part")  # a fetch's own files besides NAME


class Downloads:
    """Fetches into `directory`; a NAME is looked up on `tracker` (HOST:PORT), reached
    with `link` (TLS and token, as the agent reaches it). `agent_token` goes to the
    agents the tracker names as sources (the agent's own HTTP token: agents of one
    site share it), never to mirrors or URLs given by hand."""

    def __init__(self, directory: str, tracker: str,
                 client: client_config.ClientConfig | None = None,
                 state_file: str | None = None, *, link: TrackerLink | None = None,
                 agent_token: str | None = None) -> None:
        self.dir = pathlib.Path(directory)
        self.tracker = tracker
        self.link = link
        self.agent_token = agent_token
        self.cfg = client or client_config.ClientConfig()
        self.items: dict[str, Download] = {}
        self.shared = lambda name: False  # set by the agent: is `name` in its inventory?
        self.state_file = state_file
        if state_file:
            self._load()

    # ---- operations ---------------------------------------------------------

    def start(self, targets: list[str], sha256: str | None = None) -> Download:
        """Check and start a fetch; raises ConfigError for bad input, Conflict if a fetch
        not ended has that name, TooMany beyond MAX_OPEN fetches not ended."""
        checked = check_targets(targets)
        digest = parse_sha256(sha256) if sha256 else None
        d = Download(uuid.uuid4().hex[:12], checked, digest)
        if "://" not in checked[0]:
            d.name = checked[0]
            self._check_name(d, d.name)
        self._check_open()
        self.items[d.id] = d
        self._forget_old()
        self._launch(d)
        return d

    def get(self, fid: str) -> Download:
        d = self.items.get(fid)
        if d is None:
            raise NotFound(f"no fetch {fid!r}")
        return d

    async def pause(self, fid: str) -> Download:
        d = self.get(fid)
        if d.state not in ACTIVE:
            raise Conflict(f"fetch {fid} is {d.state}: only a running fetch can be paused")
        await self._stop(d)
        d.state = State.PAUSED
        self._save()
        return d

    def resume(self, fid: str) -> Download:
        d = self.get(fid)
        if d.state not in (State.PAUSED, State.FAILED):
            raise Conflict(f"fetch {fid} is {d.state}: only a paused or failed fetch resumes")
        if d.name:
            self._check_name(d, d.name)
        if d.state in ENDED:
            self._check_open()
        d.error = ""
        self._launch(d)
        return d

    async def cancel(self, fid: str) -> Download:
        d = self.get(fid)
        if d.state in (State.DONE, State.CANCELLED):
            raise Conflict(f"fetch {fid} is {d.state} already")
        await self._stop(d)
        d.state = State.CANCELLED
        # Only our own partial files, and never while another fetch has this name.
        if d.name and d.owns_part and self._holder(d.name, d) is None:
            d.owns_part = False
            for suffix in PART_SUFFIXES:
                with contextlib.suppress(OSError):
                    (self.dir / (d.name + suffix)).unlink()
        self._save()
        return d

    def _holder(self, name: str, besides: Download) -> Download | None:
        """Another fetch that has `name` for its output and is not over with it: planning,
        running, paused, or failed with its partial files kept."""
        for o in self.items.values():
            if o is not besides and o.name == name and (
                    o.state not in ENDED or (o.state == State.FAILED and o.owns_part)):
                return o
        return None

    def _check_name(self, d: Download, name: str) -> None:
        other = self._holder(name, d)
        if other is not None:
            raise Conflict(f"fetch {other.id} ({other.state}) is already fetching {name}: "
                           "resume or cancel it instead")

    def _check_open(self) -> None:
        if sum(1 for o in self.items.values() if o.state not in ENDED) >= MAX_OPEN:
            raise TooMany(f"{MAX_OPEN} fetches are running or paused already: "
                          "let one finish or cancel one first")

    async def close(self) -> None:
        """Stop every fetch, keeping partial files (as a pause)."""
        for d in list(self.items.values()):
            if d.state in ACTIVE:
                await self._stop(d)
                d.state = State.PAUSED
        self._save()

    # ---- views --------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        return [self.view(d) for d in sorted(self.items.values(), key=lambda d: -d.created)]

    def view(self, d: Download) -> dict[str, Any]:
        f = d.fetcher
        got, rate, sources = d.streamed or d.saved_bytes, 0.0, []
        if f is not None:
            plan, done = f.plan, f.store.done
            got = done.count(1) * plan.piece_size
            if done and done[-1]:
                got -= plan.pieces * plan.piece_size - plan.size
            running = d.state == State.RUNNING
            if running:
                rate = sum(f.sched.source_rate(i) for i in range(len(f.sources)))
            for i, s in enumerate(f.sources):
                st = f.sched.stats(i)
                sources.append({"url": s.url, "kind": s.kind, "bytes": st.bytes,
                                "rate": round(f.sched.source_rate(i)) if running else 0,
                                "connections": st.connections if running else 0,
                                "failures": st.failures, "dropped": st.dropped})
        elif d.plan is not None:
            sources = [{"url": s.url, "kind": s.kind, "bytes": 0, "rate": 0, "connections": 0,
                        "failures": 0, "dropped": ""} for s in d.plan.sources]
        if d.state == State.DONE and d.size is not None:
            got = d.size
        if d.state == State.DONE and d.seconds > 0 and d.size:
            rate = d.size / d.seconds
        progress = (got / d.size if d.size else 1.0 if d.state == State.DONE else 0.0)
        return {
            "id": d.id, "targets": list(d.targets), "name": d.name, "state": d.state,
            "error": d.error, "size": d.size, "bytes": got, "progress": round(progress, 4),
            "rate": round(rate), "sources": sources, "path": d.path,
            "sha256": d.final_sha256 or None,
            "shared": d.state == State.DONE and bool(d.name) and self.shared(d.name),
        }

    # ---- the fetch itself ---------------------------------------------------

    def _launch(self, d: Download) -> None:
        d.state = State.PLANNING
        d.started = time.monotonic()
        d.task = asyncio.create_task(self._run(d), name=f"fetch-{d.id}")
        self._save()

    async def _stop(self, d: Download) -> None:
        task, d.task = d.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, d: Download) -> None:
        try:
            await self._fetch(d)
        except asyncio.CancelledError:
            raise
        except MfetchError as e:
            d.state, d.error = State.FAILED, str(e)
            log.warning("fetch %s failed: %s", d.id, e)
        except Exception as e:  # never let one fetch take the agent down
            d.state, d.error = State.FAILED, f"internal error: {type(e).__name__}: {e}"
            log.exception("fetch %s failed", d.id)
        self._save()

    async def _fetch(self, d: Download) -> None:
        cfg = self.cfg
        urls = [t for t in d.targets if "://" in t]
        opts = HttpOptions(user_agent=cfg.user_agent, trusted=frozenset(origin(u) for u in urls),
                           agent_token=self.agent_token)
        async with HttpClient(opts, connect_timeout=cfg.connect_timeout,
                              read_timeout=cfg.stall_timeout + 5,
                              per_host=cfg.max_connections_per_host + 1) as http:
            if urls:
                plan = await plan_from_urls(http, [strip_userinfo(u) for u in urls], d.sha256)
            else:
                from common.tracker_client import TrackerClient  # grpc: only for a NAME

                async with TrackerClient(self.tracker, link=self.link) as tracker:
                    plan = await plan_from_tracker(http, tracker, d.targets[0], d.sha256)
            d.name = plan.name
            self._check_name(d, plan.name)  # NAME.part is another fetch's: never touch it
            d.plan = plan
            d.size = None if plan.stream else plan.size
            out = self.dir / plan.name
            if out.exists():
                raise StorageError(f"{plan.name} is already in the shared folder")
            for note in plan.notes:
                log.info("fetch %s: %s", d.id, note)
            d.state = State.RUNNING
            log.info("fetch %s: %s from %d source(s)", d.id, plan.name, len(plan.sources))
            if plan.stream:
                d.owns_part = True
                staged = out.with_name(out.name + ".part")  # stream_fetch adds its own .part
                size, sha, _ = await stream_fetch(http, plan.sources[0].url, staged,
                                                  plan.sha256, client_config.rate_limit(cfg))
                await asyncio.to_thread(publish, staged, out)
                d.size, d.final_sha256 = size, sha
            else:
                d.final_sha256 = await self._pieces(d, plan, out, http)
        d.path = str(out)
        d.seconds = time.monotonic() - d.started
        d.state = State.DONE
        log.info("fetch %s: %s done, %d bytes in %.1fs", d.id, plan.name, plan.size, d.seconds)

    async def _pieces(self, d: Download, plan: Plan, out: pathlib.Path,
                      http: HttpClient) -> str:
        store = _NoReplacePartFile(out)
        done, note = store.open(content_key(plan), plan.pieces)
        d.owns_part = True
        if note:
            log.info("fetch %s: %s", d.id, note)
        try:
            d.fetcher = Fetcher(plan, store, config=self.cfg.scheduler(), http=http, done=done,
                                limit=client_config.rate_limit(self.cfg))
            sha = await d.fetcher.run()
            store.finish()
        finally:
            store.close()
        return sha

    # ---- kept across restarts ------------------------------------------------

    def _save(self) -> None:
        """Write the list to the state file (temp file + rename); failures are logged."""
        if not self.state_file:
            return
        docs = []
        for d in self.items.values():
            v = self.view(d)
            docs.append({"id": d.id, "targets": list(d.targets),
                         "sha256": d.sha256.hex() if d.sha256 else None, "name": d.name,
                         "state": d.state, "error": d.error, "created": d.created,
                         "size": d.size, "bytes": v["bytes"], "path": d.path,
                         "final_sha256": d.final_sha256, "seconds": d.seconds,
                         "owns_part": d.owns_part})
        tmp = f"{self.state_file}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"version": 1, "fetches": docs}, f)
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.warning("cannot save the fetch list to %s: %s", self.state_file, e.strerror)

    def _load(self) -> None:
        assert self.state_file
        try:
            with open(self.state_file) as f:
                docs = json.load(f)["fetches"]
            for doc in docs:
                d = Download(str(doc["id"]), tuple(doc["targets"]),
                             bytes.fromhex(doc["sha256"]) if doc.get("sha256") else None,
                             name=doc.get("name", ""), state=doc["state"],
                             error=doc.get("error", ""), size=doc.get("size"),
                             path=doc.get("path", ""), created=float(doc["created"]),
                             seconds=float(doc.get("seconds", 0.0)),
                             final_sha256=doc.get("final_sha256", ""),
                             owns_part=bool(doc.get("owns_part")),
                             saved_bytes=int(doc.get("bytes", 0)))
                if d.state in ACTIVE:
                    d.state = State.PAUSED  # the agent stopped under it: resume continues
                self.items[d.id] = d
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the saved fetch list %s: %s", self.state_file, e)

    def _forget_old(self) -> None:
        ended = [d for d in self.items.values() if d.state in ENDED]
        for d in sorted(ended, key=lambda d: d.created)[:max(0, len(ended) - MAX_KEPT)]:
            del self.items[d.id]
