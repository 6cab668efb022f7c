"""mfetch: fetch one file from many sources at once, verifying every piece.

    mfetch NAME [--tracker HOST:PORT] [-o OUT]     ask the tracker who holds NAME
    mfetch URL [URL ...] [-o OUT]                  mirrors of one file, no tracker
    mfetch FILE.meta4 [-o OUT]                     a Metalink 4 file's mirrors and hashes
    mfetch --background NAME | URL...              hand the fetch to the local agent

Exit status: 0 only for a complete, verified file; 1 on any error; 130 when
interrupted (the verified pieces are kept, and the same command resumes).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import signal
import sys
import threading
import time

from client import config as client_config
from client import metalink
from client.fetcher import Fetcher, Result, SourceReport, content_key
from client.headstart import HeadStart
from client.http import (
    TRANSIENT_ERRORS,
    HttpClient,
    HttpOptions,
    check_url,
    describe,
    origin,
    parse_header,
    read_body,
    strip_userinfo,
    url_credentials,
)
from client.plan import (
    Plan,
    name_from_url,
    parse_sha256,
    plan_from_metalink,
    plan_from_tracker,
    plan_from_urls,
    safe_name,
)
from client.storage import PartFile
from common import security
from common.errors import ConfigError, MfetchError, StorageError
from common.ratelimit import TokenBucket

log = logging.getLogger("mfetch")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mfetch",
        description="Fetch one file from many sources at once, verifying every piece.",
        epilog="A NAME is looked up on the tracker (--tracker, $MFETCH_TRACKER or the config "
               "file; default 127.0.0.1:7700). Several URLs are mirrors of the same file.")
    p.add_argument("targets", nargs="+", metavar="NAME | URL | FILE.meta4",
                   help="a file name (asked of the tracker), URLs of one file, or a metalink")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="where to save (a file, or an existing folder); default: the name")
    p.add_argument("--tracker", metavar="HOST:PORT", help="the tracker to ask for a NAME")
    p.add_argument("--sha256", metavar="HEX",
                   help="the whole file's SHA-256: checked before the file is handed over, "
                        "and picks one version when holders disagree")
    p.add_argument("--sha256-file", metavar="FILE | URL",
                   help="take the expected SHA-256 from a checksum file (SHA256SUMS, GNU or "
                        "BSD format), the entry for the file being fetched")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--sync", action="store_true", default=None,
                   help="flush the file to disk before exiting (and the resume state as it "
                        "goes), so a power loss loses nothing; as slow as the disk")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log every source event")
    p.add_argument("--no-head-start", action="store_true",
                   help="send no request before start-up is over (by default the first "
                        "requests to http:// mirrors go out while mfetch loads)")
    p.add_argument("--config", metavar="FILE",
                   help="YAML settings (default ~/.config/mfetch/config.yaml if present)")
    p.add_argument("--connections", type=int, metavar="N",
                   help="connections per source to start with (default 2)")
    p.add_argument("--max-connections", dest="max_connections_per_source", type=int,
                   metavar="N", help="most connections to one source (default 6)")
    p.add_argument("--max-host-connections", dest="max_connections_per_host", type=int,
                   metavar="N", help="most connections to one host:port, over all its source "
                                     "URLs (default 6)")
    p.add_argument("--limit-rate", metavar="RATE",
                   help="at most RATE bytes/s in total, over all connections (as curl: "
                        "500K, 2M, 1G; K = 1024)")
    p.add_argument("--stall-timeout", type=float, metavar="S",
                   help="seconds without a byte before a request is given up (default 8)")
    p.add_argument("--agent", metavar="URL",
                   help="this machine's agent (default http://127.0.0.1:7070): a download by "
                        "NAME saved inside the agent's directory is shared with other fetchers "
                        "while it runs and seeded when done (swarming); --background hands "
                        "the fetch to it")
    bg = p.add_argument_group("background fetches (by the local agent)")
    bg.add_argument("--background", action="store_true",
                    help="hand the fetch to the agent, which saves it in its folder and "
                         "shares it; prints the fetch id and where to watch it, and exits")
    web = p.add_argument_group("HTTP options (as in curl and wget)")
    web.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="send this header (repeatable); Authorization and Cookie headers "
                          "go only to the hosts named on the command line")
    web.add_argument("-A", "--user-agent", metavar="UA", help="User-Agent to send")
    web.add_argument("-u", "--user", metavar="USER:PASSWORD",
                     help="basic auth for the URLs given (never sent after a redirect to "
                          "another host)")
    web.add_argument("--netrc", action="store_true", help="take credentials from ~/.netrc")
    web.add_argument("--netrc-file", metavar="FILE", help="take credentials from FILE")
    web.add_argument("-b", "--cookie", metavar="FILE",
                     help="send cookies from FILE (Netscape format, as curl -c writes)")
    web.add_argument("-x", "--proxy", metavar="URL",
                     help="proxy: http://, https://, socks4:// or socks5://HOST:PORT")
    web.add_argument("--cacert", metavar="FILE", help="trust the CA certificates in FILE")
    web.add_argument("--max-redirs", type=int, default=10, metavar="N",
                     help="follow at most N redirects (default 10)")
    sec = p.add_argument_group("tracker and agent security (tokens: a file, or "
                               "MFETCH_TRACKER_TOKEN / MFETCH_AGENT_TOKEN in the environment)")
    security.add_link_flags(sec, "a file holding the tracker's client token")
    sec.add_argument("--agent-token-file", metavar="FILE",
                     help="a file holding the agents' HTTP token: sent only to the agents the "
                          "tracker names, never to mirrors or URLs given, nor past a redirect")
    return p


def http_options(args: argparse.Namespace, cfg: client_config.ClientConfig,
                 urls: list[str]) -> HttpOptions:
    """The HTTP options from flags and config; raises ConfigError on a malformed one."""
    user = None
    if args.user:
        name, sep, password = args.user.partition(":")
        if not sep:
            raise ConfigError("--user wants USER:PASSWORD")
        user = (name, password)
    netrc_file = args.netrc_file or (os.path.expanduser("~/.netrc") if args.netrc else None)
    if args.max_redirs < 0:
        raise ConfigError("--max-redirs must be 0 or more")
    return HttpOptions(
        headers=tuple(parse_header(h) for h in args.header),
        user_agent=args.user_agent or cfg.user_agent,
        user=user,
        netrc_file=netrc_file,
        cookie_file=args.cookie,
        proxy=args.proxy or cfg.proxy or None,
        cacert=args.cacert or cfg.cacert or None,
        max_redirects=args.max_redirs,
        trusted=frozenset(origin(u) for u in urls),
        url_credentials=url_credentials(urls),
        agent_token=security.resolve_token(cfg.agent_token, cfg.agent_token_file,
                                           "agent_token"),
    )


def _keep_buffers_in_heap() -> None:
    """Stop glibc from handing each large receive buffer back to the kernel.

    Every socket read allocates a fresh buffer of up to a few hundred KiB; glibc
    serves those with mmap (or trims the heap after them), so each one costs ~64
    page faults and zeroing: 180,000 faults and ~0.5 s of system time for 2 GiB
    on loopback. Served from the heap and kept there, they are reused at no cost.
    The trim threshold bounds what stays allocated but unused (peak RSS is
    unchanged: those pages were in use at the peak). Not glibc: nothing to do.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 4 * 1024 * 1024)
    mallopt(m_trim_threshold, 32 * 1024 * 1024)


