"""One stream, for a server that says no size: a chunked body with no length, or one
compressed although mfetch asked for identity.

Such a file cannot be split into ranges nor resumed, so it is read once, in
order, into OUT.part, hashed as it arrives, checked against the expected
SHA-256 when one is known, and renamed into place only when complete. A
compressed body is decoded (the file is what the server encoded), and the
user is told.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import zlib

from client.http import TRANSIENT_ERRORS, HttpClient, describe
from common.errors import IntegrityError, SourceError, StorageError
from common.ratelimit import TokenBucket

CHUNK = 256 * 1024


def _decoder(encoding: str) -> zlib._Decompress | None:  # type: ignore[name-defined]
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise SourceError(f"the server sent a {encoding}-encoded body, which mfetch cannot decode")


async def stream_fetch(http: HttpClient, url: str, out: pathlib.Path,
                       sha256: bytes | None, limit: TokenBucket | None = None
                       ) -> tuple[int, str, list[str]]:
    """Fetch `url` in one stream into `out`; returns (size, sha256 hex, notes).

    Raises SourceError, IntegrityError (digest mismatch; nothing is renamed)
    and StorageError.
    """
    part = out.with_name(out.name + ".part")
    notes: list[str] = []
    h = hashlib.sha256()
    size = 0
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise StorageError(f"cannot write {part}: {e.strerror}") from None
    try:
        async with http.get(url) as resp:
            if resp.status != 200:
                raise SourceError(f"{url}: answered {resp.status} {resp.reason or ''}".rstrip())
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            decoder = _decoder(encoding)
            if decoder is not None:
                notes.append(f"{url} sent a {encoding}-compressed body; saved it decoded")
            while True:
                chunk = await resp.read(limit.slice if limit else CHUNK)
                if not chunk:
                    break
                if limit is not None:  # --limit-rate: not read on until its time
                    await asyncio.sleep(limit.reserve(len(chunk)))
                while chunk:  # at most CHUNK decoded bytes at a time: no bomb in memory
                    if decoder:
                        data = decoder.decompress(chunk, CHUNK)
                        chunk = decoder.unconsumed_tail
                    else:
                        data, chunk = chunk, b""
                    size += _write(fd, part, data)
                    h.update(data)
            if decoder is not None:
                tail = decoder.flush()
                size += _write(fd, part, tail)
                h.update(tail)
                if not decoder.eof:
                    raise SourceError(f"{url}: the compressed body was cut short")
        os.fsync(fd)
    except TRANSIENT_ERRORS as e:
        raise SourceError(f"{url}: {describe(e)} (a stream without a size cannot resume)") \
            from None
    except zlib.error as e:
        raise SourceError(f"{url}: the compressed body is corrupt ({e})") from None
    finally:
        os.close(fd)
    digest = h.digest()
    if sha256 is not None and digest != sha256:
        raise IntegrityError(f"the file's sha256 is {digest.hex()}, expected {sha256.hex()}; "
                             f"kept as {part.name}")
    try:
        os.replace(part, out)
    except OSError as e:
        raise StorageError(f"cannot finish {out}: {e.strerror}") from None
    return size, digest.hex(), notes


def _write(fd: int, part: pathlib.Path, data: bytes) -> int:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as e:
            raise StorageError(f"cannot write {part}: {e.strerror}") from None
        view = view[n:]
    return len(data)
