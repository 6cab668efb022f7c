"""The tracker's store: a narrow async interface, so SQLite and Redis can both back it.

The store keeps three things:

- agent leases: agent_id -> (base_url, expires_at);
- holdings: (agent_id, path) -> content identity, and for a swarm download in
  progress the bitfield of its verified pieces (empty: the whole content);
- mirrors: url -> (name, sha256, size).

Liveness is decided by the store against its injected clock: a holding is
returned only while its agent's lease has not expired. Holdings of an agent
whose lease lapsed are kept (they come back when it renews or re-registers)
until :meth:`Store.purge` drops agents that lapsed long ago.
"""
from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from common.identity import Identity


@dataclass(frozen=True, slots=True)
class Holding:
    """One file an agent holds: its relative '/'-separated path and its identity.

    `have` is empty for a whole file; for a partial holder (a download in
    progress, see common.bitfield) the pieces it has verified. Announcing the
    same path again replaces it: the latest bitfield wins.
    """

    path: str
    identity: Identity
    have: bytes = b""

    @property
    def name(self) -> str:
        """The basename, which locate-by-name matches (as well as the whole path)."""
        return posixpath.basename(self.path)


@dataclass(frozen=True, slots=True)
class Located:
    """A holding of a live agent, as a locate query returns it."""

    agent_id: str
    base_url: str
    holding: Holding


@dataclass(frozen=True, slots=True)
class MirrorRecord:
    """A plain HTTP mirror of one content. `size` is 0 when unknown."""

    url: str
    name: str
    sha256: bytes
    size: int


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """A live agent, for the status page: `lease_left` is seconds until its lease lapses
    (by the store's clock, so it is right even when trackers' clocks disagree)."""

    agent_id: str
    base_url: str
    lease_left: float
    holdings: int


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """A content some live agent holds: its names and live holders, each list capped."""

    sha256: bytes
    size: int
    names: tuple[str, ...]
    holders: tuple[str, ...]  # agent ids, at most the overview's limit
    holder_count: int


@dataclass(frozen=True, slots=True)
class Overview:
    """A bounded picture of the store for metrics and the status page.

    The counts are exact; each list holds at most `limit` entries (agents with the most
    recent lease first; contents in SHA-256 order; mirrors by URL), so one call stays cheap
    with 10,000 agents. `contents` counts the distinct contents of every known agent's
    holdings (lapsed agents' too, until purged); `contents_list` only those with a live holder.
    """

    live_agents: int
    contents: int
    mirrors: int
    agents: tuple[AgentInfo, ...] = ()
    contents_list: tuple[ContentInfo, ...] = ()
    mirror_list: tuple[MirrorRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Renewal:
    """One heartbeat's lease renewal: by the tracker's clock, when it arrived and the
    lease's new end."""

    agent_id: str
    expires_at: float
    asked_at: float


Found = tuple[list[Located], list[MirrorRecord]]
"""What a locate finds: live holdings, and mirrors."""


class Store(Protocol):
    """What the tracker needs from its storage. Every method may raise OSError-like
    backend errors (sqlite3.Error, redis errors); the servicer reports those as INTERNAL."""

    async def register(self, agent_id: str, base_url: str, expires_at: float) -> None:
        """Create or refresh an agent's lease (and its base_url); its holdings are kept."""
        ...

    async def renew(self, agent_id: str, expires_at: float) -> bool:
        """Extend a live agent's lease. False if the agent is unknown or its lease lapsed."""
        ...

    async def renew_many(self, renewals: Sequence[Renewal]) -> list[bool]:
        """Apply many renewals in one write (tracker/renewals.py batches heartbeats so):
        each extends its agent's lease to at least `expires_at` if the lease was live at
        `asked_at` (when the heartbeat arrived), and its result says whether it was."""
        ...

    async def is_live(self, agent_id: str) -> bool:
        """Whether the agent is known and its lease has not expired."""
        ...

    async def update_holdings(self, agent_id: str, *, replace: bool,
                              added: Sequence[Holding], removed: Sequence[str]) -> int:
        """Apply an announcement: with `replace`, the agent's holdings become exactly
        `added`; otherwise `removed` paths go, then `added` are upserted (so a path in
        both ends up added). Returns how many holdings the agent now has."""
        ...

    async def remove_agent(self, agent_id: str) -> None:
        """Forget an agent and all its holdings."""
        ...

    async def holdings_named(self, name: str) -> list[Located]:
        """Live holdings whose basename or whole relative path equals `name`."""
        ...

    async def holders_of(self, sha256: bytes) -> list[Located]:
        """Live holdings whose content has this whole-file SHA-256."""
        ...

    async def locate_name(self, name: str, max_contents: int) -> Found:
        """Everything a Locate by name needs, in one call: the contents `name` resolves
        to (the sha256 of live holdings whose basename or whole path is `name`, and of
        mirrors named `name`), at most `max_contents` of them, those with the most such
        live holdings first (mirror-only contents count 0; ties by sha256); then every
        live holding of those contents, whatever its path, ordered by (agent_id, path),
        and every mirror of them, ordered by URL."""
        ...

    async def locate_sha256(self, sha256: bytes) -> Found:
        """Every live holding of this content, ordered by (agent_id, path), and its
        mirrors, ordered by URL: holders_of and mirrors_of in one call."""
        ...

    async def put_mirror(self, mirror: MirrorRecord) -> None:
        """Add a mirror, or replace the one with the same URL."""
        ...

    async def remove_mirror(self, url: str) -> bool:
        """Remove a mirror; False if there was none with that URL."""
        ...

    async def list_mirrors(self) -> list[MirrorRecord]:
        """Every mirror, ordered by URL."""
        ...

    async def mirrors_named(self, name: str) -> list[MirrorRecord]:
        """Mirrors whose name equals `name`."""
        ...

    async def mirrors_of(self, sha256: bytes) -> list[MirrorRecord]:
        """Mirrors of the content with this SHA-256."""
        ...

    async def overview(self, limit: int) -> Overview:
        """Counts of live agents, contents and mirrors, and at most `limit` of each."""
        ...

    async def purge(self, lapsed_before: float) -> int:
        """Forget agents whose lease expired before `lapsed_before`; returns how many."""
        ...

    async def close(self) -> None:
        """Release the backend; the store is unusable afterwards."""
        ...