def main(argv: list[str] | None = None, head: HeadStart | None = None) -> int:
    """Run mfetch with `argv` (default: the command line); `head`: the early requests
    client/headstart.py sent for this same command line."""
    try:
        return _run(argv, head)
    finally:
        if head is not None:
            head.close()


def _run(argv: list[str] | None, head: HeadStart | None) -> int:
    args = parser().parse_args(argv)
    _keep_buffers_in_heap()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
        format="mfetch: %(message)s", stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_main(args, head))
    except KeyboardInterrupt:
        print("mfetch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except MfetchError as e:
        print(f"mfetch: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. mfetch --json ... | head -c 10: say nothing more
        _drop_stdout()
        return 1


def _drop_stdout() -> None:
    """stdout's reader is gone: what is still buffered for it goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def entry(head: HeadStart | None = None) -> None:
    """The console script: :func:`main`, then an exit that skips the interpreter's
    teardown. Freeing every module and object took 30-45 ms of each run, from the
    output's rename to the process's end, with nothing left to do (measured on
    make bench's four-mirror case). What Python's own exit would still do first is
    done here: threads are shut down as at any exit (threading._shutdown runs the
    thread pools' exit hooks, then joins), logging and the standard streams are
    flushed. A summary its reader did not take (--json into a closed pipe) is
    status 1, whether it failed in print() or, buffered, here."""
    code = main(head=head)
    threading._shutdown()  # type: ignore[attr-defined]
    logging.shutdown()
    try:
        sys.stdout.flush()
    except OSError:
        _drop_stdout()
        code = code or 1
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)


async def _main(args: argparse.Namespace, head: HeadStart | None = None) -> int:
    flags = {"tracker": args.tracker, "connections": args.connections,
             "max_connections_per_source": args.max_connections_per_source,
             "stall_timeout": args.stall_timeout, "agent_token_file": args.agent_token_file,
             "max_connections_per_host": args.max_connections_per_host,
             "limit_rate": args.limit_rate, "agent": args.agent, "sync": args.sync,
             **security.link_flags(args)}
    cfg = client_config.load(args.config, flags)
    if args.background:
        return await background(args, cfg)
    urls = [t for t in args.targets if "://" in t]
    meta = args.targets[0] if metalink.is_metalink(args.targets[0]) else None
    if urls and len(urls) != len(args.targets):
        raise ConfigError("give either one NAME or URLs, not both")
    if not urls and len(args.targets) > 1:
        raise ConfigError("give one NAME at a time (several URLs are mirrors of one file)")
    for u in urls:
        check_url(u)
    if args.sha256 and args.sha256_file:
        raise ConfigError("give --sha256 or --sha256-file, not both")
    sha256 = parse_sha256(args.sha256) if args.sha256 else None

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)

    opts = http_options(args, cfg, urls)
    started = head.began if head else time.monotonic()
    read_timeout = cfg.stall_timeout + 5
    try:
        async with HttpClient(opts, connect_timeout=cfg.connect_timeout,
                              read_timeout=read_timeout,
                              per_host=cfg.max_connections_per_host + 1) as http:
            if args.sha256_file:
                target = name_from_url(urls[0]) if urls else safe_name(args.targets[0])
                sha256 = await sums_digest(http, args.sha256_file, target)
            if meta:
                plan = await plan_from_metalink(http, meta, sha256)
            elif urls:
                # Passwords stay in `opts`; messages and the summary show plain URLs.
                early = None
                if head is not None:
                    # As long as a probe would wait for its answer.
                    early = functools.partial(head.probe, http, patience=read_timeout)
                plan = await plan_from_urls(http, [strip_userinfo(u) for u in urls], sha256,
                                            early=early)
            else:
                from common.tracker_client import TrackerClient  # grpc: only for a NAME

                link = cfg.tracker_link()
                async with TrackerClient(cfg.tracker, link=link) as tracker:
                    plan = await plan_from_tracker(http, tracker, args.targets[0], sha256)
            out = output_path(args.output, plan, args.force)
            for note in plan.notes:
                log.warning("%s", note)
            if plan.stream:
                if head is not None:
                    head.close()  # no size, so no spans: nothing early is of use
                result = await fetch_stream(plan, out, http, started,
                                            client_config.rate_limit(cfg))
            else:
                result = await fetch(plan, out, cfg, http, quiet=args.quiet, started=started,
                                     head=head)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    if args.json:
        print(json.dumps(summary(result), indent=2))
    elif not args.quiet:
        checked = f"sha256 {result.sha256}" if result.sha256 else "not hash-checked"
        print(f"{result.path}: {result.size} bytes in {result.seconds:.1f}s "
              f"({', '.join(result.verified)}; {checked})", file=sys.stderr)
    return 0


async def background(args: argparse.Namespace, cfg: client_config.ClientConfig) -> int:
    """--background: the agent at cfg.agent fetches; print its id and where to watch."""
    from client.background import hand_over

    if cfg.agent == client_config.NO_AGENT:
        raise ConfigError("--background needs an agent: --agent URL (the setting is 'off')")
    if args.output:
        raise ConfigError("--background saves into the agent's folder: drop -o")
    if metalink.is_metalink(args.targets[0]) and "://" not in args.targets[0]:
        raise ConfigError("--background takes a NAME or URLs, not a local metalink file")
    if args.sha256_file:
        raise ConfigError("--background takes --sha256, not --sha256-file")
    # The agent fetches with its own settings (its tracker, limits and no credentials of
    # ours): a flag it would not honour is an error, not a silent surprise.
    ignored = [flag for flag, given in (
        ("-H", args.header), ("-A", args.user_agent), ("-u", args.user),
        ("--netrc", args.netrc or args.netrc_file), ("-b", args.cookie), ("-x", args.proxy),
        ("--cacert", args.cacert), ("--tracker", args.tracker),
        ("--limit-rate", args.limit_rate), ("--connections", args.connections),
        ("--max-connections", args.max_connections_per_source),
        ("--max-host-connections", args.max_connections_per_host),
        ("--stall-timeout", args.stall_timeout), ("--force", args.force),
        ("--sync", args.sync)) if given]
    if ignored:
        raise ConfigError(f"--background: the agent fetches with its own settings, so "
                          f"{', '.join(ignored)} would be ignored; drop "
                          f"{'it' if len(ignored) == 1 else 'them'}")
    if args.sha256:
        parse_sha256(args.sha256)
    token = security.resolve_token(cfg.agent_token, cfg.agent_token_file, "agent_token")
    answer = await hand_over(cfg.agent, list(args.targets), args.sha256, token=token)
    agent = cfg.agent.rstrip("/")
    if args.json:
        print(json.dumps({**answer, "agent": agent, "page": f"{agent}/fetches"}, indent=2))
    else:
        print(answer["id"])
        if not args.quiet:
            print(f"mfetch: the agent at {agent} is fetching it (id {answer['id']}); watch it at "
                  f"{agent}/fetches or {agent}/api/fetches/{answer['id']}", file=sys.stderr)
    return 0


async def sums_digest(http: HttpClient, where: str, name: str) -> bytes:
    """The expected digest of `name` from a checksum file or URL; raises ConfigError."""
    from client import checksums  # only with --sha256-file

    if "://" in where:
        try:
            async with http.get(where) as resp:
                if resp.status != 200:
                    raise ConfigError(f"{where}: answered {resp.status}")
                raw = await read_body(resp, checksums.MAX_BYTES)
        except TRANSIENT_ERRORS as e:
            raise ConfigError(f"{where}: {describe(e)}") from None
    else:
        try:
            raw = await asyncio.to_thread(checksums.read_head, where)
        except OSError as e:
            raise ConfigError(f"cannot read {where}: {e.strerror}") from None
    return checksums.pick(checksums.parse(raw.decode("utf-8", "replace")), name, where)


def output_path(option: str | None, plan: Plan, force: bool) -> pathlib.Path:
    """Where to save: OUT, OUT/name if OUT is a folder, or ./name. Refuses to clobber."""
    out = pathlib.Path(option) if option else pathlib.Path(plan.name)
    if out.is_dir():
        out = out / plan.name
    if out.exists() and not force:
        raise StorageError(f"{out} already exists (use --force to overwrite it)")
    if out.exists() and not out.is_file():
        raise StorageError(f"{out} exists and is not a regular file")
    folder = out.parent if str(out.parent) else pathlib.Path(".")
    if not folder.is_dir():
        raise StorageError(f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise StorageError(f"folder {folder} is not writable")
    return out


async def fetch(plan: Plan, out: pathlib.Path, cfg: client_config.ClientConfig,
                http: HttpClient, *, quiet: bool, started: float,
                head: HeadStart | None = None) -> Result:
    store = PartFile(out, durable=cfg.sync)
    done, note = store.open(content_key(plan), plan.pieces)
    if note:
        log.warning("%s", note)
    progress = None
    if not quiet and sys.stderr.isatty():
        from client.progress import Progress
        progress = Progress(plan.name)
    swarm = None
    if cfg.agent != client_config.NO_AGENT and not plan.stream:
        from client.swarm import SwarmLink

        swarm = SwarmLink(cfg.agent, plan, cfg.tracker, http,
                          link=cfg.tracker_link())
        # Quietly no swarming when nobody asked for it and no agent runs here.
        if await swarm.register(store, quiet=cfg.agent == client_config.DEFAULT_AGENT):
            if not quiet:  # peers on the LAN will see it: say so
                print(f"mfetch: sharing this download with other fetchers through the agent "
                      f"at {cfg.agent} (swarming; --agent off to keep it to yourself)",
                      file=sys.stderr)
            # Our own agent is not a source of what we are fetching.
            plan = dataclasses.replace(plan, sources=tuple(
                s for s in plan.sources if not s.agent_id or s.agent_id != swarm.agent_id))
    fetcher = Fetcher(plan, store, config=cfg.scheduler(), http=http, done=done,
                      on_progress=progress, limit=client_config.rate_limit(cfg),
                      rarest_first=bool(swarm and swarm.registered))
    if head is not None:
        for source, offset, data, early in head.pieces(plan):
            used, goes_on = fetcher.adopt(source, offset, data, early)
            log.debug("head start: %s sent %d bytes during start-up, %d of them in whole "
                      "pieces%s", plan.sources[source].url, len(data), used,
                      "; the rest of its answer goes on" if goes_on else "")
        head.close()  # what was not taken over, and the memory of what was written
    sharing = asyncio.create_task(swarm.run(fetcher)) if swarm and swarm.registered else None
    completed = False
    try:
        if progress:
            with progress:
                sha = await fetcher.run()
        else:
            sha = await fetcher.run()
        path = store.finish()
        completed = True
    finally:
        store.close()
        if sharing is not None:
            sharing.cancel()
            await asyncio.gather(sharing, return_exceptions=True)
        if swarm is not None:
            if completed:
                await swarm.complete(str(path.resolve()))
            else:
                await swarm.withdraw()
            await swarm.close()
    return Result(str(path), plan.size, sha, time.monotonic() - started, fetcher.report(),
                  tuple(plan.notes) + tuple(fetcher.notes), verified_by(plan))


async def fetch_stream(plan: Plan, out: pathlib.Path, http: HttpClient,
                       started: float, limit: TokenBucket | None = None) -> Result:
    """A source that gives no size: one stream (see client/stream.py)."""
    url = plan.sources[0].url
    log.warning("%s gives no size: fetching it in one stream, without ranges or resume", url)
    from client.stream import stream_fetch  # only for a source that gives no size

    size, sha, notes = await stream_fetch(http, url, out, plan.sha256, limit)
    for note in notes:
        log.warning("%s", note)
    report = SourceReport(url, "url", size, 0, 0, "")
    checks = ("the whole file's sha256",) if plan.sha256 else ("nothing: no size, no digest",)
    return Result(str(out), size, sha, time.monotonic() - started, (report,),
                  plan.notes + tuple(notes), checks)


def verified_by(plan: Plan) -> tuple[str, ...]:
    """What vouched for the bytes, strongest first."""
    checks = []
    if plan.piece_hashes is not None:
        checks.append("every piece's sha256")
    if plan.sha256 is not None:
        checks.append("the whole file's sha256")
    if not checks:
        checks.append("sizes, ranges and validators only")
    return tuple(checks)


def summary(r: Result) -> dict[str, object]:
    return {
        "path": r.path,
        "size": r.size,
        "sha256": r.sha256 or None,
        "verified": list(r.verified),
        "seconds": round(r.seconds, 3),
        "sources": [
            {"url": s.url, "kind": s.kind, "bytes": s.bytes, "pieces": s.pieces,
             "failures": s.failures, "dropped": bool(s.dropped), "dropped_reason": s.dropped}
            for s in r.sources
        ],
        "notes": list(r.notes),
    }


if __name__ == "__main__":
    sys.exit(main())
