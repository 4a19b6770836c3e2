"""7z and RAR archives built by the tests themselves.

py7zr writes 7z (encrypted too). No free tool writes RAR, so rar4() lays out a
RAR 1.5-4.x archive of stored (uncompressed) members by hand, following the
published format: marker block, main header, one file header per member with
its data, end block; each header carries the low 16 bits of its CRC-32.
"""

from __future__ import annotations

import io
import struct
import zlib

import py7zr

RAR_MARKER = b"Rar!\x1a\x07\x00"
_MAIN, _FILE, _END = 0x73, 0x74, 0x7B
_LONG_BLOCK, _FILE_ENCRYPTED, _MAIN_HEADERS_ENCRYPTED = 0x8000, 0x0004, 0x0080
_STORED = 0x30


def seven_zip(files: dict[str, bytes], password: str | None = None,
              header_encryption: bool = False) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password, header_encryption=header_encryption) as z:
        for name, data in files.items():
            z.writestr(data, name)
    return buf.getvalue()


def _block(kind: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
    head = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + data


def rar4(files: dict[str, bytes], encrypted: bool = False, headers_encrypted: bool = False,
         declared_sizes: dict[str, int] | None = None) -> bytes:
    """Stored members; ``declared_sizes`` overrides a member's unpacked size (a lying header)."""
    out = RAR_MARKER + _block(_MAIN, _MAIN_HEADERS_ENCRYPTED if headers_encrypted else 0, b"\0" * 6)
    for name, data in files.items():
        encoded = name.encode()
        unpacked = (declared_sizes or {}).get(name, len(data))
        body = struct.pack("<IIBIIBBHI", len(data), unpacked, 3, zlib.crc32(data), 0x5A000000,
                           20, _STORED, len(encoded), 0o100644) + encoded
        flags = _LONG_BLOCK | (_FILE_ENCRYPTED if encrypted else 0)
        out += _block(_FILE, flags, body, data)
    return out + _block(_END, 0x4000, b"")
