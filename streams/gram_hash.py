"""CRC-32 of every fixed-width window of a text, computed for all windows at once.

The spam model hashes each token by zlib.crc32 of its UTF-8. A text's thousand
character grams hashed that way cost a string slice, an encode and a call
each; this gives the same values (so an artifact trained on either agrees with
both) for a few numpy operations per text. CRC-32 is affine in its input bits:
over windows of one width after a fixed prefix, a window's CRC is a constant
XORed with one table entry per byte position, looked up for all windows at
once. Windows with a non-ASCII character, whose UTF-8 takes more than a byte
per character, are hashed by zlib one by one.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def _position_tables(prefix: bytes, width: int) -> tuple[int, np.ndarray]:
    """CRC of ``prefix`` + ``width`` zero bytes, and per position the XOR each byte value makes to it."""
    zero = zlib.crc32(prefix + bytes(width))
    tables = np.empty((width, 256), dtype=np.uint32)
    for j in range(width):
        for b in range(256):
            tables[j, b] = zlib.crc32(prefix + bytes(j) + bytes((b,)) + bytes(width - j - 1)) ^ zero
    return zero, tables


def code_points(text: str) -> np.ndarray:
    """``text``'s code points (lone surrogates included, as UTF-8 "surrogatepass" keeps them)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def windows_touching(marked: np.ndarray, width: int) -> np.ndarray:
    """For every ``width`` consecutive positions, in order: whether any is ``marked``."""
    seen = np.zeros(len(marked) + 1, dtype=np.int64)
    np.cumsum(marked, out=seen[1:])
    return seen[width:] != seen[:-width]


def window_crc32(prefix: bytes, text: str, width: int) -> np.ndarray:
    """zlib.crc32(prefix + the UTF-8 of ``text[i:i + width]``) for every i, in order."""
    n = len(text) - width + 1
    if n <= 0:
        return np.empty(0, dtype=np.uint32)
    zero, tables = _position_tables(prefix, width)
    codes = code_points(text)
    low = codes if codes.dtype == np.uint8 else (codes & 0xFF).astype(np.uint8)
    crc = np.full(n, zero, dtype=np.uint32)
    for j in range(width):
        crc ^= tables[j][low[j:j + n]]
    if codes.dtype != np.uint8:
        start = zlib.crc32(prefix)
        for i in np.flatnonzero(windows_touching(codes >= 0x80, width)).tolist():
            crc[i] = zlib.crc32(text[i:i + width].encode("utf-8", "surrogatepass"), start)
    return crc
