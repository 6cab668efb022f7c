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
    s.add_argument("--swarm-announce-seconds", metavar="S",
                   help="tell the tracker of a shared download's pieces at most once per S "
                        "seconds (default 1)")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        flags = {"dir": args.dir, "tracker": args.tracker, "listen": args.listen,
                 "advertise": args.advertise, "state_dir": args.state_dir,
                 "hash_workers": args.hash_workers, "rescan_seconds": args.rescan_seconds,
                 "settle_seconds": args.settle_seconds,
                 "swarm_announce_seconds": args.swarm_announce_seconds}
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
