"""Wiring: hash cache + inventory + HTTP server + reporter, started and stopped as one.

`start()` binds HTTP first and returns at once; the first scan (hashing) and
the tracker link run in the background, so HTTP serves while hashing goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from agent.config import AgentConfig
from agent.downloads import Downloads
from agent.fetch_page import add_routes, parse_allow
from agent.hashcache import HashCache
from agent.inventory import Inventory
from agent.limits import Limits
from agent.reporter import Reporter, TrackerApi
from agent.server import make_app, make_runner
from agent.status import OBSERVER
from agent.swarm import AGENT_ID, Swarm
from common.config import parse_hostport
from common.errors import ConfigError, StorageError
from common.ratelimit import parse_rate
from common.tracker_client import TrackerClient

log = logging.getLogger("agent")

AGENT_ID_FILE = "agent-id"
WILDCARDS = ("", "0.0.0.0", "::")


@dataclass
class RunningAgent:
    """A started agent. `stop()` shuts everything down (idempotent)."""

    config: AgentConfig
    host: str
    port: int
    base_url: str
    agent_id: str
    inventory: Inventory
    reporter: Reporter | None
    swarm: Swarm
    _runner: web.AppRunner
    _cache: HashCache
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _owned_tracker: TrackerClient | None = None
    _stopped: bool = False
    downloads: Downloads | None = None  # background fetches (agent/downloads.py)

    @property
    def url(self) -> str:
        """Where HTTP is bound, e.g. http://127.0.0.1:40123."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.downloads is not None:
            await self.downloads.close()  # as a pause: partial files stay
        await self._runner.cleanup()
        if self._owned_tracker is not None:
            await self._owned_tracker.close()
        self._cache.close()


def load_agent_id(state_dir: str) -> str:
    """The agent's UUID, created on first run and kept in the state dir (atomic write)."""
    path = os.path.join(state_dir, AGENT_ID_FILE)
    try:
        with open(path) as f:
            return str(uuid.UUID(f.read().strip()))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise StorageError(f"bad agent id file {path}: {e}") from None
    new = str(uuid.uuid4())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return new


def advertised_url(config: AgentConfig, host: str, port: int) -> str:
    """--advertise, else http://HOST:PORT of the bound address. A wildcard listen
    host is replaced by the address of socket.gethostname(), or, if that is a
    loopback address, by the local address of the route to the tracker."""
    if config.advertise:
        return config.advertise.rstrip("/")
    if host in WILDCARDS:
        host = _host_address(config.tracker)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _host_address(tracker: str) -> str:
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not ipaddress.ip_address(addr).is_loopback:
            return addr
    except (OSError, ValueError):
        pass
    thost, tport = parse_hostport(tracker, "tracker address")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((thost, tport))  # UDP connect sends nothing; it just picks a route
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


async def start(config: AgentConfig, *, tracker: TrackerApi | None = None,
                report: bool = True) -> RunningAgent:
    """Start an agent: bind HTTP on `config.listen` (port 0 = any free port), then
    scan and report in the background.

    `tracker` defaults to a TrackerClient for `config.tracker`; `report=False`
    runs without any tracker (tests of the HTTP side). Raises ConfigError
    (bad directory, address in use) or StorageError (state dir unusable).
    """
    config = config.validated()
    state_dir = config.resolved_state_dir
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create state dir {state_dir}: {e.strerror}") from None
    agent_id = load_agent_id(state_dir)
    cache = HashCache(state_dir, config.hash_workers)
    inventory = Inventory(config.dir, cache, exclude=state_dir,
                          settle_seconds=config.settle_seconds)
    http_token, link = config.resolved_http_token(), config.tracker_link()  # files read once
    limits = Limits(parse_rate(config.upload_rate), config.max_client_connections)
    swarm = Swarm(config.dir, exclude=state_dir, announce_seconds=config.swarm_announce_seconds)
    app = make_app(inventory, http_token, limits=limits,
                   status_public=config.status_public, swarm=swarm)
    app[AGENT_ID] = agent_id
    downloads = Downloads(config.dir, config.tracker,
                          state_file=os.path.join(state_dir, "fetches.json"),
                          link=link, agent_token=http_token)
    downloads.shared = lambda name: inventory.entry(name) is not None
    names = [urlsplit(config.advertise).hostname or ""] if config.advertise else []
    add_routes(app, downloads, parse_allow(config.fetch_allow), names)
    runner = make_runner(inventory, app=app)
    await runner.setup()
    host, port = parse_hostport(config.listen, "listen address")
    site = web.TCPSite(runner, host or None, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        cache.close()
        raise ConfigError(f"cannot listen on {config.listen}: {e.strerror}") from None
    bound_port = int(runner.addresses[0][1]) if runner.addresses else port
    base_url = advertised_url(config, host, bound_port)

    owned = None
    reporter = None
    if report:
        if tracker is None:
            tracker = owned = TrackerClient(config.tracker, link=link)
        reporter = Reporter(tracker, agent_id, base_url, inventory.snapshot,
                            partials=swarm.snapshot)
        inventory.on_change = reporter.notify
        swarm.on_change = reporter.notify_partial
    observer = app[OBSERVER]
    observer.info.update(agent_id=agent_id, base_url=base_url,
                         tracker=config.tracker if report else None)
    if reporter is not None:
        observer.connected = reporter.connected.is_set
    agent = RunningAgent(config, host, bound_port, base_url, agent_id, inventory, reporter,
                         swarm, runner, cache, _owned_tracker=owned, downloads=downloads)
    agent._tasks.append(asyncio.create_task(inventory.run(config.rescan_seconds)))
    agent._tasks.append(asyncio.create_task(swarm.run()))
    if reporter is not None:
        agent._tasks.append(asyncio.create_task(reporter.run()))
    return agent
