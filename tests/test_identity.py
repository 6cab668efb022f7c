"""Content identity: piece size, root, and piece lists that must hash to the root."""
from __future__ import annotations

import asyncio
import hashlib

import pytest
from aiohttp import web

from client.http import HttpClient, HttpOptions
from client.plan import fetch_piece_list
from common.errors import IntegrityError
from common.identity import MAX_PIECE, MIN_PIECE, Identity, hash_file, piece_size_for, root_of
from tests.servers import AppServer


def test_piece_size_is_a_power_of_two_within_bounds_and_grows_with_size() -> None:
    last = 0
    for size in [0, 1, MIN_PIECE * 4096, MIN_PIECE * 4096 + 1, 4 << 30, 1 << 40]:
        p = piece_size_for(size)
        assert MIN_PIECE <= p <= MAX_PIECE and p & (p - 1) == 0 and p >= last
        assert size <= p * 4096 or p == MAX_PIECE
        last = p


def test_hash_file_matches_an_independent_computation(tmp_path) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: five pieces, the last one short
    (tmp_path / "f").write_bytes(data)
    ident, hashes = hash_file(tmp_path / "f")
    ps = piece_size_for(len(data))
    expected = b"".join(hashlib.sha256(data[i:i + ps]).digest() for i in range(0, len(data), ps))
    assert hashes == expected and ident.pieces == 5
    assert ident.sha256 == hashlib.sha256(data).digest()
    assert ident.root == hashlib.sha256(ps.to_bytes(8, "big") + expected).digest()
    assert ident.check_piece_list(hashes) == [expected[i:i + 32] for i in range(0, 160, 32)]


@pytest.mark.parametrize("tamper", [
    lambda h: h[:-32],  # one hash short
    lambda h: h + bytes(32),  # one too many
    lambda h: bytes(32) + h[32:],  # one hash wrong
    lambda h: h[:-1],  # not whole digests
])
def test_a_piece_list_that_does_not_hash_to_the_root_is_refused(tamper) -> None:
    hashes = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(4))
    ident = Identity(4 * MIN_PIECE, bytes(32), MIN_PIECE, root_of(MIN_PIECE, hashes))
    with pytest.raises(IntegrityError):
        ident.check_piece_list(tamper(hashes))


def test_client_rejects_a_served_piece_list_not_matching_the_root() -> None:
    good = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(4))
    ident = Identity(4 * MIN_PIECE, bytes(32), MIN_PIECE, root_of(MIN_PIECE, good))

    async def serve(request: web.Request) -> web.Response:
        if request.path.endswith("/liar"):
            return web.Response(body=bytes(32) + good[32:])
        if request.path.endswith("/endless"):
            return web.Response(body=good * 1000)  # far more than the list can be
        return web.Response(body=good)

    server = AppServer(serve)

    async def run() -> None:
        async with HttpClient(HttpOptions(), connect_timeout=5, read_timeout=10,
                              per_host=2) as http:
            with pytest.raises(IntegrityError, match="root"):
                await fetch_piece_list(http, ident, [f"{server.url}/liar",
                                                     f"{server.url}/endless"])
            got = await fetch_piece_list(http, ident, [f"{server.url}/liar",
                                                       f"{server.url}/good"])
            assert b"".join(got) == good

    try:
        asyncio.run(run())
    finally:
        server.close()


def test_a_long_piece_list_is_read_whole() -> None:
    """Regression: read(n) returned only what was buffered (64 KiB), so any file of more
    than 2048 pieces (over 512 MiB) could not be fetched by name."""
    hashes = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(4096))
    ident = Identity(4096 * MIN_PIECE, bytes(32), MIN_PIECE, root_of(MIN_PIECE, hashes))

    async def serve(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(0, len(hashes), 10_000):  # in small writes, as a network delivers
            await resp.write(hashes[i:i + 10_000])
        return resp

    server = AppServer(serve)

    async def run() -> None:
        async with HttpClient(HttpOptions(), connect_timeout=5, read_timeout=10,
                              per_host=2) as http:
            got = await fetch_piece_list(http, ident, [f"{server.url}/pieces"])
            assert len(got) == 4096

    try:
        asyncio.run(run())
    finally:
        server.close()
