"""A checksum file (SHA256SUMS) as the source of the expected digest: --sha256-file.

Both common formats are read: GNU coreutils (``HEX  name`` or ``HEX *name``)
and BSD (``SHA256 (name) = HEX``). The entry for the file being fetched is
the one whose name (its last path segment) matches; a file with a single
entry applies to whatever is fetched.
"""
from __future__ import annotations

import posixpath
import re

from common.errors import ConfigError
from common.identity import digest_from_hex

_GNU = re.compile(r"^\\?([0-9a-fA-F]{64}) [ *](.+)$")
_BSD = re.compile(r"^SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")
MAX_BYTES = 4 * 1024 * 1024


def read_head(path: str) -> bytes:
    """The first MAX_BYTES of a local checksum file (raises OSError)."""
    with open(path, "rb") as f:
        return f.read(MAX_BYTES)


def parse(text: str) -> dict[str, bytes]:
    """name -> digest for every SHA-256 line; other lines are ignored."""
    out: dict[str, bytes] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _GNU.match(line):
            out[m.group(2).strip()] = digest_from_hex(m.group(1))
        elif m := _BSD.match(line):
            out[m.group(1).strip()] = digest_from_hex(m.group(2))
    return out


def pick(entries: dict[str, bytes], name: str, where: str) -> bytes:
    """The digest for `name`; raises ConfigError when there is none (or it is ambiguous)."""
    if not entries:
        raise ConfigError(f"{where}: no SHA-256 lines in it")
    if len(entries) == 1:
        return next(iter(entries.values()))
    found = {d for n, d in entries.items() if posixpath.basename(n) == name}
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise ConfigError(f"{where}: {what} SHA-256 for {name!r} in it")
    return found.pop()
