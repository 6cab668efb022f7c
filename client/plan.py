"""What to fetch and from where: a NAME through the tracker, or mirrors given by hand.

The result is a :class:`Plan`: the content's size and piece layout, what
vouches for its bytes (piece hashes checked against the tracker's root, or
only a whole-file SHA-256, or only HTTP validators), and its sources.
"""
from __future__ import annotations

import asyncio
import dataclasses
import posixpath
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from client import metalink
from client.http import TRANSIENT_ERRORS, HttpClient, Probe, describe, probe, read_body

if TYPE_CHECKING:
    from common.index import Candidate, Source
    from common.tracker_client import TrackerClient
from common import bitfield
from common.errors import ConfigError, IntegrityError, NotFoundError, SourceError
from common.identity import Identity, digest_from_hex, piece_size_for


@dataclass(frozen=True, slots=True)
class SourcePlan:
    url: str
    kind: str  # "agent", "mirror" or "url"
    validator: str = ""  # known in advance (agents: their ETag; URLs: from the probe)
    ranges: bool = True
    agent_id: str = ""  # agents only
    have: bytes = b""  # a partial holder's bitfield (common.bitfield); empty: every piece


@dataclass(frozen=True)
class Plan:
    name: str  # a plain file name to save as
    size: int
    piece_size: int
    sha256: bytes | None  # whole-file digest to check before handing the file over
    root: bytes | None
    piece_hashes: tuple[bytes, ...] | None  # verified against root; None: no piece checks
    sources: tuple[SourcePlan, ...]
    notes: tuple[str, ...] = ()
    stream: bool = False  # no size known: one stream from sources[0], no ranges, no resume

    @property
    def pieces(self) -> int:
        return -(-self.size // self.piece_size)


def safe_name(raw: str, fallback: str = "download") -> str:
    """A plain file name from a name or URL path: no folders, no control characters."""
    base = posixpath.basename(raw.replace("\\", "/"))
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if base in ("", ".", ".."):
        return fallback
    while len(base.encode()) > 200:  # room for .part and .mfetch.tmp in a 255-byte name
        base = base[:-1]
    return base


def name_from_url(url: str) -> str:
    return safe_name(unquote(urlsplit(url).path), fallback="index.html")


async def plan_from_tracker(client: HttpClient, tracker: TrackerClient, name: str,
                            sha256: bytes | None) -> Plan:
    """Locate `name` (or `sha256`) and build a plan from the best candidate.

    Raises NotFoundError, TrackerError, IntegrityError (no source has a
    piece list matching the root), SourceError.
    """
    if sha256 is not None:
        # By digest, not by filtering the name's answer: that answer lists only the
        # most-held versions, and the one asked for may not be among them.
        try:
            candidates = await tracker.locate(sha256=sha256)
        except NotFoundError:
            raise NotFoundError(f"no version of {name!r} has sha256 {sha256.hex()}") from None
    else:
        candidates = await tracker.locate(name=name)
    best = candidates[0]
    notes = []
    if len(candidates) > 1:
        others = ", ".join(f"{c.content.sha256.hex()[:12]}… ({c.live_holders} holders)"
                           for c in candidates[1:])
        notes.append(f"{len(candidates)} versions of {name!r} exist; taking "
                     f"{best.content.sha256.hex()[:12]}… held by {best.live_holders}; "
                     f"others: {others} (pick one with --sha256)")
    if not best.sources:
        raise NotFoundError(f"{name or sha256.hex() if sha256 else ''}: no live source holds it")
    return await _plan_candidate(client, best, name or best.name, notes)


async def _plan_candidate(client: HttpClient, cand: Candidate, name: str,
                          notes: list[str]) -> Plan:
    from common.index import SourceKind  # only for a NAME (the tracker's answer)

    content = cand.content
    located = list(cand.sources)
    if cand.has_pieces:
        for s in [s for s in located if s.have]:
            try:
                bitfield.check(s.have, content.pieces)
            except bitfield.BadBitfield as e:
                notes.append(f"leaving out {s.url}: its {e}")
                located.remove(s)
    else:
        located = [s for s in located if not s.have]  # pieces unknown: no partial holders
    # Full holders first: they surely have the piece list.
    agents = sorted((s for s in located if s.kind is SourceKind.AGENT), key=lambda s: bool(s.have))
    sources = tuple(source_plan(s) for s in located)
    if not cand.has_pieces:
        # Only mirrors: no piece hashes, but the whole-file sha256 is known.
        piece = piece_size_for(content.size)
        return Plan(safe_name(name), content.size, piece, content.sha256, None, None, sources,
                    tuple(notes))
    hashes = await fetch_piece_list(client, content, [s.pieces_url for s in agents])
    return Plan(safe_name(name), content.size, content.piece_size, content.sha256, content.root,
                tuple(hashes), sources, tuple(notes))


def source_plan(s: Source) -> SourcePlan:
    """A located source as the fetcher sees it; a partial holder (swarm peer) is "peer"."""
    return SourcePlan(s.url, "peer" if s.have else s.kind.value, agent_id=s.agent_id,
                      have=s.have)


async def fetch_piece_list(client: HttpClient, content: Identity,
                           urls: list[str]) -> list[bytes]:
    """The piece list from the first source whose list hashes to the content's root.

    `urls` are piece lists of agents the tracker named: the agent token goes with them."""
    errors = []
    for url in urls:
        try:
            async with client.get(url, agent=True) as resp:  # pieces of agents only
                if resp.status != 200:
                    hint = " (the agent wants a token: --agent-token-file)" if (
                        resp.status == 401 and not client.opts.agent_token) else ""
                    errors.append(f"{url}: answered {resp.status}{hint}")
                    continue
                blob = await read_body(resp, content.pieces * 32)
            return content.check_piece_list(blob)
        except IntegrityError as e:
            errors.append(f"{url}: {e}")
        except TRANSIENT_ERRORS as e:
            errors.append(f"{url}: {describe(e)}")
    raise IntegrityError("no source gave a piece list matching the content's root: "
                         + "; ".join(errors))


async def plan_from_urls(client: HttpClient, urls: list[str], sha256: bytes | None,
                         expected_size: int | None = None,
                         early: Callable[[str], Awaitable[Probe | None]] | None = None
                         ) -> Plan:
    """Probe every URL; they must agree on the size. Unreachable ones are left out.

    With `expected_size` (from a metalink), mirrors of another size are left out.
    `early(url)`: the probe an earlier answer makes (the head start's,
    client/headstart.py), or None to probe as usual.
    Raises SourceError when none answers, ConfigError when they disagree on the size.
    """
    async def ask(url: str) -> Probe:
        found = await early(url) if early else None
        return found if found is not None else await probe(client, url)

    results = await asyncio.gather(*(ask(u) for u in urls), return_exceptions=True)
    probes: list[Probe] = []
    notes = []
    failures = []
    for url, r in zip(urls, results):
        if isinstance(r, SourceError):
            failures.append(str(r))
        elif isinstance(r, BaseException):
            raise r
        else:
            # The source stays the URL the user gave: a redirect target may be signed
            # and expire, and each request follows the redirects afresh.
            probes.append(dataclasses.replace(r, url=url))
    if not probes:
        raise SourceError(failures[0] if len(failures) == 1 else
                          "no mirror answered: " + "; ".join(failures))
    notes += [f"leaving out {f}" for f in failures]
    sized = [p for p in probes if p.size is not None]
    if not sized:  # nobody says the size: one stream, hashed as it comes
        return Plan(name_from_url(urls[0]), 0, piece_size_for(0), sha256, None, None,
                    (SourcePlan(probes[0].url, "url"),), tuple(notes), stream=True)
    if len(sized) < len(probes):
        notes.append("leaving out mirrors that give no size: "
                     + ", ".join(p.url for p in probes if p.size is None))
        probes = sized
    if expected_size is not None:
        wrong = [p for p in probes if p.size != expected_size]
        notes += [f"leaving out {p.url}: it has {p.size} bytes, the metalink says "
                  f"{expected_size}" for p in wrong]
        probes = [p for p in probes if p.size == expected_size]
        if not probes:
            raise SourceError(f"no mirror has the {expected_size} bytes the metalink says")
    sizes = {p.size for p in probes if p.size is not None}
    if len(sizes) > 1:
        detail = ", ".join(f"{p.url} has {p.size}" for p in probes)
        raise ConfigError(f"the mirrors disagree on the size: {detail} bytes")
    size = sizes.pop()
    ranged = [p for p in probes if p.ranges]
    if ranged and len(ranged) < len(probes):
        notes.append("leaving out mirrors that ignore byte ranges: "
                     + ", ".join(p.url for p in probes if not p.ranges))
        probes = ranged
    sources = tuple(SourcePlan(p.url, "url", p.validator, p.ranges) for p in probes)
    return Plan(name_from_url(urls[0]), size, piece_size_for(size), sha256, None, None, sources,
                tuple(notes))


MAX_METALINK_PIECE = 64 * 1024 * 1024  # a tail duplicate buffers one piece in memory


async def plan_from_metalink(client: HttpClient, path: str, sha256: bytes | None) -> Plan:
    """A plan from a Metalink 4 file: its mirrors, size, digest and piece hashes.

    Raises ConfigError for a malformed metalink or a --sha256 that contradicts it.
    """
    meta = metalink.load(path)
    if sha256 and meta.sha256 and sha256 != meta.sha256:
        raise ConfigError(f"--sha256 {sha256.hex()} contradicts the metalink's "
                          f"{meta.sha256.hex()}")
    plan = await plan_from_urls(client, list(meta.urls), sha256 or meta.sha256, meta.size)
    name = safe_name(meta.name) if meta.name else plan.name
    plan = dataclasses.replace(plan, name=name)
    if meta.piece_hashes is None or meta.piece_size is None:
        return plan
    if meta.piece_size > MAX_METALINK_PIECE:
        return dataclasses.replace(plan, notes=plan.notes + (
            (f"ignoring the metalink's piece hashes: pieces of {meta.piece_size} bytes are "
            "too large to check one by one; the whole file is still checked"),))
    return dataclasses.replace(plan, piece_size=meta.piece_size, piece_hashes=meta.piece_hashes)


def parse_sha256(text: str) -> bytes:
    """The --sha256 flag: 64 hex digits; raises ConfigError otherwise."""
    return digest_from_hex(text, "--sha256")
