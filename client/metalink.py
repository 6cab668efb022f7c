"""Metalink 4 (RFC 5854) as input: ``mfetch file.meta4``.

From the first <file> of the document: its name, size, whole-file SHA-256,
SHA-256 piece hashes (with their own piece length) and its HTTP(S) mirrors,
by priority. Other hash types are ignored: SHA-256 is what mfetch verifies.
The parser is expat through ElementTree, which resolves no external entities.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from common.errors import ConfigError
from common.identity import digest_from_hex

NS = "{urn:ietf:params:xml:ns:metalink}"
MAX_BYTES = 16 * 1024 * 1024  # a metalink of a huge file's piece list is still far below this


@dataclass(frozen=True)
class MetalinkFile:
    name: str
    size: int | None
    sha256: bytes | None
    piece_size: int | None
    piece_hashes: tuple[bytes, ...] | None
    urls: tuple[str, ...]


def is_metalink(target: str) -> bool:
    return target.endswith((".meta4", ".metalink")) and "://" not in target


def load(path: str) -> MetalinkFile:
    """Parse a .meta4 file; raises ConfigError with the reason on anything malformed."""
    p = pathlib.Path(path)
    import xml.etree.ElementTree as ET  # only when a metalink is read

    try:
        if p.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes, not a metalink")
        root = ET.fromstring(p.read_bytes())  # ET: loaded here, only for a metalink
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ET.ParseError as e:
        raise ConfigError(f"{path}: not valid XML ({e})") from None
    if root.tag != f"{NS}metalink":
        raise ConfigError(f"{path}: not a Metalink 4 document (RFC 5854)")
    f = root.find(f"{NS}file")
    if f is None:
        raise ConfigError(f"{path}: no <file> in the metalink")
    name = f.get("name") or ""
    size = _int(f.findtext(f"{NS}size"), path, "size")
    sha256 = None
    for h in f.findall(f"{NS}hash"):
        if (h.get("type") or "").lower() == "sha-256":
            sha256 = _digest(h.text, path)
    piece_size = hashes = None
    for pieces in f.findall(f"{NS}pieces"):
        if (pieces.get("type") or "").lower() == "sha-256":
            piece_size = _int(pieces.get("length"), path, "pieces length")
            hashes = tuple(_digest(h.text, path) for h in pieces.findall(f"{NS}hash"))
    if piece_size is not None and (piece_size <= 0 or size is None or
                                   hashes is None or len(hashes) != -(-size // piece_size)):
        raise ConfigError(f"{path}: the piece hashes do not cover the file's size")
    urls = sorted(((int(u.get("priority") or 999999), (u.text or "").strip())
                   for u in f.findall(f"{NS}url")), key=lambda t: t[0])
    http_urls = tuple(u for _, u in urls if u.startswith(("http://", "https://")))
    if not http_urls:
        raise ConfigError(f"{path}: no http:// or https:// mirror in the metalink")
    return MetalinkFile(name, size, sha256, piece_size, hashes, http_urls)


def _int(text: str | None, path: str, what: str) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{path}: bad {what} {text!r}") from None
    if value < 0:
        raise ConfigError(f"{path}: negative {what}")
    return value


def _digest(text: str | None, path: str) -> bytes:
    return digest_from_hex(text or "", f"{path}: a sha-256 hash")
