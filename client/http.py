"""HTTP edge of the client: probing a bare URL and checking one range response.

aiohttp errors are translated here, in one place, into :class:`client.events.Fault`
(for the scheduler) or :class:`common.errors.SourceError` (for the user).
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from client.events import Fault, FaultKind
from common.errors import ProtocolError, SourceError
from common.http_ranges import parse_content_range

# Errors that mean "try again later", not "this source is wrong".
TRANSIENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError)

BASE_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "mfetch/0.1"}


@dataclass(frozen=True, slots=True)
class Probe:
    """What a bare URL told us about its file."""

    url: str  # after redirects
    size: int
    validator: str  # strong ETag, else Last-Modified, else ""
    ranges: bool  # answered a range request with 206


def validator_of(headers: Mapping[str, str]) -> str:
    """The strong ETag of a response, else its Last-Modified (RFC 9110 §13.1.4)."""
    etag = headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified", "")


async def probe(session: aiohttp.ClientSession, url: str) -> Probe:
    """Ask `url` for its first byte to learn its size, validator and range support.

    Raises SourceError with a one-line reason on any failure.
    """
    try:
        async with session.get(url, headers={**BASE_HEADERS, "Range": "bytes=0-0"},
                               max_redirects=10) as resp:
            final = str(resp.url)
            if resp.status == 206:
                try:
                    _, _, total = parse_content_range(resp.headers.get("Content-Range", ""))
                except ValueError as e:
                    raise ProtocolError(f"{url}: {e}") from None
                if total is None:
                    raise ProtocolError(f"{url}: does not say the file's size")
                return Probe(final, total, validator_of(resp.headers), True)
            if resp.status == 200:
                length = resp.content_length
                if length is None or resp.headers.get("Content-Encoding", "identity") != "identity":
                    raise ProtocolError(f"{url}: does not say the file's size")
                return Probe(final, length, validator_of(resp.headers), False)
            if resp.status == 416:  # an empty file has no byte 0 (RFC 9110 §14.4)
                cr = resp.headers.get("Content-Range", "")
                if cr.strip() == "bytes */0":
                    return Probe(final, 0, validator_of(resp.headers), True)
            raise SourceError(f"{url}: answered {resp.status} {resp.reason or ''}".rstrip())
    except aiohttp.TooManyRedirects:
        raise SourceError(f"{url}: too many redirects") from None
    except aiohttp.InvalidURL:
        raise SourceError(f"{url}: not a valid URL") from None
    except TRANSIENT_ERRORS as e:
        raise SourceError(f"{url}: {describe(e)}") from None


def check_range_response(resp: aiohttp.ClientResponse, start: int, end: int, size: int,
                         validator: str) -> Fault | None:
    """Whether a 206 answer is exactly the bytes [start, end) of the file we mean."""
    enc = resp.headers.get("Content-Encoding", "identity").lower()
    if enc not in ("identity", ""):
        return Fault(FaultKind.FATAL, f"sent a {enc}-encoded body to a range request")
    try:
        got = parse_content_range(resp.headers.get("Content-Range", ""))
    except ValueError as e:
        return Fault(FaultKind.FATAL, str(e))
    if got[2] is not None and got[2] != size:
        return Fault(FaultKind.FATAL, f"now says the file has {got[2]} bytes, not {size}")
    if got[:2] != (start, end):
        return Fault(FaultKind.FATAL,
                     f"sent bytes {got[0]}-{got[1] - 1} when asked for {start}-{end - 1}")
    now = validator_of(resp.headers)
    if validator and now and now != validator:
        return Fault(FaultKind.FATAL, "the file changed on the server")
    return None


def status_fault(status: int, reason: str | None) -> Fault:
    text = f"answered {status} {reason or ''}".rstrip()
    if status >= 500 or status in (408, 429):
        return Fault(FaultKind.TRANSIENT, text)
    return Fault(FaultKind.FATAL, text)


def describe(e: BaseException) -> str:
    """A short, human description of a network error."""
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect ({e.os_error.strerror or e.os_error})"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "the response body was cut short"
    text = str(e) or type(e).__name__
    return text.splitlines()[0]
