"""`tracker status`: a short summary of a running tracker, read from its /api/status."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from common.webstatus import fetch_status, human_bytes, human_seconds, printable, status_url

DEFAULT_HTTP = "http://127.0.0.1:7780"
SHOWN = 5  # agents, contents and locates listed


async def run(http: str | None, *, as_json: bool = False) -> int:
    """Print the summary (or the whole JSON); raises MfetchError when nothing answers."""
    base = http or os.environ.get("TRACKER_HTTP") or DEFAULT_HTTP
    url = status_url(base)
    data = await fetch_status(url, "tracker")
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(summary(data, url.removesuffix("/api/status")))
    return 0


def summary(d: dict[str, Any], where: str) -> str:
    """The few lines `tracker status` prints for a status_dict()."""
    t, c, totals = d["tracker"], d["counts"], d["totals"]
    lines = [(f"tracker at {printable(where)} (gRPC {printable(t['grpc_address'])}), "
              f"up {human_seconds(t['uptime_seconds'])}"),
             (f"{c['live_agents']} live agents, {c['contents']} contents, "
              f"{c['mirrors']} mirrors; {totals['locates']} locates and "
              f"{totals['announces']} announces answered")]
    if d["agents"]:
        lines.append("agents (latest heartbeat first):")
        lines += [f"  {printable(a['agent_id'])}  {printable(a['base_url'])}  "
                  f"heartbeat {human_seconds(a['last_heartbeat_seconds_ago'])} ago  "
                  f"{a['holdings']} files" for a in d["agents"][:SHOWN]]
    if d["contents"]:
        lines.append("contents:")
        lines += [f"  {printable(', '.join(x['names']))}  {x['sha256'][:16]}  "
                  f"{human_bytes(x['size'])}  {x['holder_count']} holders, "
                  f"{len(x['mirrors'])} mirrors" for x in d["contents"][:SHOWN]]
    if d["recent_locates"]:
        now = time.time()
        lines.append("recent locates:")
        lines += [f"  {human_seconds(now - e['at'])} ago  {printable(e['query'])}  "
                  f"{e['sources']} sources  from {printable(e['peer'])}"
                  for e in d["recent_locates"][:SHOWN]]
    return "\n".join(lines)
