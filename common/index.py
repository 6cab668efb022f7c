"""What the tracker's index answers, as plain values: no gRPC here, so code that only
handles answers (the client's planning, a URL-only fetch) does not load grpc.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from common.identity import Identity


@dataclass(frozen=True, slots=True)
class Lease:
    """What Register answers: renew the lease every `heartbeat_seconds`."""

    lease_seconds: int
    heartbeat_seconds: int


class SourceKind(enum.Enum):
    AGENT = "agent"
    MIRROR = "mirror"


@dataclass(frozen=True, slots=True)
class Source:
    """One place to fetch a content from. `pieces_url` and `agent_id` are empty for mirrors.

    `have` is a partial holder's bitfield (common.bitfield); empty for a full holder."""

    kind: SourceKind
    url: str
    pieces_url: str = ""
    agent_id: str = ""
    have: bytes = b""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One content found under a key, with its sources (live agents first, then mirrors).

    `content.piece_size` is 0 and `content.root` empty when only mirrors carry it
    (no piece hashes known): check `has_pieces` before using `content.pieces`.
    """

    content: Identity
    name: str
    sources: tuple[Source, ...]
    live_holders: int

    @property
    def has_pieces(self) -> bool:
        return self.content.piece_size > 0 and len(self.content.root) == 32


@dataclass(frozen=True, slots=True)
class Mirror:
    """A plain HTTP mirror of one content; `size` 0 means unknown."""

    url: str
    name: str
    sha256: bytes
    size: int = 0
