"""The tracker's HTTP side: a status page, its JSON, and Prometheus metrics.

    GET /              HTML: live agents (last heartbeat), contents (holders, mirrors),
                       mirrors, recent locates; reloads itself every few seconds
    GET /api/status    the same as JSON (what `tracker status` reads)
    GET /metrics       Prometheus text format (names in tracker/observe.py)

It listens on its own address (`http`, default 127.0.0.1:7780: loopback, so
nothing is exposed unless configured), apart from gRPC. It only reads: the
page is bounded (tracker/observe.py OVERVIEW_LIMIT of each list) and the store
is asked at most once per OVERVIEW_MAX_AGE whatever the request rate.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common.config import parse_hostport
from common.errors import ConfigError
from common.webstatus import (
    esc,
    human_bytes,
    human_seconds,
    metrics_response,
    num,
    page,
    table,
)
from tracker.observe import Observer
from tracker.store import Overview

log = logging.getLogger("tracker.http")

_OBSERVER: web.AppKey[Observer] = web.AppKey("observer", Observer)
_INFO: web.AppKey[dict[str, Any]] = web.AppKey("info", dict)


@dataclass
class RunningHttp:
    """The started HTTP listener."""

    url: str
    _runner: web.AppRunner

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start(observer: Observer, listen: str, *, grpc_address: str = "",
                lease_seconds: int = 30) -> RunningHttp:
    """Serve the page, JSON and metrics on `listen` (HOST:PORT, port 0 = any free port).

    Raises ConfigError if the address cannot be bound.
    """
    host, port = parse_hostport(listen, "http address")
    runner = web.AppRunner(make_app(observer, grpc_address=grpc_address,
                                    lease_seconds=lease_seconds), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or None, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise ConfigError(f"cannot listen for HTTP on {listen}: {reason}") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = f"[{host}]" if ":" in host else (host or "0.0.0.0")
    return RunningHttp(f"http://{shown}:{bound}", runner)


def make_app(observer: Observer, *, grpc_address: str = "",
             lease_seconds: int = 30) -> web.Application:
    app = web.Application()
    app[_OBSERVER] = observer
    app[_INFO] = {"grpc_address": grpc_address, "lease_seconds": lease_seconds}
    app.router.add_get("/", handle_page)
    app.router.add_get("/api/status", handle_json)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def _overview(request: web.Request) -> Overview:
    try:
        return await request.app[_OBSERVER].overview()
    except Exception as e:  # noqa: BLE001 -- the store is down: say so, keep serving
        log.warning("status page: the store failed: %s: %s", e.__class__.__name__, e)
        raise web.HTTPServiceUnavailable(text=f"tracker store unavailable: "
                                              f"{e.__class__.__name__}\n") from None


async def handle_metrics(request: web.Request) -> web.Response:
    await _overview(request)  # refresh the store gauges
    return metrics_response(request.app[_OBSERVER].registry)


async def handle_json(request: web.Request) -> web.Response:
    return web.json_response(status_dict(request.app[_OBSERVER], await _overview(request),
                                         request.app[_INFO]))


async def handle_page(request: web.Request) -> web.Response:
    data = status_dict(request.app[_OBSERVER], await _overview(request), request.app[_INFO])
    return web.Response(text=render(data), content_type="text/html", charset="utf-8")


def status_dict(observer: Observer, ov: Overview, info: dict[str, Any]) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    lease = info["lease_seconds"]
    mirrors_by_sha: dict[bytes, list[str]] = {}
    for m in ov.mirror_list:
        mirrors_by_sha.setdefault(m.sha256, []).append(m.url)
    return {
        "tracker": {"grpc_address": info["grpc_address"],
                    "uptime_seconds": round(observer.clock() - observer.started, 1),
                    "lease_seconds": lease},
        "counts": {"live_agents": ov.live_agents, "contents": ov.contents,
                   "mirrors": ov.mirrors},
        "totals": {"locates": observer.total_locates, "announces": observer.total_announces},
        "agents": [{"agent_id": a.agent_id, "base_url": a.base_url,
                    "last_heartbeat_seconds_ago": round(max(0.0, lease - a.lease_left), 1),
                    "lease_left_seconds": round(a.lease_left, 1), "holdings": a.holdings}
                   for a in ov.agents],
        "contents": [{"sha256": c.sha256.hex(), "size": c.size, "names": list(c.names),
                      "holders": list(c.holders), "holder_count": c.holder_count,
                      "mirrors": mirrors_by_sha.get(c.sha256, [])}
                     for c in ov.contents_list],
        "mirrors": [{"url": m.url, "name": m.name, "sha256": m.sha256.hex(), "size": m.size}
                    for m in ov.mirror_list],
        "recent_locates": [{"at": e.at, "query": e.query, "sources": e.sources,
                            "peer": e.peer, "seconds": round(e.seconds, 4)}
                           for e in observer.recent],
    }


def render(d: dict[str, Any]) -> str:
    """The status page for status_dict() output; every value is escaped."""
    counts, now = d["counts"], time.time()
    agents = [[f"<code>{esc(a['agent_id'])}</code>", esc(a["base_url"]),
               num(f"{human_seconds(a['last_heartbeat_seconds_ago'])} ago"),
               num(a["holdings"])] for a in d["agents"]]
    contents = [[esc(", ".join(c["names"])), f"<code>{esc(c['sha256'][:16])}…</code>",
                 num(human_bytes(c["size"])),
                 num(c["holder_count"]),
                 "<br>".join(f"<code>{esc(h)}</code>" for h in c["holders"]),
                 "<br>".join(esc(u) for u in c["mirrors"]) or "–"] for c in d["contents"]]
    mirrors = [[esc(m["name"]), esc(m["url"]), f"<code>{esc(m['sha256'][:16])}…</code>",
                num(human_bytes(m["size"]) if m["size"] else "?")] for m in d["mirrors"]]
    locates = [[num(f"{human_seconds(now - e['at'])} ago"), esc(e["query"]),
                num(e["sources"]), esc(e["peer"]), num(f"{e['seconds'] * 1000:.1f} ms")]
               for e in d["recent_locates"]]
    t = d["tracker"]
    body = f"""<h1>mfetch tracker</h1>
<p class="meta">gRPC {esc(t['grpc_address'])} · up {esc(human_seconds(t['uptime_seconds']))}
· lease {esc(t['lease_seconds'])} s · {esc(d['totals']['locates'])} locates,
{esc(d['totals']['announces'])} announces answered</p>
<p class="summary"><span id="live-agents">{esc(counts['live_agents'])} live agents</span>
<span id="contents-count">{esc(counts['contents'])} contents</span>
<span id="mirrors-count">{esc(counts['mirrors'])} mirrors</span></p>
<h2>Live agents</h2>
{table(["agent", "address", "last heartbeat", "files"], agents, "no live agent", "agents")}
<h2>Contents</h2>
{table(["names", "sha256", "size", "live holders", "holder agents", "mirrors"], contents,
       "no content held by a live agent", "contents")}
<h2>Mirrors</h2>
{table(["name", "url", "sha256", "size"], mirrors, "no mirror", "mirrors")}
<h2>Recent fetch activity</h2>
{table(["when", "asked for", "sources", "client", "answered in"], locates,
       "no locate since the tracker started", "locates")}"""
    return page("mfetch tracker", body)
