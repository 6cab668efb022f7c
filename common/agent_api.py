"""The agent's HTTP layout, shared by the agent that serves it, the tracker that
hands its URLs out, and the client that fetches from it.

    GET|HEAD /files/<path>      a file of the shared directory, with byte ranges
    GET      /pieces/<sha256>   that content's piece hashes: 32-byte digests back to back
    GET      /healthz           200 "ok"

Swarming (agent/swarm.py): a download in progress on the agent's machine is served
by content, only its verified pieces:

    GET|HEAD /swarm/<sha256>        the (partial) file, single byte ranges over verified pieces
    GET      /swarm/<sha256>/have   its bitfield (common.bitfield), X-Mfetch-Pieces: count
    POST     /local/swarm           loopback only: mfetch registers a download (JSON)
    POST     /local/swarm/<sha256>  loopback only: bitfield update, or completion (JSON)
    DELETE   /local/swarm/<sha256>  loopback only: the download stopped

Such a holding is announced under the path `.swarm/<sha256>/<name>` (hidden, so it
never collides with a file of DIR); the tracker hands out its /swarm/ URL.
"""
from __future__ import annotations

from urllib.parse import quote

FILES_PREFIX = "/files/"
PIECES_PREFIX = "/pieces/"
PIECE_SIZE_HEADER = "X-Mfetch-Piece-Size"
PIECES_HEADER = "X-Mfetch-Pieces"
SWARM_PREFIX = "/swarm/"
LOCAL_SWARM = "/local/swarm"
SWARM_PATH_PREFIX = ".swarm/"


def file_url(base_url: str, path: str) -> str:
    """URL of `path` (relative, '/'-separated) on the agent at `base_url`."""
    return base_url.rstrip("/") + FILES_PREFIX + quote(path)


def pieces_url(base_url: str, sha256: bytes) -> str:
    """URL of the piece list of the content `sha256` on the agent at `base_url`."""
    return base_url.rstrip("/") + PIECES_PREFIX + sha256.hex()


def etag_for(sha256: bytes) -> str:
    """The strong ETag an agent gives a content: its quoted SHA-256 in hex."""
    return f'"{sha256.hex()}"'


def swarm_url(base_url: str, sha256: bytes) -> str:
    """URL of the (partial) download of content `sha256` on the agent at `base_url`."""
    return base_url.rstrip("/") + SWARM_PREFIX + sha256.hex()


def swarm_path(sha256: bytes, name: str) -> str:
    """The holding path under which an agent announces a swarm download."""
    return f"{SWARM_PATH_PREFIX}{sha256.hex()}/{name}"


def source_url(base_url: str, path: str, sha256: bytes) -> str:
    """Where a holding is fetched: its /swarm/ URL for a swarm download, else /files/."""
    if path.startswith(SWARM_PATH_PREFIX):
        return swarm_url(base_url, sha256)
    return file_url(base_url, path)
