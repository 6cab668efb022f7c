"""The agent's HTTP layout, shared by the agent that serves it, the tracker that
hands its URLs out, and the client that fetches from it.

    GET|HEAD /files/<path>      a file of the shared directory, with byte ranges
    GET      /pieces/<sha256>   that content's piece hashes: 32-byte digests back to back
    GET      /healthz           200 "ok"
"""
from __future__ import annotations

from urllib.parse import quote

FILES_PREFIX = "/files/"
PIECES_PREFIX = "/pieces/"
PIECE_SIZE_HEADER = "X-Mfetch-Piece-Size"


def file_url(base_url: str, path: str) -> str:
    """URL of `path` (relative, '/'-separated) on the agent at `base_url`."""
    return base_url.rstrip("/") + FILES_PREFIX + quote(path)


def pieces_url(base_url: str, sha256: bytes) -> str:
    """URL of the piece list of the content `sha256` on the agent at `base_url`."""
    return base_url.rstrip("/") + PIECES_PREFIX + sha256.hex()


def etag_for(sha256: bytes) -> str:
    """The strong ETag an agent gives a content: its quoted SHA-256 in hex."""
    return f'"{sha256.hex()}"'
