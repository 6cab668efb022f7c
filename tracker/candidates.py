"""Locate's answer: group what the store found into candidates, one per content.

Pure: takes store records, returns pb2 Candidates. A content is its full
identity (size, sha256, piece_size, root), so agents that disagree about a
name's bytes, or lie about a root, show up as separate candidates and the
client picks (most live holders first).

Answers are capped, so a popular content or a flooded name cannot make one
Locate answer huge (it must fit the client's 4 MB gRPC limit and cost little
to build): at most MAX_CANDIDATES candidates (the most held), and per
candidate at most MAX_AGENT_SOURCES agents, chosen at random among the live
holders when there are more (so the load spreads over all of them, call by
call), and MAX_MIRROR_SOURCES mirrors. `live_holders` still counts them all.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from common import agent_api
from common.api import tracker_pb2 as pb
from common.identity import Identity
from tracker.store import Located, MirrorRecord

MAX_CANDIDATES = 8
MAX_AGENT_SOURCES = 50
MAX_MIRROR_SOURCES = 8
_RNG = random.Random()


@dataclass
class _Group:
    identity: Identity
    name: str
    agents: dict[str, Located] = field(default_factory=dict)  # one source per agent
    mirrors: dict[str, MirrorRecord] = field(default_factory=dict)


def build(located: Iterable[Located], mirrors: Iterable[MirrorRecord],
          name: str = "", rng: random.Random | None = None) -> list[pb.Candidate]:
    """Candidates from live holdings and mirrors, most live holders first.

    `name` (when locating by name) names every candidate; otherwise a candidate
    is named after its first holding's basename, or its mirror's name. A mirror
    joins every candidate with its sha256 (when its size is unknown or agrees);
    a mirror whose content no agent holds forms a candidate with piece_size 0
    and an empty root. At most MAX_CANDIDATES, each with at most MAX_AGENT_SOURCES
    agents (a sample drawn with `rng` when there are more) and MAX_MIRROR_SOURCES
    mirrors (the first by URL).
    """
    groups: dict[Identity, _Group] = {}
    for loc in sorted(located, key=lambda x: (x.agent_id, x.holding.path)):
        g = groups.setdefault(loc.holding.identity,
                              _Group(loc.holding.identity, name or loc.holding.name))
        held = g.agents.setdefault(loc.agent_id, loc)
        if held.holding.have and not loc.holding.have:
            g.agents[loc.agent_id] = loc  # one source per agent: its whole file if it has one
    for m in sorted(mirrors, key=lambda x: x.url):
        homes = [g for g in groups.values()
                 if g.identity.sha256 == m.sha256 and m.size in (0, g.identity.size)]
        if not homes:
            unknown = Identity(m.size, m.sha256, 0, b"")
            homes = [groups.setdefault(unknown, _Group(unknown, name or m.name))]
        for g in homes:
            g.mirrors[m.url] = m
    ordered = sorted(groups.values(), key=lambda g: (-len(g.agents), -len(g.mirrors),
                                                     g.identity.sha256, g.identity.root))
    return [_candidate(g, rng or _RNG) for g in ordered[:MAX_CANDIDATES]]


def _candidate(g: _Group, rng: random.Random) -> pb.Candidate:
    ident = g.identity
    agents = list(g.agents.values())
    if len(agents) > MAX_AGENT_SOURCES:
        agents = sorted(rng.sample(agents, MAX_AGENT_SOURCES), key=lambda x: x.agent_id)
    sources = []
    for loc in agents:
        url, pieces_url = _urls(loc.base_url, loc.holding.path, ident.sha256)
        sources.append(pb.Source(kind=pb.Source.AGENT, agent_id=loc.agent_id, url=url,
                                 pieces_url=pieces_url, have=loc.holding.have))
    sources += [pb.Source(kind=pb.Source.MIRROR, url=m.url)
                for m in list(g.mirrors.values())[:MAX_MIRROR_SOURCES]]
    return pb.Candidate(
        content=pb.Content(size=ident.size, sha256=ident.sha256,
                           piece_size=ident.piece_size, root=ident.root),
        name=g.name, sources=sources, live_holders=len(g.agents))


@functools.lru_cache(maxsize=1 << 16)
def _urls(base_url: str, path: str, sha256: bytes) -> tuple[str, str]:
    """A holding's source and piece-list URLs. Cached: the same holdings are answered
    again and again, and quoting the path was a third of building an answer."""
    return (agent_api.source_url(base_url, path, sha256),
            agent_api.pieces_url(base_url, sha256))
