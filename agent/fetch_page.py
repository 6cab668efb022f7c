"""The agent's page of background fetches (`/fetches`) and its JSON API (`/api/fetches`).

    GET  /fetches                       the page: a form to start a fetch, and every
                                        fetch with its progress, rate and sources, with
                                        pause / resume / cancel buttons (polls the API)
    GET  /api/fetches                   {"fetches": [FETCH, ...]}, newest first
    POST /api/fetches                   {"targets": [NAME | URL, ...], "sha256": HEX?}
                                        -> 201 FETCH
    GET  /api/fetches/{id}              FETCH
    POST /api/fetches/{id}/pause        -> FETCH (409 if it is not running)
    POST /api/fetches/{id}/resume       -> FETCH (409 unless paused or failed)
    POST /api/fetches/{id}/cancel       -> FETCH; its partial files are deleted

Errors are {"error": "one line"} with 400, 403, 404, 409, 415 or 429: 409 also
when a fetch not ended (or failed with its partial files) already has that output
name, 429 beyond downloads.MAX_OPEN fetches running or paused.

Who may use it: this makes the agent download any URL into its shared
folder, so only clients in ``fetch_allow`` (default loopback only) get the
page or the API (403 otherwise). A web page in the user's own browser must
not be able to start fetches through it either (the browser is on loopback):
POSTs must be ``Content-Type: application/json`` (a cross-site form cannot
send that without a CORS preflight, which is never granted), a request
whose ``Origin`` is not this agent's own is refused, and so is one whose
``Host`` is a name other than localhost, this machine's name or the advertised
one (an IP address is fine): a site that rebinds its own name to 127.0.0.1
would otherwise pass as same-origin. These checks live in agent.http_auth
(cross_site_refusal), which applies them to every local page and API.
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from agent import http_auth
from agent.downloads import Conflict, Downloads, NotFound, TooMany
from common.errors import ConfigError, MfetchError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_DOWNLOADS: web.AppKey[Downloads] = web.AppKey("downloads", Downloads)
_ALLOW: web.AppKey[tuple[Network, ...]] = web.AppKey("fetch_allow", tuple)
MAX_BODY = 64 * 1024


def parse_allow(items: Sequence[str]) -> tuple[Network, ...]:
    """Networks from CIDR strings ("127.0.0.0/8", "::1", "192.168.1.0/24");
    raises ConfigError naming the bad one."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"bad fetch_allow entry {item!r}: expected an address or "
                              "a network like 192.168.1.0/24") from None
    return tuple(out)


