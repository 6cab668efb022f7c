"""`agent status [URL]`: a short summary of a running agent, read from its /api/status."""
from __future__ import annotations

import json
import os
from typing import Any

from common import security
from common.webstatus import fetch_status, human_bytes, human_seconds, printable, status_url

DEFAULT_URL = "http://127.0.0.1:7070"
SHOWN = 5  # transfers listed


async def run(url: str | None, *, as_json: bool = False, token_file: str | None = None) -> int:
    """Print the summary (or the whole JSON); raises MfetchError when nothing answers.
    The agent's HTTP token, when it has one, comes from `token_file`, else from
    AGENT_HTTP_TOKEN or AGENT_HTTP_TOKEN_FILE as for `agent serve`."""
    api = status_url(url or os.environ.get("AGENT_URL") or DEFAULT_URL)
    token = security.resolve_token(
        None if token_file else os.environ.get("AGENT_HTTP_TOKEN"),
        token_file or os.environ.get("AGENT_HTTP_TOKEN_FILE"), "http_token")
    data = await fetch_status(api, "agent", token)
    print(json.dumps(data, indent=2) if as_json else summary(data))
    return 0


def summary(d: dict[str, Any]) -> str:
    """The few lines `agent status` prints for a status_dict()."""
    a, c, totals = d["agent"], d["counts"], d["totals"]
    link = {True: "connected", False: "not connected", None: "no tracker"}[a.get("connected")]
    lines = [(f"agent {printable(a.get('agent_id', '?'))} at {printable(a.get('base_url', '?'))}"
              f", up {human_seconds(a.get('uptime_seconds', 0))}"),
             f"tracker {printable(a.get('tracker') or '-')} ({link})",
             (f"sharing {c['files']} files ({human_bytes(c['bytes'])}) from "
              f"{printable(a.get('dir', '?'))}; {c['hashing']} hashing"),
             (f"serving {c['transfers']} transfers on {c['open_connections']} connections; "
              f"{human_bytes(totals['bytes_served'])} served in {totals['requests']} requests")]
    for t in d["transfers"][:SHOWN]:
        start, end = t["range"]
        lines.append(f"  {printable(t['client'])}  {printable(t['path'])}  bytes {start}-{end - 1}"
                     f"  {human_bytes(t['sent'])} sent  "
                     f"{human_bytes(t['rate_bytes_per_second'])}/s")
    return "\n".join(lines)
