"""Build and run the tracker's gRPC server (tracker API + standard health service).

`start()` binds, serves, and returns at once; tests start it on 127.0.0.1:0.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.errors import ConfigError, StorageError
from tracker import auth
from tracker.config import TrackerConfig
from tracker.observe import Observer
from tracker.redis_store import RedisStore, is_redis_url, redact
from tracker.renewals import Renewals
from tracker.service import TrackerHandlers, TrackerServicer
from tracker.sqlite_store import SqliteStore
from tracker.store import MirrorRecord, Store

log = logging.getLogger("tracker.server")

SERVICE_NAME = "mfetch.v1.Tracker"
# A whole inventory of 100_000 holdings is ~15 MB of protobuf; gRPC's default cap is 4 MB.
MAX_MESSAGE = 64 * 1024 * 1024
# gRPC sets SO_REUSEPORT by default, which would let a second tracker silently share
# (and steal half the calls of) a port already in use; we want "address in use"
# (except for the workers of --workers N, which share it on purpose).
# Calls waiting for the Python side: gRPC core's default (1,000) CANCELs a burst of
# more (a flood of 2,000 locates lost ~10%); queued calls cost little, and past
# MAX_CONCURRENT_RPCS in flight they are answered RESOURCE_EXHAUSTED anyway.
MAX_PENDING = 10_000
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
                ("grpc.server.max_pending_requests", MAX_PENDING),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING)]
# RPCs in flight at once; more are answered RESOURCE_EXHAUSTED at once, so a flood
# of calls cannot grow memory without bound (each Locate answer is capped too).
MAX_CONCURRENT_RPCS = 1024


@dataclass
class RunningTracker:
    """A started tracker: where it listens, and how to stop it."""

    host: str
    port: int
    store: Store
    _server: grpc.aio.Server
    _health: health.aio.HealthServicer
    _owns_store: bool
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    observer: Observer | None = None  # metrics and recent locates (tracker/status_http.py)
    renewals: Renewals | None = None  # the heartbeats' batches (tracker/renewals.py)

    @property
    def address(self) -> str:
        """HOST:PORT with the real bound port (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting calls, let running ones finish for `grace` seconds, then close
        the store if start() opened it."""
        await self._health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.stop(grace)
        if self._owns_store:
            await self.store.close()

    async def wait(self) -> None:
        """Until the server terminates."""
        await self._server.wait_for_termination()


async def start(config: TrackerConfig, store: Store | None = None,
                clock: Callable[[], float] = time.time, *,
                reuse_port: bool = False) -> RunningTracker:
    """Open the store (config.db: SQLite path or Redis URL, unless one is given), upsert the configured
    mirrors, bind config.listen (port 0: any free port) and start serving.

    `reuse_port`: bind with SO_REUSEPORT, beside the other workers of `tracker serve
    --workers N` (tracker/workers.py); otherwise a port in use is an error.

    Raises StorageError if the database cannot be opened, ConfigError if the address
    cannot be bound.
    """
    from common.config import parse_hostport

    host, _ = parse_hostport(config.listen, "listen address")
    owns = store is None
    if store is None:
        store = await open_store(config.db, clock)
    try:
        for m in config.mirrors:
            await store.put_mirror(MirrorRecord(m.url, m.name, m.sha256, m.size))
        # No interceptors: tokens and decoding are checked in TrackerHandlers, cheaper per call.
        options = GRPC_OPTIONS
        if reuse_port:
            options = [o for o in GRPC_OPTIONS if o[0] != "grpc.so_reuseport"]
            options.append(("grpc.so_reuseport", 1))
        server = grpc.aio.server(options=options,
                                 maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
        observer = Observer(store)
        servicer = TrackerServicer(store, lease_seconds=config.lease_seconds,
                                   heartbeat_seconds=config.heartbeat_seconds, clock=clock,
                                   observer=observer)
        server.add_generic_rpc_handlers((TrackerHandlers(servicer, config.tokens),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        try:
            if config.tls_cert and config.tls_key:
                port = server.add_secure_port(config.listen, auth.server_credentials(
                    config.tls_cert, config.tls_key, config.tls_client_ca))
            else:
                port = server.add_insecure_port(config.listen)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(f"cannot listen on {config.listen} (in use or not a local address?)")
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        if owns:
            await store.close()
        raise
    running = RunningTracker(host, port, store, server, health_servicer, owns, observer=observer,
                             renewals=servicer.renewals)
    if config.purge_after_seconds:
        running._tasks.append(asyncio.create_task(
            _purge_loop(store, clock, config.purge_after_seconds, config.lease_seconds)))
    return running


async def open_store(db: str, clock: Callable[[], float] = time.time) -> Store:
    """The store `db` names: a redis://HOST:PORT[/DB] URL, else a SQLite file path.

    Raises StorageError if it cannot be opened or reached, ConfigError for a bad URL.
    """
    if is_redis_url(db):
        import redis.exceptions

        try:
            return await RedisStore.open(db, clock)
        except (redis.exceptions.RedisError, OSError) as e:
            raise StorageError(f"cannot reach the tracker's Redis at {redact(db)}: {e}") from None
    try:
        return await SqliteStore.open(db, clock)
    except (sqlite3.Error, OSError) as e:
        raise StorageError(f"cannot open the tracker database {db}: {e}") from None


async def _purge_loop(store: Store, clock: Callable[[], float], after: float,
                      every: float) -> None:
    """Forget agents whose lease lapsed more than `after` seconds ago."""
    while True:
        try:
            n = await store.purge(clock() - after)
            if n:
                log.info("purged %d agents whose leases lapsed long ago", n)
        except Exception:
            log.exception("purge failed")
        await asyncio.sleep(every)
