"""Built-in attachment policy, independent of any antivirus signature.

Executables and scripts are blocked by name and by content (a PE file named
invoice.pdf is still a PE file), archives are opened in memory to apply the
same policy to their members, and archives that cannot be inspected
(encrypted, nested too deep, or expanding far beyond their size) are findings
of their own, because that is how malware gets past scanners.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

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


def _check_zip(data: bytes, depth: int, report: AttachmentReport) -> None:
    if depth > MAX_ARCHIVE_DEPTH:
        report.archive_too_deep = True
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError, EOFError):
        report.corrupt_archive = True
        return
    if len(members) > MAX_MEMBERS:
        report.archive_bomb = True
        members = members[:MAX_MEMBERS]
    expanded = sum(m.file_size for m in members)
    compressed = sum(m.compress_size for m in members)
    if expanded > MAX_EXPANDED_BYTES or (expanded > 1024 * 1024 and expanded > MAX_RATIO * max(compressed, 1)):
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
