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

from common import config as common_config
from common import logs, security
from common.errors import MfetchError
from common.tracker_client import DEFAULT_ADDRESS, TrackerClient
from tracker import auth, server, status_cmd
from tracker import config as tconfig
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
    s.add_argument("--workers", metavar="N", help="tracker processes answering on the one "
                   "port, sharing the database (default 1; see tracker/workers.py)")
    s.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by --workers only
    sec = s.add_argument_group("security (tokens: a file, or TRACKER_*_TOKEN in the "
                               "environment; never the value on the command line)")
    sec.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    sec.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    sec.add_argument("--tls-client-ca", metavar="FILE",
                     help="require mutual TLS: clients must present a certificate this CA signed")
    sec.add_argument("--agent-token-file", metavar="FILE",
                     help="agents must send this token to register, announce and heartbeat")
    sec.add_argument("--admin-token-file", metavar="FILE",
                     help="`tracker mirror add|rm` must send this token")
    sec.add_argument("--client-token-file", metavar="FILE",
                     help="locate and mirror ls need this token (or the agent or admin one)")

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
        security.add_link_flags(sp, "a file holding the admin token (the client token "
                                    "does for ls); also $TRACKER_ADMIN_TOKEN(_FILE)")
    return p


SERVE_SECURITY_FLAGS = ("tls_cert", "tls_key", "tls_client_ca", "agent_token_file",
                        "admin_token_file", "client_token_file")


def serve_flags(args: argparse.Namespace) -> dict[str, object]:
    """The settings `tracker serve` takes from its flags (None = not given)."""
    flags: dict[str, object] = {"listen": args.listen, "http": args.http, "db": args.db,
                                "lease_seconds": args.lease_seconds,
                                "heartbeat_seconds": args.heartbeat_seconds,
                                "workers": args.workers}
    flags.update({name: getattr(args, name) for name in SERVE_SECURITY_FLAGS})
    return flags


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point; exits with the command's status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logs.setup(logging.INFO)
    try:
        if args.command == "serve":
            cfg = tconfig.load(args.config, serve_flags(args))
            if cfg.workers > 1 and args.worker is None:
                from tracker import workers
                code = workers.supervise(cfg, argv)
            else:
                code = asyncio.run(_serve(args, cfg))
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


async def _serve(args: argparse.Namespace, cfg: tconfig.TrackerConfig) -> int:
    running = await server.start(cfg, reuse_port=args.worker is not None)
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
    tokens = cfg.tokens
    logging.getLogger("tracker").info(
        "TLS %s; tokens required for: %s",
        ("on, mutual (client certificates required)" if cfg.tls_client_ca else "on")
        if cfg.tls_cert else "off",
        ", ".join(r for r in ("agent", "admin", "client") if getattr(tokens, r)) or "nothing")
    for warning in auth.exposure_warnings(
            cfg.listen, bool(cfg.tls_cert), tokens,
            cfg.http if tconfig.http_enabled(cfg) else None):
        logging.getLogger("tracker").warning("%s", warning)
    watch = None
    if args.worker is not None:
        from tracker import workers
        watch = asyncio.create_task(workers.watch_supervisor(stop.set))
    await stop.wait()
    if watch is not None:
        watch.cancel()
    logging.getLogger("tracker").info("stopping")
    if http is not None:
        await http.stop()
    await running.stop(grace=5.0)
    return 0


async def _mirror(args: argparse.Namespace) -> int:
    address = args.tracker or os.environ.get("MFETCH_TRACKER") or DEFAULT_ADDRESS
    async with TrackerClient(address, link=_mirror_link(args)) as client:
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


def _mirror_link(args: argparse.Namespace) -> security.TrackerLink:
    """TLS and token for `tracker mirror`: flags, else MFETCH_TRACKER_TLS/_CA/_CERT/_KEY and
    TRACKER_ADMIN_TOKEN or TRACKER_ADMIN_TOKEN_FILE from the environment."""
    env = security.env_default
    tls = args.tracker_tls
    if tls is None and env("MFETCH_TRACKER_TLS"):
        tls = common_config.parse_bool(env("MFETCH_TRACKER_TLS"), "MFETCH_TRACKER_TLS")
    token_file = args.tracker_token_file or env("TRACKER_ADMIN_TOKEN_FILE")
    token = None if args.tracker_token_file else env("TRACKER_ADMIN_TOKEN")
    return security.link_from(argparse.Namespace(
        tracker_tls=tls, tracker_ca=args.tracker_ca or env("MFETCH_TRACKER_CA"),
        tracker_cert=args.tracker_cert or env("MFETCH_TRACKER_CERT"),
        tracker_key=args.tracker_key or env("MFETCH_TRACKER_KEY"),
        tracker_token=token, tracker_token_file=token_file), "admin token")


if __name__ == "__main__":  # the workers of `tracker serve --workers N` run this way
    main()
