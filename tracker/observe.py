"""What the tracker knows about itself: Prometheus metrics and the recent locates.

One :class:`Observer` per running tracker, with its own CollectorRegistry (several
trackers may run in one process, in tests). The servicer counts and times its calls
through it; the HTTP side (tracker/status_http.py) reads it.

Gauges of the store's state (live agents, contents, mirrors) are not kept up to date
call by call: they come from :meth:`tracker.store.Store.overview` when someone looks
(a scrape or a page load), at most once per OVERVIEW_MAX_AGE, so a busy scraper or a
reloading browser costs the store one bounded query every few seconds at most. With
several trackers on one Redis every tracker reports the same store gauges, while
its counters and histograms are its own calls only.

Metric names (all prefixed ``mfetch_tracker_``):

    live_agents, contents, mirrors              gauges, from the store
    announces_total{result}                     counter; result = ok | error
    announced_holdings_total                    counter: holdings added or removed by announces
    locates_total{result}                       counter; result = found | not_found | error
    registers_total, heartbeats_total{result}   counters
    announce_seconds, locate_seconds            histograms of the time to answer
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tracker.store import Overview, Store

OVERVIEW_MAX_AGE = 5.0  # seconds (the page reloads every 5 s) a store overview is reused before asking the store again
OVERVIEW_LIMIT = 100  # agents, contents and mirrors listed on the status page
RECENT_LOCATES = 100  # locates kept in memory for the status page
MAX_SHOWN = 200  # characters of a locate's name or peer kept
# Locates are fast (ms) on a quiet tracker and reach 100 ms under load (bench/).
BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class LocateEvent:
    """One locate this tracker answered: when, for what, how many sources, for whom."""

    at: float  # time.time()
    query: str  # "name NAME" or "sha256 HEX"
    sources: int  # agents + mirrors in the answer (0: not found)
    peer: str  # the client's address as gRPC saw it
    seconds: float


class Observer:
    """Metrics and the ring of recent locates for one tracker."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.started = clock()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.announces = Counter("mfetch_tracker_announces", "Announce calls answered",
                                 ["result"], registry=r)
        self.announced_holdings = Counter("mfetch_tracker_announced_holdings",
                                          "Holdings added or removed by announces", registry=r)
        self.locates = Counter("mfetch_tracker_locates", "Locate calls answered", ["result"],
                               registry=r)
        self.registers = Counter("mfetch_tracker_registers", "Agents registered", registry=r)
        self.heartbeats = Counter("mfetch_tracker_heartbeats", "Heartbeats answered",
                                  ["result"], registry=r)
        self.announce_seconds = Histogram("mfetch_tracker_announce_seconds",
                                          "Time to answer an announce", buckets=BUCKETS,
                                          registry=r)
        self.locate_seconds = Histogram("mfetch_tracker_locate_seconds",
                                        "Time to answer a locate", buckets=BUCKETS, registry=r)
        for result in ("ok", "error"):  # zeros from the start, so rates exist at once
            self.announces.labels(result)
            self.heartbeats.labels(result)
        for result in ("found", "not_found", "error"):
            self.locates.labels(result)
        # The labelled children resolved once: labels() takes a lock and hashes per call.
        self._locate_results = {"ok": self.locates.labels("found"),
                                "not_found": self.locates.labels("not_found"),
                                "error": self.locates.labels("error")}
        self._heartbeat_results = {True: self.heartbeats.labels("ok"),
                                   False: self.heartbeats.labels("error")}
        self._announce_results = {True: self.announces.labels("ok"),
                                  False: self.announces.labels("error")}
        self._observe_locate = self.locate_seconds.observe
        self.total_locates = 0
        self.total_announces = 0
        self.recent: deque[LocateEvent] = deque(maxlen=RECENT_LOCATES)
        self._overview: Overview | None = None
        self._overview_at = float("-inf")
        self._overview_lock = asyncio.Lock()
        self.registry.register(_StoreGauges(self))

    def record_call(self, method: str, request: Any, reply: Any, result: str, seconds: float,
                    peer: str | Callable[[], str]) -> None:
        """Count and time one answered call (`result`: ok, not_found or error); a locate
        is also remembered for the status page. `peer` may be a function that returns
        it (context.peer), called only for a locate."""
        if method == "Locate":
            self.total_locates += 1
            self._locate_results[result].inc()
            self._observe_locate(seconds)
            sources = sum(len(c.sources) for c in reply.candidates) if reply is not None else 0
            who = peer if isinstance(peer, str) else (peer() or "")
            self.recent.appendleft(LocateEvent(self.clock(), _query(request), sources,
                                               who[:MAX_SHOWN], seconds))
        elif method == "Heartbeat":
            self._heartbeat_results[result == "ok"].inc()
        elif method == "Announce":
            self.total_announces += 1
            self._announce_results[result == "ok"].inc()
            self.announce_seconds.observe(seconds)
            if reply is not None:
                self.announced_holdings.inc(len(request.added) + len(request.removed))
        elif method == "Register" and result == "ok":
            self.registers.inc()

    async def overview(self) -> Overview:
        """The store's overview, at most OVERVIEW_MAX_AGE old. Raises what the store raises."""
        async with self._overview_lock:  # concurrent scrapes share one store query
            now = time.monotonic()
            if self._overview is None or now - self._overview_at > OVERVIEW_MAX_AGE:
                self._overview = await self.store.overview(OVERVIEW_LIMIT)
                self._overview_at = now
            return self._overview


def _query(request: Any) -> str:
    """What a LocateRequest asked for, short enough to show."""
    key = request.WhichOneof("key")
    if key == "name":
        return f"name {request.name[:MAX_SHOWN]}"
    if key == "sha256":
        return f"sha256 {request.sha256.hex()[:64]}"
    return "nothing"


class _StoreGauges(Collector):
    """live_agents, contents and mirrors from the last overview (refreshed by the handler
    before each scrape: collect() is synchronous and cannot ask the store itself)."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def describe(self) -> list[Metric]:
        return []  # unknown until the first overview; no duplicate names to check

    def collect(self) -> Iterator[Metric]:
        ov = self._observer._overview
        if ov is None:
            return
        for name, doc, value in (
                ("live_agents", "Agents whose lease is live", ov.live_agents),
                ("contents", "Distinct contents held by known agents", ov.contents),
                ("mirrors", "Plain HTTP mirrors known", ov.mirrors)):
            yield GaugeMetricFamily(f"mfetch_tracker_{name}", doc, value=value)
