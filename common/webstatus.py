"""Pieces shared by the tracker's and the agent's status pages, metrics and status commands.

- :func:`page` wraps a body in one self-contained HTML document (inline CSS, no
  script, no external assets; it reloads itself every few seconds).
- :func:`esc` is the only way a value reaches the HTML: every name, path, URL and
  address shown comes from the network or from a file name, so each is escaped.
- :func:`metrics_response` serves one CollectorRegistry in Prometheus text format.
- :func:`fetch_status` is the client side of `tracker status` and `agent status`.
"""
from __future__ import annotations

import html
import json
import os
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.errors import MfetchError

REFRESH_SECONDS = 5
STATUS_TIMEOUT = 10.0  # seconds `tracker status` / `agent status` wait for an answer

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
p.meta { color: #555; margin: 0 0 1em; }
table { border-collapse: collapse; min-width: 40%; }
th, td { text-align: left; padding: .25em .8em .25em 0; border-bottom: 1px solid #ddd;
         vertical-align: top; }
th { background: #f0f3f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; } .empty { color: #777; font-style: italic; }
.summary span { display: inline-block; margin-right: 1.5em; padding: .4em .8em;
                background: #eef4ee; border-radius: 4px; }
"""


def esc(value: object) -> str:
    """HTML-escaped text of `value` (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A whole HTML document; `body` must already be escaped HTML."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
            f"<meta name=\"viewport\" content=\"width=device-width\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def table(headers: list[str], rows: list[list[str]], empty: str, table_id: str) -> str:
    """An HTML table; `rows` hold already-escaped cells (a cell starting with '\\0' is
    right-aligned, for numbers)."""
    if not rows:
        return f'<p class="empty" id="{esc(table_id)}">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c[1:]}</td>' if c.startswith("\0") else f"<td>{c}</td>"
                         for c in row) + "</tr>\n"
        for row in rows)
    return f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def num(value: object) -> str:
    """A right-aligned table cell."""
    return "\0" + esc(value)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """Seconds as '4 s', '3 min', '2 h', '5 d'."""
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """`registry` in the Prometheus text exposition format."""
    resp = web.Response(body=generate_latest(registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def fetch_status(url: str, what: str, token: str | None = None) -> dict[str, Any]:
    """GET `url` (an .../api/status) and return its JSON object; with `token`, sent as
    `Authorization: Bearer TOKEN` (an agent with an HTTP token wants it).

    Raises MfetchError with one line naming `what` and `url` when nothing answers,
    the answer is not 200, or it is not a JSON object.
    """
    timeout = aiohttp.ClientTimeout(total=STATUS_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url, headers={"Authorization": f"Bearer {token}"} if token else None) as resp:
            if resp.status == 401:
                raise MfetchError(f"{what} at {url} wants its HTTP token "
                                  "(--http-token-file, or AGENT_HTTP_TOKEN_FILE)")
            if resp.status != 200:
                raise MfetchError(f"{what} at {url} answered HTTP {resp.status}")
            data = json.loads(await resp.text())
    except aiohttp.ClientConnectorError as e:
        err = e.os_error
        # errno > 0: an OS error (refused, unreachable); a resolver error has errno < 0
        reason = (os.strerror(err.errno) if err.errno and err.errno > 0
                  else err.strerror or str(err)) or "cannot connect"
        raise MfetchError(f"no {what} answers at {url}: {reason}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise MfetchError(f"no {what} answers at {url}: {e.__class__.__name__}: {e}") from None
    except TimeoutError:
        raise MfetchError(f"no {what} answers at {url}: timed out") from None
    except ValueError:
        raise MfetchError(f"{what} at {url} did not answer with JSON") from None
    if not isinstance(data, dict):
        raise MfetchError(f"{what} at {url} did not answer with a JSON object")
    return data


def status_url(base: str, default_scheme: str = "http://") -> str:
    """The /api/status URL of a server given as http://HOST:PORT[/] or HOST:PORT."""
    if "://" not in base:
        base = default_scheme + base
    return base.rstrip("/") + "/api/status"


def printable(text: object) -> str:
    """`text` with control characters shown as '?', safe to print to a terminal (a file
    name can hold escape sequences that would rewrite the screen)."""
    return "".join(c if c.isprintable() else "?" for c in str(text))
