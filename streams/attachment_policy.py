"""Built-in attachment policy, independent of any antivirus signature.

Executables and scripts are blocked by name and by content (a PE file named
invoice.pdf is still a PE file), archives (zip, 7z, RAR) are opened in memory to
apply the same policy to their members, and archives that cannot be inspected
(encrypted, nested too deep, or expanding far beyond their size) are findings
of their own, because that is how malware gets past scanners.

ClamAV unpacks archives itself for the virus scan; this policy is about types
and bombs. RAR listings (names, sizes, encryption) are read in pure Python;
packed RAR members are decompressed by bsdtar (installed by scripts/setup.sh)
when looking for nested archives, and where no such tool is installed their
content stays unopened: names, sizes and encryption are still checked.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import py7zr
import rarfile
from py7zr.io import Py7zIO, WriterFactory

from streams.mime_parser import ParsedMessage

BLOCKED_EXTENSIONS = frozenset({
    "ade", "adp", "app", "appx", "application", "appref-ms", "bas", "bat", "chm", "cmd", "com",
    "cpl", "dll", "exe", "gadget", "hta", "inf", "ins", "iso", "img", "isp", "jar", "js", "jse",
    "lib", "lnk", "mde", "msc", "msi", "msix", "msp", "mst", "nsh", "pif", "ps1", "ps1xml",
    "psc1", "psd1", "psm1", "reg", "scf", "scr", "sct", "shb", "shs", "sys", "vb", "vbe", "vbs",
    "vhd", "vhdx", "vxd", "wsc", "wsf", "wsh", "xll",
})
BLOCKED_CONTENT_TYPES = frozenset({
    "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
    "application/x-executable", "application/hta", "application/x-ms-shortcut",
    "application/java-archive", "application/x-msi", "application/vnd.microsoft.portable-executable",
})
# Names whose content should be a document or picture, never code or an archive.
_DOCUMENT_EXTENSIONS = frozenset({
    "pdf", "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "txt", "csv", "rtf", "doc", "docx",
    "xls", "xlsx", "ppt", "pptx", "odt", "ods", "htm", "html", "mp3", "wav", "mp4",
})
ARCHIVE_EXTENSIONS = frozenset({"zip", "rar", "7z", "gz", "tgz", "bz2", "xz", "cab", "tar", "ace", "arj"})

MAX_ARCHIVE_DEPTH = 3
MAX_RATIO = 100
MAX_EXPANDED_BYTES = 200 * 1024 * 1024
# Members opened to look for nested archives are read at most this far.
MAX_NESTED_READ = 20 * 1024 * 1024
MAX_MEMBERS = 1000


def sniff(data: bytes) -> str:
    """Kind of file from its first bytes; "" when it is none we act on."""
    head = data[:8]
    if head.startswith(b"MZ"):
        return "executable"
    if head.startswith(b"\x7fELF") or head[:4] in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf",
                                                  b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe"):
        return "executable"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"MSCF"):
        return "cab"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith((b"\x89PNG", b"GIF8", b"\xff\xd8\xff")):
        return "image"
    return ""


def _extension(name: str) -> str:
    name = name.lower().rstrip(". ")
    return name.rpartition(".")[2] if "." in name else ""


def _double_extension(name: str) -> bool:
    parts = name.lower().rstrip(". ").split(".")
    return len(parts) >= 3 and parts[-1] in BLOCKED_EXTENSIONS and parts[-2] in _DOCUMENT_EXTENSIONS


@dataclass
class AttachmentReport:
    blocked_name: bool = False
    blocked_type: bool = False
    double_extension: bool = False
    type_mismatch: bool = False
    encrypted_archive: bool = False
    archive_too_deep: bool = False
    archive_bomb: bool = False
    corrupt_archive: bool = False

    @property
    def dangerous(self) -> bool:
        return any((self.blocked_name, self.blocked_type, self.double_extension, self.type_mismatch,
                    self.encrypted_archive, self.archive_too_deep, self.archive_bomb))


def _check_name(name: str, report: AttachmentReport) -> None:
    ext = _extension(name)
    if ext in BLOCKED_EXTENSIONS:
        report.blocked_name = True
    if _double_extension(name):
        report.double_extension = True


def _check_content(name: str, data: bytes, depth: int, report: AttachmentReport) -> None:
    kind = sniff(data)
    ext = _extension(name)
    if kind == "executable":
        report.blocked_type = True
        if ext and ext not in BLOCKED_EXTENSIONS:
            report.type_mismatch = True
    elif kind in ("zip", "rar", "7z", "cab", "gzip") and ext in _DOCUMENT_EXTENSIONS - {"docx", "xlsx", "pptx", "odt", "ods"}:
        report.type_mismatch = True
    if kind == "zip":
        _check_zip(data, depth + 1, report)
    elif kind == "7z":
        _check_7z(data, depth + 1, report)
    elif kind == "rar":
        _check_rar(data, depth + 1, report)


def _too_deep(depth: int, report: AttachmentReport) -> bool:
    report.archive_too_deep |= depth > MAX_ARCHIVE_DEPTH
    return depth > MAX_ARCHIVE_DEPTH


def _capped(members: list, report: AttachmentReport) -> list:
    """At most MAX_MEMBERS members; more is itself a sign of a bomb."""
    if len(members) > MAX_MEMBERS:
        report.archive_bomb = True
    return members[:MAX_MEMBERS]


def _expands_like_a_bomb(expanded: int, compressed: int) -> bool:
    """Declared sizes past the absolute limit, or a ratio no real document has."""
    return expanded > MAX_EXPANDED_BYTES or (expanded > 1024 * 1024 and expanded > MAX_RATIO * max(compressed, 1))


def _check_zip(data: bytes, depth: int, report: AttachmentReport) -> None:
    if _too_deep(depth, report):
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError, EOFError):
        report.corrupt_archive = True
        return
    members = _capped(members, report)
    if _expands_like_a_bomb(sum(m.file_size for m in members), sum(m.compress_size for m in members)):
        report.archive_bomb = True
        return
    for member in members:
        if member.is_dir():
            continue
        if member.flag_bits & 0x1:
            report.encrypted_archive = True
        _check_name(member.filename, report)
        if member.flag_bits & 0x1 or member.compress_size > MAX_NESTED_READ:
            continue
        try:
            with archive.open(member) as fh:
                # Declared sizes can lie: never read past the limit.
                content = fh.read(MAX_NESTED_READ + 1)
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError, EOFError, RuntimeError):
            report.corrupt_archive = True
            continue
        except Exception:  # zlib.error and friends from a damaged member
            report.corrupt_archive = True
            continue
        if len(content) > MAX_NESTED_READ:
            report.archive_bomb = True
            continue
        _check_content(member.filename, content, depth, report)


class _TooLarge(Exception):
    """Raised from inside a 7z extraction to stop decompressing a bomb."""


class _MemberSink(Py7zIO):
    """Keeps what the policy needs of one 7z member: its head, or all of it when it is an archive."""

    def __init__(self, factory: _MemberSinks) -> None:
        self.factory = factory
        self.data = bytearray()
        self.written = 0

    def write(self, s: bytes | bytearray) -> int:
        self.written += len(s)
        self.factory.total += len(s)
        if self.factory.total > MAX_EXPANDED_BYTES:
            raise _TooLarge
        if len(self.data) < 8:
            self.data += s
            if len(self.data) >= 8 and sniff(bytes(self.data[:8])) not in _ARCHIVE_KINDS:
                del self.data[8:]  # the head is all the policy reads of other files
        elif sniff(bytes(self.data[:8])) in _ARCHIVE_KINDS:
            self.data += s
        if len(self.data) > MAX_NESTED_READ:
            raise _TooLarge
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.written


class _MemberSinks(WriterFactory):
    def __init__(self) -> None:
        self.total = 0
        self.members: dict[str, _MemberSink] = {}

    def create(self, filename: str) -> Py7zIO:
        self.members[filename] = sink = _MemberSink(self)
        return sink


_ARCHIVE_KINDS = frozenset({"zip", "7z", "rar"})


def _check_7z(data: bytes, depth: int, report: AttachmentReport) -> None:
    if _too_deep(depth, report):
        return
    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data))
        members = [m for m in archive.list() if not m.is_directory]
    except py7zr.PasswordRequired:
        # Encrypted headers hide even the member names.
        report.encrypted_archive = True
        return
    except Exception:  # py7zr raises many unrelated types on damaged input
        report.corrupt_archive = True
        return
    members = _capped(members, report)
    for member in members:
        _check_name(member.filename, report)
    # Solid archives give one packed size for many members: compare with the whole archive.
    if _expands_like_a_bomb(sum(m.uncompressed or 0 for m in members), len(data)):
        report.archive_bomb = True
        return
    if archive.needs_password():
        report.encrypted_archive = True
        return
    sinks = _MemberSinks()
    try:
        archive.extractall(factory=sinks)
    except _TooLarge:
        # Declared sizes lied: the content expands past the limits.
        report.archive_bomb = True
        return
    except Exception:  # damaged streams, unsupported filters, CRC errors
        report.corrupt_archive = True
        return
    for name, sink in sinks.members.items():
        _check_content(name, bytes(sink.data), depth, report)


def _check_rar(data: bytes, depth: int, report: AttachmentReport) -> None:
    if _too_deep(depth, report):
        return
    try:
        archive = rarfile.RarFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
        # Archive-level: also true when the headers themselves are encrypted (names hidden).
        encrypted = archive.needs_password()
        # rarfile stops quietly at damaged headers and says so here.
        damaged = archive.strerror()
    except rarfile.PasswordRequired:
        report.encrypted_archive = True
        return
    except Exception:  # rarfile.Error and the struct/index errors of damaged headers
        report.corrupt_archive = True
        return
    if damaged:
        report.corrupt_archive = True
    if encrypted:
        report.encrypted_archive = True
    members = _capped(members, report)
    for member in members:
        _check_name(member.filename, report)
    if _expands_like_a_bomb(sum(m.file_size or 0 for m in members),
                            sum(m.compress_size or 0 for m in members)):
        report.archive_bomb = True
        return
    for member in members:
        if member.needs_password() or (member.compress_size or 0) > MAX_NESTED_READ:
            continue
        try:
            with archive.open(member) as fh:
                # Declared sizes can lie: never read past the limit.
                content = fh.read(MAX_NESTED_READ + 1)
        except rarfile.RarCannotExec:
            # Packed member and no bsdtar/unrar here: its content stays unopened.
            continue
        except Exception:  # rarfile.Error, a failing tool, damaged data
            report.corrupt_archive = True
            continue
        if len(content) > MAX_NESTED_READ:
            report.archive_bomb = True
            continue
        _check_content(member.filename, content, depth, report)


def inspect(msg: ParsedMessage) -> AttachmentReport:
    report = AttachmentReport()
    for part in msg.parts:
        if not part.is_attachment:
            continue
        if part.filename:
            _check_name(part.filename, report)
        if part.content_type in BLOCKED_CONTENT_TYPES:
            report.blocked_type = True
        _check_content(part.filename, part.payload, 0, report)
    return report
