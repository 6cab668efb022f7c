"""mfetch's side of swarming: share the download through the local agent, find peers.

With ``--agent URL`` (or ``agent:`` / ``MFETCH_AGENT``), a download of a NAME
(a content with piece hashes) is:

1. registered with the local agent (agent/swarm.py): identity, piece list, the
   path of OUT.part and the pieces verified so far. The agent refuses a path
   outside its directory; mfetch then says why and fetches without sharing.
2. kept current: the verified pieces are sent to the agent every
   ``PUSH_SECONDS`` when they changed (the agent rate-limits what it tells the
   tracker; an agent restarted meanwhile has forgotten the download and gets it
   registered again); at the end "complete" with the final path, after which the agent
   seeds the file as a whole holder. A download that stops early is withdrawn.
3. fed with peers: the tracker is asked again every ``RELOCATE_SECONDS`` for
   holders of the content (fetchers that started after us), and every partial
   holder is asked for its bitfield every ``HAVE_SECONDS``
   (``GET /swarm/<sha256>/have``), fresher than the tracker's copy. The partial
   holders' agent ids, sorted, with ours, give this fetcher its stripe (its
   rank among the fetchers; see client/scheduler.py): the same order at every
   fetcher, so they ask the origin for different pieces.

Every piece from a peer is checked against the piece list like any other; a
peer whose bitfield does not fit the content is no longer asked (logged).
Failures of the swarm side never fail the download: it goes on from the
sources it has.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from client import wire
from client.http import TRANSIENT_ERRORS, HttpClient, describe, read_body
from client.plan import Plan, source_plan
from common import agent_api, bitfield
from common.errors import MfetchError
from common.security import TrackerLink

if TYPE_CHECKING:
    from client.fetcher import Fetcher
    from client.storage import PartFile

log = logging.getLogger("mfetch")

# How fresh the news of pieces is. A piece verified here reaches a peer's scheduler
# after up to PUSH_SECONDS + HAVE_SECONDS (plus a request each way, and the polls
# once waited for the locate too); the swarm's tail is the last pieces relayed one or
# two hops, each that late. In the swarm simulator (tests/sim.py, eight fetchers of
# 32 MiB) 0.25 + 0.6 s gave 16.0 s, 0.1 + 0.25 s 15.6 s, for four small requests a
# second to each peer (a 16-byte bitfield here) instead of two.
PUSH_SECONDS = 0.1  # to the local agent only
HAVE_SECONDS = 0.25
RELOCATE_SECONDS = 1.0
FIRST_LOCATE_SECONDS = 0.5  # the fetchers that started with us have registered by then
LOCAL_TIMEOUT = 5.0


def _no_tls() -> Any:
    raise ValueError("the local agent is reached over plain HTTP")


class AgentRefused(MfetchError):
    """The local agent answered with an error status (kept in `status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SwarmLink:
    """One download's link to the local agent and to its peers."""

    def __init__(self, agent_url: str, plan: Plan, tracker: str, http: HttpClient, *,
                 link: TrackerLink | None = None) -> None:
        self.agent_url = agent_url.rstrip("/")
        self.plan = plan
        self.tracker = tracker
        self.link = link  # TLS and token for the tracker, as mfetch reaches it
        self.http = http
        self.agent_id = ""
        self.registered = False
        self._session: wire.WireClient | None = None
        self._sha = plan.sha256.hex() if plan.sha256 else ""

    async def _local(self, method: str, path: str, doc: Any = None) -> Any:
        """A call to the local agent's loopback API; raises MfetchError with its reason."""
        if self._session is None:
            # Its own client: no proxy, no credentials, only the local agent.
            self._session = wire.WireClient(connect_timeout=LOCAL_TIMEOUT,
                                            read_timeout=LOCAL_TIMEOUT, tls=_no_tls)
        try:
            async with asyncio.timeout(LOCAL_TIMEOUT):
                r = await self._session.request(
                    method, self.agent_url + path,
                    [("Content-Type", "application/json"), ("Accept", "application/json")],
                    json.dumps(doc).encode() if doc is not None else b"")
                async with r:
                    body = await r.read()
                try:
                    answer = json.loads(body) if body else {}
                except ValueError:
                    answer = {"error": body[:200].decode("utf-8", "replace").strip()}
                if r.status != 200:
                    why = answer.get("error") if isinstance(answer, dict) else None
                    raise AgentRefused(f"the agent at {self.agent_url} answered {r.status}: "
                                       f"{why or r.reason}", r.status)
                return answer
        except ValueError as e:  # a URL that cannot be requested
            raise MfetchError(f"the agent at {self.agent_url}: {e}") from None
        except TRANSIENT_ERRORS as e:
            raise MfetchError(f"the agent at {self.agent_url}: {describe(e)}") from None

    async def register(self, store: PartFile, *, quiet: bool = False) -> bool:
        """Share the download; False (with a warning, or a debug line if `quiet`: the
        agent was not asked for by name) if the agent will not."""
        say = log.debug if quiet else log.warning
        plan = self.plan
        if not (plan.sha256 and plan.root and plan.piece_hashes is not None):
            say("not swarming: only a NAME from the tracker (with piece hashes) is "
                "shared through the agent")
            return False
        doc = {"sha256": self._sha, "size": plan.size, "piece_size": plan.piece_size,
               "root": plan.root.hex(),
               "pieces": base64.b64encode(b"".join(plan.piece_hashes)).decode(),
               "name": plan.name, "path": str(store.part.resolve()),
               "have": base64.b64encode(bitfield.pack(store.done)).decode()}
        try:
            answer = await self._local("POST", agent_api.LOCAL_SWARM, doc)
        except MfetchError as e:
            say("not swarming: %s", e)
            return False
        self.agent_id = str(answer.get("agent_id", ""))
        self.registered = True
        return True

    async def run(self, fetcher: Fetcher) -> None:
        """Push our pieces, poll peers, relocate; until cancelled. Never raises."""
        await asyncio.gather(self._push(fetcher), self._peers(fetcher))

    async def _push(self, fetcher: Fetcher) -> None:
        sent = b""
        loop = asyncio.get_running_loop()
        retry_at = 0.0
        while True:
            bits = bitfield.pack(fetcher.store.done)
            if bits != sent:
                try:
                    await self._local("POST", f"{agent_api.LOCAL_SWARM}/{self._sha}",
                                      {"have": base64.b64encode(bits).decode()})
                    sent = bits
                except AgentRefused as e:
                    if e.status == 404 and loop.time() >= retry_at:
                        # The agent restarted and forgot us: register again (at most
                        # every 5 s, so a refusal is not repeated four times a second).
                        log.debug("swarm: the agent lost the download; registering again")
                        retry_at = loop.time() + 5.0
                        if await self.register(fetcher.store):
                            sent = bits
                except MfetchError as e:
                    log.debug("swarm: %s", e)
            await asyncio.sleep(PUSH_SECONDS)

    async def _peers(self, fetcher: Fetcher) -> None:
        polled: dict[str, int] = {}  # a partial holder's URL -> its source index
        for i, s in enumerate(fetcher.plan.sources):
            if s.have:
                polled[s.url] = i
        # Two loops: a slow locate must not hold up the bitfield polls.
        await asyncio.gather(self._relocate(fetcher, polled), self._poll_all(fetcher, polled))

    async def _poll_all(self, fetcher: Fetcher, polled: dict[str, int]) -> None:
        while True:
            await asyncio.gather(*(self._poll(fetcher, url, sid, polled)
                                   for url, sid in list(polled.items())))
            await asyncio.sleep(HAVE_SECONDS)

    async def _relocate(self, fetcher: Fetcher, polled: dict[str, int]) -> None:
        from common.tracker_client import TrackerClient  # grpc: only when swarming

        known = {s.url for s in fetcher.sources}
        fetchers = {self.agent_id}  # agent ids of the fetchers sharing this content
        async with TrackerClient(self.tracker, link=self.link) as tracker:
            delay = FIRST_LOCATE_SECONDS
            while True:
                await asyncio.sleep(delay)
                delay = RELOCATE_SECONDS
                located = await self._locate(tracker)
                # Sticky: a fetcher that completed keeps its stripe (it has it all, so
                # nobody needs it from the origin), or stripes would shift under
                # everyone near the end; one that left the tracker's answer is gone.
                fetchers = (fetchers | {s.agent_id for s in located if s.have}) \
                    & ({s.agent_id for s in located} | {self.agent_id})
                fetching = sorted(fetchers)
                fetcher.set_stripe(fetching.index(self.agent_id), len(fetching))
                for src in located:
                    if src.url in known or (src.agent_id and src.agent_id == self.agent_id):
                        continue
                    known.add(src.url)
                    sid = fetcher.add_source(source_plan(src))
                    log.debug("swarm: new source %s%s", src.url,
                              " (partial)" if src.have else "")
                    if src.have:
                        polled[src.url] = sid

    async def _locate(self, tracker: Any) -> list[Any]:
        try:
            cands = await tracker.locate(sha256=self.plan.sha256)
        except MfetchError as e:
            log.debug("swarm: locate failed: %s", e)
            return []
        out = []
        for c in cands:
            if c.content.root != self.plan.root or c.content.size != self.plan.size:
                continue
            for s in c.sources:
                if s.have:
                    try:
                        bitfield.check(s.have, self.plan.pieces)
                    except bitfield.BadBitfield as e:
                        log.warning("swarm: leaving out %s: its %s", s.url, e)
                        continue
                out.append(s)
        return out

    async def _poll(self, fetcher: Fetcher, url: str, sid: int, polled: dict[str, int]) -> None:
        """Ask one partial holder for its bitfield; stop asking one that is gone or wrong."""
        if fetcher.sched.sources[sid].dropped:
            polled.pop(url, None)
            return
        try:
            async with self.http.get(url + "/have", agent=True) as resp:
                if resp.status != 200:
                    if resp.status == 404:
                        polled.pop(url, None)  # its download stopped: its requests will say so
                    return
                raw = await read_body(resp, bitfield.length(self.plan.pieces) + 1)
            have = bitfield.unpack(raw, self.plan.pieces)
        except bitfield.BadBitfield as e:
            log.warning("swarm: %s sent a bad bitfield (%s); no longer asking it", url, e)
            polled.pop(url, None)
            return
        except (MfetchError, *TRANSIENT_ERRORS) as e:
            log.debug("swarm: %s/have: %s", url, e)
            return
        fetcher.set_have(sid, have)
        if all(have):
            polled.pop(url, None)  # it has everything: nothing more to learn

    async def complete(self, path: str) -> None:
        """Tell the agent the file is whole at `path`: it seeds it from now on."""
        if self.registered:
            try:
                await self._local("POST", f"{agent_api.LOCAL_SWARM}/{self._sha}",
                                  {"complete": path})
            except MfetchError as e:
                log.warning("the agent will not seed the finished file: %s", e)

    async def withdraw(self) -> None:
        """The download stopped before completing: stop sharing it."""
        if self.registered:
            with contextlib.suppress(MfetchError):
                await self._local("DELETE", f"{agent_api.LOCAL_SWARM}/{self._sha}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
