"""The agent's status page, its JSON and its Prometheus metrics, on the agent's HTTP port.

    GET /status        HTML: what it shares (path, size, sha256 or "hashing") and what it
                       is serving now (client, file, range, bytes sent, rate)
    GET /api/status    the same as JSON (what `agent status` reads)
    GET /metrics       Prometheus text format (names in agent/observe.py)

These tell who is downloading what, so by default they answer loopback clients
only (403 otherwise), although the agent's files are served to the LAN; set
`status_public` (--status-public) to let a Prometheus on another host scrape.
The file list is capped at FILES_SHOWN entries, so a huge directory makes a
bounded page; the counts are exact.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Any

from aiohttp import web

from agent.observe import AgentObserver
from common.webstatus import (
    esc,
    human_bytes,
    human_seconds,
    metrics_response,
    num,
    page,
    table,
)

OBSERVER: web.AppKey[AgentObserver] = web.AppKey("observer", AgentObserver)
_PUBLIC: web.AppKey[bool] = web.AppKey("status_public", bool)
FILES_SHOWN = 500
STATUS_PATHS = ("/status", "/api/status", "/metrics")


def add_routes(app: web.Application, observer: AgentObserver, *, public: bool) -> None:
    """Add the status routes (and the observer every handler can reach) to `app`."""
    app[OBSERVER] = observer
    app[_PUBLIC] = public
    app.router.add_get("/status", handle_page)
    app.router.add_get("/api/status", handle_json)
    app.router.add_get("/metrics", handle_metrics)


def _check_client(request: web.Request) -> AgentObserver:
    if not request.app[_PUBLIC] and not is_loopback(request.remote):
        raise web.HTTPForbidden(text="the status page and metrics answer loopback clients "
                                     "only (agent setting status_public)\n")
    return request.app[OBSERVER]


def is_loopback(address: str | None) -> bool:
    """Whether a peer address is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def handle_metrics(request: web.Request) -> web.Response:
    return metrics_response(_check_client(request).registry)


async def handle_json(request: web.Request) -> web.Response:
    return web.json_response(status_dict(_check_client(request)))


async def handle_page(request: web.Request) -> web.Response:
    return web.Response(text=render(status_dict(_check_client(request))),
                        content_type="text/html", charset="utf-8")


def status_dict(obs: AgentObserver) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    inv = obs.inventory
    held = inv.snapshot()
    hashing = dict(inv.hashing)
    files: list[dict[str, Any]] = [
        {"path": e.path, "size": e.identity.size, "sha256": e.identity.sha256.hex(),
         "state": "shared"} for e in held if e.path not in hashing]
    files += [{"path": p, "size": size, "sha256": None, "state": "hashing"}
              for p, size in hashing.items()]
    files.sort(key=lambda f: f["path"])
    transfers = sorted(obs.transfers.values(), key=lambda t: t.id)
    return {
        "agent": {**obs.info, "dir": inv.root, "connected": obs.connected(),
                  "uptime_seconds": round(max(0.0, time.time() - obs.started), 1)},
        "counts": {"files": len(held), "bytes": sum(e.identity.size for e in held),
                   "hashing": len(hashing), "transfers": len(transfers),
                   "open_connections": obs.open_connections()},
        "totals": {"bytes_served": obs.total_bytes, "requests": obs.total_requests},
        "files": files[:FILES_SHOWN],
        "transfers": [{"client": t.client, "path": t.path, "range": [t.start, t.end],
                       "sent": t.sent, "rate_bytes_per_second": round(t.rate(), 1)}
                      for t in transfers],
    }


def render(d: dict[str, Any]) -> str:
    """The agent's status page for status_dict() output; every value is escaped."""
    a, c, totals = d["agent"], d["counts"], d["totals"]
    link = {True: "connected", False: "not connected", None: "no tracker"}[a["connected"]]
    files = [[esc(f["path"]), num(human_bytes(f["size"])),
              f"<code>{esc(f['sha256'])}</code>" if f["sha256"] else "<em>hashing</em>"]
             for f in d["files"]]
    transfers = [[esc(t["client"]), esc(t["path"]),
                  num(f"{t['range'][0]}–{t['range'][1] - 1}"),
                  num(f"{human_bytes(t['sent'])} of {human_bytes(t['range'][1] - t['range'][0])}"),
                  num(f"{human_bytes(t['rate_bytes_per_second'])}/s")] for t in d["transfers"]]
    shown = "" if len(d["files"]) >= c["files"] + c["hashing"] else (
        f'<p class="meta">first {len(d["files"])} files shown</p>')
    body = f"""<h1>mfetch agent</h1>
<p class="meta">id <code>{esc(a.get('agent_id', '?'))}</code> · serving {esc(a['dir'])}
as {esc(a.get('base_url', '?'))} · tracker {esc(a.get('tracker') or '-')} ({esc(link)})
· up {esc(human_seconds(a['uptime_seconds']))}</p>
<p class="summary"><span id="files-count">{esc(c['files'])} files shared,
{esc(human_bytes(c['bytes']))}</span>
<span id="hashing-count">{esc(c['hashing'])} hashing</span>
<span id="transfers-count">{esc(c['transfers'])} transfers now</span>
<span>{esc(human_bytes(totals['bytes_served']))} served in {esc(totals['requests'])}
requests</span></p>
<h2>Serving now</h2>
{table(["client", "file", "bytes", "sent", "rate"], transfers, "nothing being sent",
       "transfers")}
<h2>Shared files</h2>
{shown}{table(["path", "size", "sha256"], files, "no file shared yet", "files")}"""
    return page("mfetch agent", body)
