"""Piece bitfields, as swarming sends them: one bit per piece, most significant bit
of byte 0 = piece 0, exactly ceil(pieces / 8) bytes, spare bits zero.

The wire form (`bytes`) travels in the tracker's Holding.have / Source.have and
in an agent's ``GET /swarm/<sha256>/have``; in memory the client and the agent
keep one byte (0 or 1) per piece, which is what :func:`unpack` gives.
An empty wire bitfield means "every piece" (a full holder).
"""
from __future__ import annotations


class BadBitfield(ValueError):
    """A bitfield whose length or spare bits do not fit the piece count."""


def length(pieces: int) -> int:
    """Bytes in the bitfield of `pieces` pieces."""
    return (pieces + 7) // 8


def pack(flags: bytes | bytearray) -> bytes:
    """One byte per piece (0/1) -> the wire bitfield."""
    out = bytearray(length(len(flags)))
    for i, d in enumerate(flags):
        if d:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def check(bits: bytes, pieces: int) -> bytes:
    """`bits` if it is a valid bitfield of `pieces` pieces; raises BadBitfield."""
    if len(bits) != length(pieces):
        raise BadBitfield(f"bitfield has {len(bits)} bytes, {length(pieces)} expected for "
                          f"{pieces} pieces")
    spare = length(pieces) * 8 - pieces
    if spare and bits[-1] & ((1 << spare) - 1):
        raise BadBitfield("bitfield sets bits past the last piece")
    return bits


def unpack(bits: bytes, pieces: int) -> bytearray:
    """The wire bitfield -> one byte per piece; raises BadBitfield if it does not fit."""
    check(bits, pieces)
    return bytearray(1 if bits[i >> 3] & (0x80 >> (i & 7)) else 0 for i in range(pieces))


def is_full(bits: bytes, pieces: int) -> bool:
    """Whether a valid bitfield has every piece."""
    return bits == pack(b"\x01" * pieces)


def count(bits: bytes) -> int:
    """How many pieces a bitfield has."""
    return sum(b.bit_count() for b in bits)
