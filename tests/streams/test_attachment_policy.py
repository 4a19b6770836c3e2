from __future__ import annotations

import io
import zipfile

import py7zr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import attachment_policy
from streams.attachment_policy import MAX_ARCHIVE_DEPTH, inspect, sniff
from streams.mime_parser import parse
from streams.scoring_engine import ScoringEngine
from tests.streams.archive_fixtures import rar4, seven_zip
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


# --- 7z and RAR: the same policy as zip -------------------------------------

def test_sniff_7z_and_rar():
    assert sniff(seven_zip({"a.txt": b"x"})) == "7z"
    assert sniff(rar4({"a.txt": b"x"})) == "rar"


def test_harmless_7z_and_rar_pass():
    files = {"notes.txt": b"hello", "pic.png": b"\x89PNG\r\n\x1a\n", "docs/report.pdf": b"%PDF-1.4"}
    assert not report_for(seven_zip(files), "files.7z").dangerous
    assert not report_for(rar4(files), "files.rar").dangerous


@pytest.mark.parametrize("build, name", [(seven_zip, "files.7z"), (rar4, "files.rar")])
def test_blocked_member_names_and_executable_content(build, name):
    assert report_for(build({"docs/payload.vbs": b"WScript"}), name).blocked_name
    r = report_for(build({"scan.jpg": b"MZ\x90\x00\x03"}), name)
    assert r.blocked_type and r.type_mismatch and not r.blocked_name


def test_encrypted_7z_is_found_and_member_names_still_checked():
    r = report_for(seven_zip({"invoice.doc": b"secret"}, password="pw"), "invoice.7z")
    assert r.encrypted_archive and not r.blocked_name
    assert report_for(seven_zip({"run.exe": b"MZ"}, password="pw"), "a.7z").blocked_name


def test_7z_with_encrypted_headers_hides_names_and_is_found():
    data = seven_zip({"invoice.doc": b"secret"}, password="pw", header_encryption=True)
    assert report_for(data, "invoice.7z").encrypted_archive


def test_encrypted_rar_members_and_headers():
    r = report_for(rar4({"invoice.doc": b"\x8f" * 32}, encrypted=True), "invoice.rar")
    assert r.encrypted_archive and not r.blocked_type
    assert report_for(rar4({"a.doc": b"x"}, headers_encrypted=True), "a.rar").encrypted_archive


def test_nesting_across_formats_counts_every_level():
    inner = zip_bytes({"payload.js": b"eval()"})
    assert report_for(seven_zip({"inner.zip": inner}), "outer.7z").blocked_name
    assert report_for(rar4({"inner.7z": seven_zip({"inner.zip": inner})}), "outer.rar").blocked_name
    nested = seven_zip({"doc.txt": b"ok"})
    builders = [zip_bytes, rar4, seven_zip]
    for i in range(MAX_ARCHIVE_DEPTH + 1):
        nested = builders[i % 3]({f"level{i}.bin": nested})
    r = report_for(nested, "deep.bin")
    assert r.archive_too_deep and not r.corrupt_archive


def test_7z_bomb_by_declared_ratio():
    data = seven_zip({"zeros.bin": b"\0" * (30 * 1024 * 1024)})
    assert len(data) < 100_000
    assert report_for(data, "data.7z").archive_bomb


def test_7z_whose_content_outgrows_the_limit_stops_decompressing(monkeypatch):
    # Headers that understate the sizes pass the declared check; the extraction itself
    # stops at the limit.
    monkeypatch.setattr(attachment_policy, "_expands_like_a_bomb", lambda expanded, compressed: False)
    monkeypatch.setattr(attachment_policy, "MAX_EXPANDED_BYTES", 2 * 1024 * 1024)
    data = seven_zip({"zeros.bin": b"\0" * (4 * 1024 * 1024)})
    assert report_for(data, "data.7z").archive_bomb


def test_rar_bomb_by_declared_size():
    data = rar4({"zeros.bin": b"\0" * 1000}, declared_sizes={"zeros.bin": 300 * 1024 * 1024})
    assert report_for(data, "data.rar").archive_bomb


@pytest.mark.parametrize("data, name", [
    (b"7z\xbc\xaf\x27\x1c" + b"\xff" * 200, "broken.7z"),
    (seven_zip({"a.txt": b"hello" * 100})[:60], "cut.7z"),
    (rar4({"a.txt": b"hello" * 100})[:40], "cut.rar"),
], ids=["broken.7z", "cut.7z", "cut.rar"])  # a 7z holds its write time: ids from bytes differ per xdist worker
def test_corrupt_7z_and_rar_are_reported_not_raised(data, name):
    r = report_for(data, name)
    assert r.corrupt_archive and not r.dangerous


def test_7z_inspection_writes_nothing_to_disk(tmp_path, monkeypatch):
    (tmp_path / "src" / "folder").mkdir(parents=True)
    (tmp_path / "src" / "folder" / "a.txt").write_bytes(b"hello")
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writeall(tmp_path / "src" / "folder", "folder")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert not report_for(buf.getvalue(), "folder.7z").dangerous
    assert list(workdir.iterdir()) == []


def test_7z_attachment_is_a_dangerous_attachment_verdict():
    raw = with_attachment(seven_zip({"invoice.doc": b"secret"}, password="pw"), "invoice.7z")
    result = ScoringEngine().score_sync(raw)
    assert "dangerous_attachment" in result.categories
    assert result.virus == "Policy.ARCHIVE_ENCRYPTED"


ARCHIVE_SEEDS = [
    seven_zip({"a.txt": b"hello", "b/run.exe": b"MZ\x90", "c.zip": zip_bytes({"d.js": b"x"})}),
    seven_zip({"secret.doc": b"x" * 300}, password="pw"),
    seven_zip({"secret.doc": b"x"}, password="pw", header_encryption=True),
    rar4({"a.txt": b"hello", "inner.7z": seven_zip({"e.vbs": b"x"})}),
    rar4({"a.doc": b"y" * 64}, encrypted=True),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ARCHIVE_SEEDS), st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10_000), st.binary(max_size=8)),
    min_size=1, max_size=6))
def test_mutated_7z_and_rar_always_give_a_report(seed, edits):
    data = bytearray(seed)
    for op, pos, chunk in edits:
        pos %= max(len(data), 1)
        if op == "flip" and data:
            data[pos] ^= (chunk[:1] or b"\x01")[0] or 1
        elif op == "cut":
            del data[pos:pos + 1 + len(chunk) * 8]
        else:
            data[pos:pos] = chunk
    report = report_for(bytes(data), "mutated.bin")
    assert isinstance(report.dangerous, bool)
