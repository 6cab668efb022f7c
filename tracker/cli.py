"""`tracker`: run the index (`tracker serve`) and manage its mirrors (`tracker mirror ...`).

Every failure is one line `tracker: error: ...` on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

# gRPC core prints its own log lines (a failed bind, say) to stderr; we report errors
# ourselves in one line. It reads this when grpc is first imported, so it must be set
# before the imports below. An explicit GRPC_VERBOSITY still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from common import logs
from common.errors import MfetchError
from common.tracker_client import DEFAULT_ADDRESS, TrackerClient
from tracker import config as tconfig
from tracker import server, status_cmd
from tracker.redis_store import redact

PROG = "tracker"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{PROG}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="The mfetch tracker: which agents and mirrors hold what.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the tracker")
    s.add_argument("--config", metavar="FILE", help="YAML settings file")
    s.add_argument("--listen", metavar="HOST:PORT", help="address to serve gRPC on "
                   "(default 127.0.0.1:7700; port 0 picks a free port)")
    s.add_argument("--http", metavar="HOST:PORT|off",
                   help="status page, /api/status and /metrics (default 127.0.0.1:7780, "
                        "loopback only; port 0 picks a free port; off disables)")
    s.add_argument("--db", metavar="PATH|URL", help="SQLite database (default tracker.db), or "
                   "redis://HOST:PORT[/DB] to share one store among several trackers")
    s.add_argument("--lease-seconds", metavar="N", help="agent lease length (default 30)")
    s.add_argument("--heartbeat-seconds", metavar="N",
                   help="heartbeat interval told to agents (default 10)")

    st = sub.add_parser("status", help="print a short summary of a running tracker")
    st.add_argument("--http", metavar="URL", default=None,
                    help="the tracker's HTTP address (default $TRACKER_HTTP or "
                         "http://127.0.0.1:7780)")
    st.add_argument("--json", action="store_true", help="print the whole /api/status JSON")

    m = sub.add_parser("mirror", help="manage plain HTTP mirrors")
    msub = m.add_subparsers(dest="mirror_command", required=True, parser_class=_Parser)
    tracker_help = f"tracker address (default $MFETCH_TRACKER or {DEFAULT_ADDRESS})"
    add = msub.add_parser("add", help="add a mirror of a content")
    add.add_argument("url")
    add.add_argument("--sha256", required=True, metavar="HEX", help="the content's SHA-256")
    add.add_argument("--name", default="", help="default: the URL's last path segment")
    add.add_argument("--size", type=int, default=0, metavar="N", help="size in bytes if known")
    rm = msub.add_parser("rm", help="remove a mirror")
    rm.add_argument("url")
    ls = msub.add_parser("ls", help="list mirrors")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    for sp in (add, rm, ls):
        sp.add_argument("--tracker", metavar="HOST:PORT", help=tracker_help)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point; exits with the command's status."""
    args = _parser().parse_args(argv)
    logs.setup(logging.INFO)
    try:
        if args.command == "serve":
            code = asyncio.run(_serve(args))
        elif args.command == "status":
            code = asyncio.run(status_cmd.run(args.http, as_json=args.json))
        else:
            code = asyncio.run(_mirror(args))
    except MfetchError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


async def _serve(args: argparse.Namespace) -> int:
    cfg = tconfig.load(args.config, {"listen": args.listen, "http": args.http, "db": args.db,
                                     "lease_seconds": args.lease_seconds,
                                     "heartbeat_seconds": args.heartbeat_seconds})
    running = await server.start(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"tracker listening on {running.address}", flush=True)
    http = None
    if tconfig.http_enabled(cfg) and running.observer is not None:
        from tracker import status_http
        try:
            http = await status_http.start(running.observer, cfg.http,
                                           grpc_address=running.address,
                                           lease_seconds=cfg.lease_seconds)
        except BaseException:
            await running.stop(grace=0)
            raise
        print(f"tracker http listening on {http.url} (status page, /api/status, /metrics)",
              flush=True)
    logging.getLogger("tracker").info("store %s, lease %ds, heartbeat %ds, %d configured mirrors",
                                      redact(cfg.db), cfg.lease_seconds, cfg.heartbeat_seconds,
                                      len(cfg.mirrors))
    await stop.wait()
    logging.getLogger("tracker").info("stopping")
    if http is not None:
        await http.stop()
    await running.stop(grace=5.0)
    return 0


async def _mirror(args: argparse.Namespace) -> int:
    address = args.tracker or os.environ.get("MFETCH_TRACKER") or DEFAULT_ADDRESS
    async with TrackerClient(address) as client:
        if args.mirror_command == "add":
            sha = tconfig.parse_sha256(args.sha256)
            await client.add_mirror(args.url, sha, name=args.name, size=args.size)
        elif args.mirror_command == "rm":
            if not await client.remove_mirror(args.url):
                raise MfetchError(f"no mirror with URL {args.url}")
        else:
            mirrors = await client.list_mirrors()
            if args.json:
                print(json.dumps([{"url": m.url, "name": m.name, "sha256": m.sha256.hex(),
                                   "size": m.size} for m in mirrors], indent=2))
            else:
                for m in mirrors:
                    print(f"{m.sha256.hex()}  {m.size:>12}  {m.name}  {m.url}")
    return 0
