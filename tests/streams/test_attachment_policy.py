from __future__ import annotations

import io
import zipfile

from streams.attachment_policy import MAX_ARCHIVE_DEPTH, inspect, sniff
from streams.mime_parser import parse
from tests.streams.scoring_fixtures import mark_encrypted, with_attachment, zip_bytes


def report_for(data: bytes, name: str, ctype: str = "application/octet-stream"):
    return inspect(parse(with_attachment(data, name, ctype)))


def test_sniff_kinds():
    assert sniff(b"MZ\x90\x00") == "executable"
    assert sniff(b"\x7fELF\x02") == "executable"
    assert sniff(zip_bytes({"a": b"b"})) == "zip"
    assert sniff(b"%PDF-1.7") == "pdf"
    assert sniff(b"hello") == ""


def test_harmless_attachments_pass():
    assert not report_for(b"%PDF-1.4 body", "report.pdf", "application/pdf").dangerous
    assert not report_for(zip_bytes({"notes.txt": b"hello", "pic.png": b"\x89PNG"}), "files.zip").dangerous


def test_blocked_extension_case_and_trailing_dot():
    assert report_for(b"x", "SETUP.EXE.").blocked_name
    assert report_for(b"x", "script.js").blocked_name


def test_executable_content_under_document_name():
    r = report_for(b"MZ\x90\x00\x03", "scan.jpg", "image/jpeg")
    assert r.blocked_type and r.type_mismatch


def test_blocked_content_type():
    assert report_for(b"data", "tool", "application/x-msdownload").blocked_type


def test_archive_member_names_and_nesting():
    inner = zip_bytes({"payload.vbs": b"WScript"})
    assert report_for(zip_bytes({"inner.zip": inner}), "outer.zip").blocked_name
    nested = zip_bytes({"doc.txt": b"ok"})
    for i in range(MAX_ARCHIVE_DEPTH + 1):
        nested = zip_bytes({f"level{i}.zip": nested})
    assert report_for(nested, "deep.zip").archive_too_deep


def test_encrypted_archive():
    assert report_for(mark_encrypted(zip_bytes({"invoice.doc": b"secret"})), "invoice.zip").encrypted_archive


def test_zip_bomb_by_ratio():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (30 * 1024 * 1024))
    assert len(buf.getvalue()) < 100_000
    assert report_for(buf.getvalue(), "data.zip").archive_bomb


def test_zip_named_as_document():
    assert report_for(zip_bytes({"a.txt": b"x"}), "statement.pdf", "application/pdf").type_mismatch


def test_corrupt_archive_is_reported_not_raised():
    r = report_for(b"PK\x03\x04" + b"\xff" * 200, "broken.zip")
    assert r.corrupt_archive and not r.dangerous
