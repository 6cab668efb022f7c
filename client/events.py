"""What passes between the scheduler core and the I/O shell around it.

Events go into :meth:`client.scheduler.Scheduler.handle`; actions come out.
Everything is a frozen value: the shell never reaches into the core's state
and the core never touches a socket, a file or the real clock.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultKind(enum.Enum):
    """How bad a failed request is for its source."""

    TRANSIENT = "transient"  # connection reset, timeout, 5xx: retry after a backoff
    FATAL = "fatal"  # 4xx, a range or validator the source got wrong: drop the source
    BUSY = "busy"  # 503/429 with Retry-After: the source is fine but wants fewer connections


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    message: str
    retry_after: float = 0.0  # BUSY: seconds the source asked us to wait (Retry-After)


# ---- events: shell -> core ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionIdle:
    """Connection `conn` has nothing to do and asks for work."""

    conn: int


@dataclass(frozen=True, slots=True)
class BytesReceived:
    request: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class PieceDone:
    """Every byte of `piece` arrived through `request` and matched its hash."""

    request: int
    piece: int


@dataclass(frozen=True, slots=True)
class PieceBad:
    """`piece` arrived through `request` and did not match its hash."""

    request: int
    piece: int


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """`request` is over: all its pieces arrived (fault None) or it failed."""

    request: int
    fault: Fault | None = None


@dataclass(frozen=True, slots=True)
class RangesIgnored:
    """The source of `request` answered a range request with the whole file (200)."""

    request: int


@dataclass(frozen=True, slots=True)
class Throttled:
    """The shell holds back `request`'s bytes for a local rate limit (`held`), or
    lets them go again. A held request is not stalled: the wait is ours."""

    request: int
    held: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: check timeouts and adapt connection counts."""


Event = (ConnectionIdle | BytesReceived | PieceDone | PieceBad | RequestEnded | RangesIgnored
         | Throttled | Tick)


# ---- actions: core -> shell -------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenConnection:
    """Start connection `conn` to `source`; it will then ask for work."""

    conn: int
    source: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """On `conn`, fetch pieces [first, end) from its source as `request`.

    A `buffered` request duplicates pieces another request is already
    writing: the shell keeps its bytes in memory and writes them only once
    they are verified and nobody has finished the piece first.
    The core may shrink `end` later (see :class:`Truncate`).
    """

    request: int
    conn: int
    source: int
    first: int
    end: int
    buffered: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    """`request` must stop at piece `end`; another connection took the rest."""

    request: int
    end: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop `request` now; what it has not finished is someone else's or back in the pool."""

    request: int
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """`conn` has no work now; ask again when something changes."""

    conn: int


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """`conn` is no longer needed (its source is dropped or the work is done)."""

    conn: int


@dataclass(frozen=True, slots=True)
class DropSource:
    source: int
    reason: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Every piece is done."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Pieces remain and no source is left to fetch them from."""

    reason: str


Action = (
    OpenConnection | Fetch | Truncate | Cancel | Wait | CloseConnection | DropSource | Finished
    | Failed
)
