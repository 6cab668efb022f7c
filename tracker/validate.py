"""Checks on everything a caller sends the tracker. Pure functions that return the
cleaned value or raise :class:`Invalid` with a message fit to show the caller."""
from __future__ import annotations

import posixpath
import re
from urllib.parse import SplitResult, unquote, urlsplit

from common import bitfield
from common.identity import DIGEST_SIZE, piece_count, piece_size_for

MAX_AGENT_ID = 128
MAX_PATH_BYTES = 4096
MAX_HOLDINGS = 100_000
MAX_SIZE = 2**63 - 1  # what SQLite's INTEGER (and Redis's) hold
MAX_URL = 8192


class Invalid(ValueError):
    """A request field is malformed; the message says which and why."""


def agent_id(value: str) -> str:
    if not value:
        raise Invalid("agent_id is empty")
    if len(value) > MAX_AGENT_ID:
        raise Invalid(f"agent_id is longer than {MAX_AGENT_ID} characters")
    if not value.isprintable():
        raise Invalid("agent_id contains control characters")
    return value


def _split_url(value: str, what: str) -> SplitResult:
    """Length-checked urlsplit whose port is known to parse; raises Invalid."""
    if len(value) > MAX_URL:
        raise Invalid(f"{what} is longer than {MAX_URL} characters")
    try:
        u = urlsplit(value)
        _ = u.port  # raises ValueError when out of range or not a number
    except ValueError:
        raise Invalid(f"{what} {value!r} is not a valid URL") from None
    return u


def base_url(value: str) -> str:
    """An agent's base URL: http(s)://host[:port], nothing after it but an optional '/'."""
    u = _split_url(value, "base_url")
    if (u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/")
            or u.query or u.fragment or u.username is not None or u.port == 0
            or not value.isprintable()):
        raise Invalid(f"base_url {value!r} must look like http://HOST[:PORT]")
    return value.rstrip("/")


def http_url(value: str, what: str = "url") -> str:
    """A mirror's URL: http or https with a host."""
    u = _split_url(value, what)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise Invalid(f"{what} {value!r} must be an http:// or https:// URL")
    if not value.isprintable() or " " in value or len(value) > MAX_URL:
        raise Invalid(f"{what} {value!r} contains spaces or control characters")
    return value


def digest(value: bytes, what: str = "sha256") -> bytes:
    if len(value) != DIGEST_SIZE:
        raise Invalid(f"{what} must be exactly {DIGEST_SIZE} bytes, got {len(value)}")
    return value


def size(value: int, what: str = "size") -> int:
    if not 0 <= value <= MAX_SIZE:
        raise Invalid(f"{what} {value} is out of range")
    return value


def piece_size(value: int, file_size: int) -> int:
    expected = piece_size_for(file_size)
    if value != expected:
        raise Invalid(f"piece_size {value} is wrong for a {file_size}-byte file "
                      f"(expected {expected})")
    return value


def rel_path(value: str) -> str:
    """A relative '/'-separated path inside an agent's directory."""
    if not value:
        raise Invalid("path is empty")
    # (Checked once per announced holding, 1,000 per agent: kept to C-speed calls.)
    if len(value) * 4 > MAX_PATH_BYTES and \
            len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise Invalid(f"path {value[:60]!r}... is longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(value):
        raise Invalid(f"path {value!r} contains NUL or control characters")
    if value.startswith("/"):
        raise Invalid(f"path {value!r} is absolute")
    if not _BAD_SEGMENTS.isdisjoint(value.split("/")):
        raise Invalid(f"path {value!r} has an empty, '.' or '..' segment")
    return value


_CONTROL = re.compile("[\x00-\x1f\x7f]")
_BAD_SEGMENTS = frozenset(("", ".", ".."))


def name(value: str) -> str:
    """A name to locate: a basename or a relative path."""
    return rel_path(value)


def mirror_name(url: str, given: str) -> str:
    """The mirror's name: `given`, or the URL's last path segment, unquoted."""
    result = given or unquote(posixpath.basename(urlsplit(url).path))
    if not result:
        raise Invalid(f"cannot name the mirror {url!r} from its URL; give a name")
    try:
        return rel_path(result)
    except Invalid as e:
        raise Invalid(f"mirror name: {e}") from None


def have(value: bytes, file_size: int, piece_size_: int) -> bytes:
    """A partial holder's bitfield for a content of this size and piece size: empty
    (a whole file) or exactly ceil(pieces / 8) bytes with spare bits zero. A bitfield
    with every piece is returned as empty, so a finished download reads as a whole file."""
    if not value:
        return b""
    pieces = piece_count(file_size, piece_size_)
    try:
        bitfield.check(value, pieces)
    except bitfield.BadBitfield as e:
        raise Invalid(f"have: {e}") from None
    return b"" if bitfield.is_full(value, pieces) else value
