"""Repair by blame: when only a whole-file digest vouches for the bytes and it does not
match, find the source that lied and replace only its pieces.

Without piece hashes a bad piece cannot be caught as it arrives; the whole
file's SHA-256 catches it at the end. Then:

1. every piece is fetched again from a source *other* than the one that
   delivered it, into a sparse scratch file beside the download (memory stays
   bounded), and the two copies' hashes are compared;
2. each source involved in a disagreement is a suspect, the most involved
   first; for a suspect L, the file with L's pieces taken from the scratch
   copies is hashed, and if that matches the expected digest, L lied;
3. the winning copies are written into the download, and L is named.

One honest source beside each liar is enough. Nothing is handed over unless the
whole-file digest matches in the end.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from client.http import TRANSIENT_ERRORS, HttpClient, describe, read_body
from client.storage import PartFile
from common.errors import IntegrityError, SourceError, StorageError

log = logging.getLogger("mfetch")

UNKNOWN = -1  # a piece verified in an earlier run: nobody to blame (as client.fetcher's)
PARALLEL = 4


@dataclass(frozen=True)
class Repaired:
    liar: str  # URL of the source that lied
    pieces: int  # pieces replaced


async def repair(http: HttpClient, store: PartFile, urls: Sequence[str], size: int,
                 piece_size: int, delivered_by: Sequence[int], expected: bytes) -> Repaired:
    """Find the liar and fix the file in place; raises IntegrityError when it cannot."""
    pieces = len(delivered_by)
    if len(urls) < 2:
        raise IntegrityError("only one source: no other copy to compare its pieces with")
    scratch_path = store.part.with_name(store.part.name + ".repair")
    try:
        fd = os.open(scratch_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StorageError(f"cannot write {scratch_path}: {e.strerror}") from None
    try:
        others = await _second_copies(http, store, fd, urls, size, piece_size, delivered_by)

        def differs(p: int) -> bool:
            mine = _hash(store.pread, p, size, piece_size)
            return mine != _hash(lambda off, n: os.pread(fd, n, off), p, size, piece_size)

        disagree = await asyncio.to_thread(
            lambda: [p for p in range(pieces) if differs(p)])
        if not disagree:
            raise IntegrityError("every source sent the same bytes: the expected sha256 "
                                 "does not match what all of them serve")
        blame: collections.Counter[int] = collections.Counter()
        for p in disagree:
            blame[delivered_by[p]] += 1
            blame[others[p]] += 1
        blame.pop(UNKNOWN, None)
        for suspect, _ in blame.most_common():
            swap = {p for p in disagree if delivered_by[p] == suspect}
            if await asyncio.to_thread(_digest_with, store, fd, swap, size, piece_size) \
                    == expected:
                for p in sorted(swap):
                    start = p * piece_size
                    store.pwrite(start, os.pread(fd, min(piece_size, size - start), start))
                return Repaired(urls[suspect], len(swap))
        raise IntegrityError("could not tell which source lied (more than one may have)")
    finally:
        os.close(fd)
        scratch_path.unlink(missing_ok=True)


async def _second_copies(http: HttpClient, store: PartFile, fd: int, urls: Sequence[str],
                         size: int, piece_size: int, delivered_by: Sequence[int]
                         ) -> list[int]:
    """Fetch each piece from another source into the scratch file; who sent each copy.

    Raises SourceError if some piece cannot be had from any other source.
    """
    got = [UNKNOWN] * len(delivered_by)
    gate = asyncio.Semaphore(PARALLEL)

    async def one(p: int) -> None:
        first = delivered_by[p]
        candidates = [i for i in range(len(urls)) if i != first]
        start = p * piece_size
        end = min(start + piece_size, size)
        for k in range(len(candidates)):
            src = candidates[(p + k) % len(candidates)]  # spread the load
            try:
                async with gate, http.get(urls[src], {"Range": f"bytes={start}-{end - 1}"}) as r:
                    if r.status != 206:
                        continue
                    data = await read_body(r, end - start)
                if len(data) == end - start:
                    os.pwrite(fd, data, start)
                    got[p] = src
                    return
            except TRANSIENT_ERRORS as e:
                log.debug("repair: %s: %s", urls[src], describe(e))
        raise SourceError(f"no other source would send bytes {start}-{end - 1} again")

    tasks = [asyncio.ensure_future(one(p)) for p in range(len(delivered_by))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:  # none may write to the scratch file once it is closed
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return got


def _hash(read, p: int, size: int, piece_size: int) -> bytes:  # type: ignore[no-untyped-def]
    start = p * piece_size
    return hashlib.sha256(read(start, min(piece_size, size - start))).digest()


def _digest_with(store: PartFile, fd: int, swap: set[int], size: int, piece_size: int) -> bytes:
    """SHA-256 of the download with the pieces in `swap` taken from the scratch file."""
    h = hashlib.sha256()
    for p in range(-(-size // piece_size)):
        start = p * piece_size
        n = min(piece_size, size - start)
        h.update(os.pread(fd, n, start) if p in swap else store.pread(start, n))
    return h.digest()
