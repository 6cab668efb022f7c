"""What passes between the scheduler core and the I/O shell around it.

Events go into :meth:`client.scheduler.Scheduler.handle`; actions come out.
Everything is a frozen value: the shell never reaches into the core's state
and the core never touches a socket, a file or the real clock.

The values are NamedTuples, not frozen dataclasses: mfetch makes one per chunk
received, and defining twenty dataclasses took ~13 ms of every run's start-up
(a NamedTuple costs a tenth). :func:`_distinct` keeps them from comparing equal
across types, as plain tuples would (``Wait(1) == CloseConnection(1)``).
"""
from __future__ import annotations

import enum
from typing import NamedTuple, TypeVar

_T = TypeVar("_T")


def _distinct(cls: type[_T]) -> type[_T]:
    """Equal only to a value of the same type with equal fields; hashed the same way."""
    def __eq__(self: tuple, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]

    def __ne__(self: tuple, other: object) -> bool:
        return not __eq__(self, other)

    def __hash__(self: tuple) -> int:
        return hash((type(self), tuple.__hash__(self)))

    cls.__eq__ = __eq__  # type: ignore[assignment,method-assign]
    cls.__ne__ = __ne__  # type: ignore[assignment,method-assign]
    cls.__hash__ = __hash__  # type: ignore[assignment,method-assign]
    return cls


class FaultKind(enum.Enum):
    """How bad a failed request is for its source."""

    TRANSIENT = "transient"  # connection reset, timeout, 5xx: retry after a backoff
    FATAL = "fatal"  # 4xx, a range or validator the source got wrong: drop the source
    BUSY = "busy"  # 503/429 with Retry-After: the source is fine but wants fewer connections


@_distinct
class Fault(NamedTuple):
    kind: FaultKind
    message: str
    retry_after: float = 0.0  # BUSY: seconds the source asked us to wait (Retry-After)


# ---- events: shell -> core ------------------------------------------------


@_distinct
class ConnectionIdle(NamedTuple):
    """Connection `conn` has nothing to do and asks for work."""

    conn: int


@_distinct
class BytesReceived(NamedTuple):
    request: int
    nbytes: int


@_distinct
class PieceDone(NamedTuple):
    """Every byte of `piece` arrived through `request` and matched its hash."""

    request: int
    piece: int


@_distinct
class PieceBad(NamedTuple):
    """`piece` arrived through `request` and did not match its hash."""

    request: int
    piece: int


@_distinct
class RequestEnded(NamedTuple):
    """`request` is over: all its pieces arrived (fault None) or it failed."""

    request: int
    fault: Fault | None = None


@_distinct
class RangesIgnored(NamedTuple):
    """The source of `request` answered a range request with the whole file (200)."""

    request: int


@_distinct
class Throttled(NamedTuple):
    """The shell holds back `request`'s bytes for a local rate limit (`held`), or
    lets them go again. A held request is not stalled: the wait is ours."""

    request: int
    held: bool


@_distinct
class Tick(NamedTuple):
    """Time passed: check timeouts and adapt connection counts."""


Event = (ConnectionIdle | BytesReceived | PieceDone | PieceBad | RequestEnded | RangesIgnored
         | Throttled | Tick)


# ---- actions: core -> shell -------------------------------------------------


@_distinct
class OpenConnection(NamedTuple):
    """Start connection `conn` to `source`; it will then ask for work."""

    conn: int
    source: int


@_distinct
class Fetch(NamedTuple):
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


@_distinct
class Truncate(NamedTuple):
    """`request` must stop at piece `end`; another connection took the rest."""

    request: int
    end: int


@_distinct
class Cancel(NamedTuple):
    """Stop `request` now; what it has not finished is someone else's or back in the pool."""

    request: int
    reason: str


@_distinct
class Wait(NamedTuple):
    """`conn` has no work now; ask again when something changes."""

    conn: int


@_distinct
class CloseConnection(NamedTuple):
    """`conn` is no longer needed (its source is dropped or the work is done)."""

    conn: int


@_distinct
class DropSource(NamedTuple):
    source: int
    reason: str


@_distinct
class Finished(NamedTuple):
    """Every piece is done."""


@_distinct
class Failed(NamedTuple):
    """Pieces remain and no source is left to fetch them from."""

    reason: str


Action = (
    OpenConnection | Fetch | Truncate | Cancel | Wait | CloseConnection | DropSource | Finished
    | Failed
)
