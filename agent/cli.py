"""`agent serve DIR ...`: the agent's command line.

Prints exactly one line `agent listening on http://HOST:PORT` on stdout once
HTTP is bound, logs one event per line on stderr, exits 0 on SIGTERM/SIGINT.
Any error is one line `agent: error: ...` on stderr and exit status 1 (2 for
bad usage), never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from agent import config as agent_config
from agent.app import start
from common import logs, security
from common.errors import MfetchError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"agent: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agent", description="Serve a directory to mfetch clients.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("serve", help="serve DIR read-only and announce it to the tracker",
                       description="Serve DIR read-only over HTTP byte ranges and announce "
                                   "its files to the tracker. Settings: defaults < --config "
                                   "YAML < AGENT_* environment < flags.")
    s.add_argument("dir", metavar="DIR", nargs="?",
                   help="directory to serve (read-only; or `dir:` in the config file)")
    s.add_argument("--tracker", metavar="HOST:PORT",
                   help=f"tracker gRPC address (default {agent_config.DEFAULT_TRACKER})")
    s.add_argument("--listen", metavar="HOST:PORT",
                   help=f"HTTP bind address, port 0 = any free port "
                        f"(default {agent_config.DEFAULT_LISTEN})")
    s.add_argument("--advertise", metavar="URL",
                   help="base URL given to the tracker (default: http://LISTENHOST:PORT; for a "
                        "wildcard listen host, the address socket.gethostname() resolves to, or "
                        "if that is loopback, the local address of the route to the tracker)")
    s.add_argument("--state-dir", metavar="PATH",
                   help="agent id and hash cache (default "
                        "~/.local/state/mfetch-agent/<hash of DIR>, $XDG_STATE_HOME honoured)")
    s.add_argument("--config", metavar="FILE", help="YAML file of settings")
    s.add_argument("--hash-workers", metavar="N", help="hashing processes (default 2)")
    s.add_argument("--rescan-seconds", metavar="S",
                   help="poll DIR for changes every S seconds (default 5)")
    s.add_argument("--settle-seconds", metavar="S",
                   help="leave files modified less than S seconds ago for a later scan "
                        "(default 2)")
    s.add_argument("--status-public", action="store_const", const=True, default=None,
                   help="answer /status, /api/status and /metrics to any client "
                        "(default: loopback clients only)")
    s.add_argument("--upload-rate", metavar="RATE",
                   help="send at most RATE bytes/s in total (as curl: 500K, 2M, 1G; "
                        "default: no cap)")
    s.add_argument("--max-client-connections", metavar="N",
                   help="file requests in flight from one client address; more get 503 "
                        "with Retry-After (default 8; 0 = no cap)")
    s.add_argument("--fetch-allow", metavar="NET[,NET...]",
                   help="addresses or networks that may hand this agent fetches through "
                        "/fetches and /api/fetches (default 127.0.0.0/8,::1/128: this machine "
                        "only); they download into DIR, so open this with care")
    s.add_argument("--swarm-announce-seconds", metavar="S",
                   help="tell the tracker of a shared download's pieces at most once per S "
                        "seconds (default 1)")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sec = s.add_argument_group("security (tokens: a file, or AGENT_TRACKER_TOKEN / "
                               "AGENT_HTTP_TOKEN in the environment; never on the command line)")
    security.add_link_flags(sec, "a file holding the tracker's agent token")
    sec.add_argument("--http-token-file", metavar="FILE",
                     help="require `Authorization: Bearer TOKEN` (TOKEN from FILE) for the "
                          "files and piece lists served; /healthz stays open")
    st = sub.add_parser("status", help="print a short summary of a running agent",
                        description="Read a running agent's /api/status and print a summary.")
    st.add_argument("url", metavar="URL", nargs="?", default=None,
                    help="the agent, http://HOST:PORT (default $AGENT_URL or "
                         "http://127.0.0.1:7070)")
    st.add_argument("--json", action="store_true", help="print the whole /api/status JSON")
    st.add_argument("--http-token-file", metavar="FILE",
                    help="the agent's HTTP token, if it has one (default $AGENT_HTTP_TOKEN_FILE "
                         "or $AGENT_HTTP_TOKEN)")
    return p


async def _serve(cfg: agent_config.AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = await start(cfg)
    print(f"agent listening on {agent.url}", flush=True)
    logging.getLogger("agent").info("serving %s as %s, advertised at %s",
                                    agent.inventory.root, agent.agent_id, agent.base_url)
    try:
        await stop.wait()
    finally:
        await agent.stop()
    logging.getLogger("agent").info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        from agent import status_cmd
        try:
            return asyncio.run(status_cmd.run(args.url, as_json=args.json,
                                               token_file=args.http_token_file))
        except MfetchError as e:
            print(f"agent: error: {e}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            return 130
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        flags = {"dir": args.dir, "tracker": args.tracker, "listen": args.listen,
                 "advertise": args.advertise, "state_dir": args.state_dir,
                 "hash_workers": args.hash_workers, "rescan_seconds": args.rescan_seconds,
                 "settle_seconds": args.settle_seconds, "http_token_file": args.http_token_file,
                 "status_public": args.status_public, "upload_rate": args.upload_rate,
                 "max_client_connections": args.max_client_connections,
                 "fetch_allow": args.fetch_allow,
                 "swarm_announce_seconds": args.swarm_announce_seconds,
                 **security.link_flags(args)}
        cfg = agent_config.load(args.config, flags)
        asyncio.run(_serve(cfg))
    except MfetchError as e:
        print(f"agent: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
