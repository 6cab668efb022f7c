"""client/fetcher.py's PieceSink and writer thread with fakes around them: the
order of writes to a piece, and when a piece counts as done, when a tail duplicate
(buffered) and the streaming request finish the same piece at once."""
from __future__ import annotations

import asyncio
import hashlib
import time
import threading

from client import events as ev
from client.fetcher import PieceSink, _Writer

PIECE = 256 * 1024


class FakeStore:
    def __init__(self, pieces: int, hold: threading.Event | None = None) -> None:
        self.done = bytearray(pieces)
        self.writes: list[tuple[int, bytes]] = []
        self.hold = hold  # a buffered (whole-piece) write waits for it

    def pwrite(self, offset: int, data) -> None:
        if self.hold is not None and len(data) == PIECE and isinstance(data, bytearray):
            assert self.hold.wait(30)
        self.writes.append((offset, bytes(data)))

    def mark_done(self, piece: int) -> None:
        self.done[piece] = 1


class FakeSched:
    def __init__(self) -> None:
        self.owner = {0: 1}  # request 1 streams piece 0

    def request_end(self, request: int) -> int:
        return 1

    def may_write(self, request: int, piece: int) -> bool:
        return self.owner.get(piece) == request


class FakePlan:
    size = PIECE
    piece_size = PIECE
    pieces = 1

    def __init__(self, hashes: tuple[bytes, ...] | None) -> None:
        self.piece_hashes = hashes


class FakeFetcher:
    def __init__(self, data: bytes, hold: threading.Event) -> None:
        self.plan = FakePlan((hashlib.sha256(data).digest(),))
        self.store = FakeStore(1, hold)
        self.sched = FakeSched()
        self.writer = _Writer()
        self.finalizing: set[int] = set()
        self.events: list[ev.Event] = []
        self.delivered_by = [-1]
        self.pieces_changed = asyncio.Event()

    def emit(self, event: ev.Event) -> None:
        self.events.append(event)

    def landed(self, piece: int, source: int) -> None:
        if not self.store.done[piece]:
            self.store.mark_done(piece)
            self.delivered_by[piece] = source


def fetch(request: int, source: int, buffered: bool) -> ev.Fetch:
    return ev.Fetch(request=request, conn=request, source=source, first=0, end=1,
                    buffered=buffered)


async def _race(cancel_duplicate: bool) -> FakeFetcher:
    data = bytes(range(256)) * (PIECE // 256)
    hold = threading.Event()
    f = FakeFetcher(data, hold)
    streaming = PieceSink(f, fetch(1, 0, False), 0)  # type: ignore[arg-type]
    duplicate = PieceSink(f, fetch(2, 1, True), 0)  # type: ignore[arg-type]
    # The duplicate verifies the piece first; its write waits in the writer thread.
    dup = asyncio.ensure_future(duplicate.feed(memoryview(data), behind=True))
    while not f.finalizing:
        await asyncio.sleep(0.01)
    # Meanwhile the streaming copy completes the same piece: it must write none of it
    # (the verified copy is on its way), and leave marking it done to that copy.
    st = asyncio.ensure_future(streaming.feed(memoryview(data), behind=True))
    await asyncio.sleep(0.1)
    assert not f.store.done[0]  # not before the verified bytes are on disk
    if cancel_duplicate:
        dup.cancel()
        await asyncio.sleep(0.1)
        assert not dup.done()  # a cancelled request waits for its queued write
    hold.set()
    await asyncio.gather(dup, return_exceptions=True)
    assert await st is False
    f.writer.close()
    return f


async def test_a_verified_duplicate_marks_its_piece_done_once_written():
    f = await _race(cancel_duplicate=False)
    assert f.store.done[0] == 1 and f.delivered_by[0] == 1
    assert [(o, len(d)) for o, d in f.store.writes] == [(0, PIECE)]  # only the verified copy
    assert sum(isinstance(e, ev.PieceDone) for e in f.events) == 2


async def test_a_cancelled_duplicate_still_marks_the_piece_it_wrote():
    f = await _race(cancel_duplicate=True)
    assert f.store.done[0] == 1  # written: it counts, though its request was cancelled
    assert [(o, len(d)) for o, d in f.store.writes] == [(0, PIECE)]


async def test_a_streaming_request_never_writes_over_a_piece_already_verified():
    # The duplicate's write ended and marked the piece done before the scheduler heard
    # of it (PieceDone comes after): the streaming copy, still allowed to write by the
    # scheduler, must not overwrite the verified bytes on disk.
    data = bytes(range(256)) * (PIECE // 256)
    f = FakeFetcher(data, threading.Event())
    f.store.hold = None
    await PieceSink(f, fetch(2, 1, True), 0).feed(memoryview(data))  # type: ignore[arg-type]
    assert f.store.done[0] == 1 and not f.finalizing
    streaming = PieceSink(f, fetch(1, 0, False), 0)  # type: ignore[arg-type]
    await streaming.feed(memoryview(b"\xff" * (PIECE // 2)))
    f.writer.close()
    assert [(o, len(d)) for o, d in f.store.writes] == [(0, PIECE)]
    assert f.store.writes[0][1] == data


async def test_the_writer_flushes_what_was_queued_before():
    # A spliced chunk is written on the loop, after every job queued before it.
    w = _Writer()
    order: list[str] = []
    job = asyncio.ensure_future(w.run(lambda: (time.sleep(0.2), order.append("queued")),
                                      nbytes=1 << 20))
    await asyncio.sleep(0)  # the job is in the thread
    await w.flush()
    order.append("after flush")
    await job
    w.close()
    assert order == ["queued", "after flush"]