def add_routes(app: web.Application, downloads: Downloads, allow: tuple[Network, ...],
               names: Sequence[str] = ()) -> None:
    """Serve the page and the API to clients in `allow`; `names` are host names (besides
    IP addresses, localhost and this machine's name) the agent may be addressed by."""
    app[_DOWNLOADS] = downloads
    app[_ALLOW] = allow
    app[http_auth.HOST_NAMES] = http_auth.host_names(names)
    app.router.add_get("/fetches", _guard(page))
    app.router.add_get("/api/fetches", _guard(list_fetches))
    app.router.add_post("/api/fetches", _guard(start_fetch))
    app.router.add_get("/api/fetches/{id}", _guard(get_fetch))
    app.router.add_post("/api/fetches/{id}/{op:pause|resume|cancel}", _guard(operate))


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            ip = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            return _error(403, "fetches are not open to this address")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not any(ip in net for net in request.app[_ALLOW]):
            return _error(403, "fetches are not open to this address (see fetch_allow)")
        refused = http_auth.cross_site_refusal(request)  # also the app's local_guard
        if refused is not None:
            return _error(*refused)
        try:
            return await handler(request)
        except NotFound as e:
            return _error(404, str(e))
        except Conflict as e:
            return _error(409, str(e))
        except TooMany as e:
            return _error(429, str(e))
        except MfetchError as e:
            return _error(400, str(e))
    return guarded


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ConfigError("request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ConfigError("request body too large")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("expected a JSON object")
    return body


async def list_fetches(request: web.Request) -> web.Response:
    return web.json_response({"fetches": request.app[_DOWNLOADS].list()})


async def get_fetch(request: web.Request) -> web.Response:
    downloads = request.app[_DOWNLOADS]
    return web.json_response(downloads.view(downloads.get(request.match_info["id"])))


async def start_fetch(request: web.Request) -> web.Response:
    body = await _json_body(request)
    targets = body.get("targets")
    if isinstance(targets, str):
        targets = targets.split()
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ConfigError('expected {"targets": [NAME or URLs]}')
    sha256 = body.get("sha256") or None
    if sha256 is not None and not isinstance(sha256, str):
        raise ConfigError("sha256 must be a string of 64 hex digits")
    downloads = request.app[_DOWNLOADS]
    d = downloads.start(targets, sha256)
    return web.json_response(downloads.view(d), status=201)


async def operate(request: web.Request) -> web.Response:
    downloads = request.app[_DOWNLOADS]
    fid, op = request.match_info["id"], request.match_info["op"]
    if op == "pause":
        d = await downloads.pause(fid)
    elif op == "resume":
        d = downloads.resume(fid)
    else:
        d = await downloads.cancel(fid)
    return web.json_response(downloads.view(d))


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mfetch agent: fetches</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .8em; }
form { display: flex; gap: .5em; margin-bottom: 1em; }
input { font: inherit; padding: .35em .5em; border: 1px solid #bbb; border-radius: 4px; }
#targets { flex: 1; } #sha256 { width: 16em; }
button { font: inherit; padding: .35em .9em; border: 1px solid #888; border-radius: 4px;
         background: #fff; cursor: pointer; }
button.primary { background: #2a6df4; color: #fff; border-color: #2a6df4; }
#message { min-height: 1.4em; color: #b00020; margin-bottom: .5em; }
.fetch { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .8em 1em;
         margin-bottom: .8em; }
.head { display: flex; justify-content: space-between; align-items: baseline; gap: 1em; }
.name { font-weight: 600; word-break: break-all; }
.state { font-size: .85em; padding: .1em .5em; border-radius: 3px; background: #eee; }
.state.done { background: #d6f5d6; } .state.failed { background: #fdd; }
.state.running, .state.planning { background: #dde8ff; } .state.paused { background: #fff3c4; }
.bar { height: 14px; background: #e6e6e6; border-radius: 7px; overflow: hidden; margin: .5em 0; }
.bar > div { height: 100%; background: #2a6df4; width: 0; }
.fetch[data-state=done] .bar > div { background: #2fa84f; }
.figures { color: #555; font-size: .9em; }
table.sources { border-collapse: collapse; margin-top: .4em; font-size: .85em; width: 100%; }
table.sources td { padding: .1em .6em .1em 0; color: #444; word-break: break-all; }
.error { color: #b00020; }
.ops { display: flex; gap: .4em; }
</style></head>
<body>
<h1>Fetches on this agent</h1>
<form id="start-form">
  <input id="targets" name="targets" placeholder="a NAME known to the tracker, or URL(s) of one file"
         autocomplete="off" required>
  <input id="sha256" name="sha256" placeholder="sha256 (optional)" autocomplete="off">
  <button id="start" class="primary" type="submit">Start</button>
</form>
<div id="message"></div>
<div id="fetches"></div>
<script>
"use strict";
const human = n => { const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + u[i]; };
const el = (tag, attrs, ...kids) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k); return e; };
async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
function say(text) { document.getElementById("message").textContent = text || ""; }
function render(list) {
  const box = document.getElementById("fetches");
  box.replaceChildren(...list.map(f => {
    const pct = Math.floor(f.progress * 1000) / 10;
    const ops = el("div", { class: "ops" });
    const op = (name, label) => { const b = el("button", { class: "op-" + name, type: "button" }, label);
      b.onclick = () => api(`/api/fetches/${f.id}/${name}`, {}).then(refresh, e => say(e.message));
      ops.append(b); };
    if (f.state === "running" || f.state === "planning") op("pause", "Pause");
    if (f.state === "paused" || f.state === "failed") op("resume", "Resume");
    if (f.state !== "done" && f.state !== "cancelled") op("cancel", "Cancel");
    const size = f.size === null ? "?" : human(f.size);
    const figures = `${human(f.bytes)} of ${size} \u00b7 ${human(f.rate)}/s` +
      (f.state === "done" ? (f.shared ? " \u00b7 shared" : " \u00b7 not shared yet") : "");
    const sources = el("table", { class: "sources" });
    for (const s of f.sources) sources.append(el("tr", {},
      el("td", {}, s.url), el("td", {}, s.kind), el("td", {}, human(s.bytes)),
      el("td", {}, human(s.rate) + "/s"),
      el("td", {}, s.dropped ? "dropped: " + s.dropped
                  : f.state === "running" ? s.connections + " conn" : "")));
    const bar = el("div", { class: "bar" }, el("div", { style: `width:${pct}%` }));
    return el("div", { class: "fetch", id: "fetch-" + f.id, "data-state": f.state },
      el("div", { class: "head" },
        el("span", { class: "name" }, f.name || f.targets.join(" ")),
        el("span", { class: "state " + f.state }, f.state), el("span", { class: "pct" }, pct + "%")),
      bar, el("div", { class: "figures" }, figures),
      f.error ? el("div", { class: "error" }, f.error) : "",
      sources, ops);
  }));
  if (!list.length) box.append(el("p", { class: "figures" }, "No fetches yet."));
}
async function refresh() {
  try { render((await api("/api/fetches")).fetches); } catch (e) { say(e.message); }
}
document.getElementById("start-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  const t = document.getElementById("targets"), s = document.getElementById("sha256");
  try {
    await api("/api/fetches", { targets: t.value.trim().split(/\\s+/), sha256: s.value.trim() || null });
    t.value = ""; s.value = ""; say("");
  } catch (e) { say(e.message); }
  refresh();
});
refresh();
setInterval(refresh, 500);
</script>
</body></html>
"""
