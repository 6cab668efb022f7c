"""Content identity: piece size, piece hashes, root, and hashing a file.

Every holder of the same bytes computes the same identity, so an agent, a
tracker and a client agree without talking:

- the piece size is a deterministic function of the file size
  (:func:`piece_size_for`);
- each piece has a SHA-256;
- the root is SHA-256 over the piece size (8 bytes, big-endian) followed by
  the ordered piece hashes (:func:`root_of`);
- the content is named by its whole-file SHA-256.

The piece list travels as the raw concatenation of 32-byte digests.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from common.errors import ConfigError, IntegrityError

DIGEST_SIZE = 32
MIN_PIECE = 256 * 1024
MAX_PIECE = 16 * 1024 * 1024
TARGET_PIECES = 4096
READ_CHUNK = 1024 * 1024


def piece_size_for(size: int) -> int:
    """The piece size of a file of `size` bytes.

    The smallest power of two, at least 256 KiB, that keeps the file within
    4096 pieces, capped at 16 MiB. Pieces stay small enough that a slow source
    holds little and large enough that per-request overhead stays low.
    """
    if size < 0:
        raise ValueError(f"negative size {size}")
    piece = MIN_PIECE
    while piece < MAX_PIECE and piece * TARGET_PIECES < size:
        piece *= 2
    return piece


def piece_count(size: int, piece_size: int) -> int:
    """How many pieces a file of `size` bytes has (0 for an empty file)."""
    return -(-size // piece_size)


def piece_span(index: int, size: int, piece_size: int) -> tuple[int, int]:
    """The byte range [start, end) of piece `index`."""
    start = index * piece_size
    return start, min(start + piece_size, size)


def root_of(piece_size: int, piece_hashes: bytes) -> bytes:
    """The root over a piece size and the concatenated piece hashes."""
    if len(piece_hashes) % DIGEST_SIZE:
        raise ValueError("piece hash list is not a whole number of digests")
    return hashlib.sha256(piece_size.to_bytes(8, "big") + piece_hashes).digest()


@dataclass(frozen=True, slots=True)
class Identity:
    """The fixed-size record of a content (what the tracker keeps)."""

    size: int
    sha256: bytes
    piece_size: int
    root: bytes

    @property
    def pieces(self) -> int:
        return piece_count(self.size, self.piece_size)

    def check_piece_list(self, piece_hashes: bytes) -> list[bytes]:
        """Split a piece list, or raise IntegrityError if it is not this content's."""
        if len(piece_hashes) != self.pieces * DIGEST_SIZE:
            raise IntegrityError(
                f"piece list has {len(piece_hashes) // DIGEST_SIZE} hashes, expected {self.pieces}"
            )
        if root_of(self.piece_size, piece_hashes) != self.root:
            raise IntegrityError("piece list does not hash to the content's root")
        return split_digests(piece_hashes)


def digest_from_hex(text: str, what: str = "sha256") -> bytes:
    """64 hex digits -> a 32-byte SHA-256; raises ConfigError naming `what` otherwise."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != DIGEST_SIZE:
        raise ConfigError(f"{what} wants 64 hex digits, got {text!r}")
    return raw


def split_digests(blob: bytes) -> list[bytes]:
    return [blob[i : i + DIGEST_SIZE] for i in range(0, len(blob), DIGEST_SIZE)]


def hash_file(path: str | os.PathLike[str]) -> tuple[Identity, bytes]:
    """Hash a file in one pass: its identity and its concatenated piece hashes.

    Raises OSError if the file cannot be read, and ValueError if it changed
    size while being read.
    """
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        piece_size = piece_size_for(size)
        whole = hashlib.sha256()
        pieces = bytearray()
        buf = bytearray(min(READ_CHUNK, piece_size))
        view = memoryview(buf)
        done = 0
        while done < size:
            piece = hashlib.sha256()
            left = min(piece_size, size - done)
            while left:
                n = f.readinto(view[: min(len(buf), left)])
                if not n:
                    raise ValueError(f"{path}: file shrank while hashing")
                whole.update(view[:n])
                piece.update(view[:n])
                left -= n
                done += n
            pieces += piece.digest()
        if f.read(1):
            raise ValueError(f"{path}: file grew while hashing")
    hashes = bytes(pieces)
    return Identity(size, whole.digest(), piece_size, root_of(piece_size, hashes)), hashes
