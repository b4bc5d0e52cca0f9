"""Attachment verdicts: filenames, sniffing of real files, and one table row per rule (HOSTILE-INPUTS 4.5)."""

from __future__ import annotations

import email
import email.policy
import io
import random
import struct
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.inbound import attachments as att
from mailbridge.inbound.attachments import (
    DEFAULT_ALLOWED_TYPES,
    HEAD_BYTES,
    AttachmentRules,
    Candidate,
    Reason,
    Verdict,
    check_count,
    explain,
    judge,
    sanitize_filename,
    sniff,
    withheld_line,
)
from tests import filemakers as fm

MIB = 1024 * 1024
NOISE = random.Random(4).randbytes(64)  # fixed: libmagic calls it application/octet-stream

# --------------------------------------------------------------------------- filenames (F2, F3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/x", "x"),
        ("C:\\x\\y.pdf", "y.pdf"),
        ("C:\\x\\y", "y"),
        ("C:y.pdf", "y.pdf"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("dir/", "dir"),
        ("a\x00.pdf", "a.pdf"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("\u202aa\u202b\u202c\u202d.pdf", "a.pdf"),
        ("\u2066x\u2067\u2068\u2069.pdf", "x.pdf"),
        ("\u200fa\u200e.pdf", "a.pdf"),
        ("\u061cb.pdf", "b.pdf"),
        ("in\u200bvoice\ufeff.pdf", "invoice.pdf"),
        ("a\udcff.pdf", "a.pdf"),
        ("tab\there\r\nnew.pdf", "tab here new.pdf"),
        ("many     spaces.pdf", "many spaces.pdf"),
        (".bashrc", "bashrc"),
        ("  . .hidden.pdf", "hidden.pdf"),
        ("report.pdf.", "report.pdf"),
        ("report.exe . .", "report.exe"),
        ("a..b.pdf", "a.b.pdf"),
        ('x<y>z:w|v?u*".pdf', "x_y_z_w_v_u__.pdf"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("Nul .tar.gz", "_Nul .tar.gz"),
        ("LPT1.pdf", "_LPT1.pdf"),
        ("COM¹", "_COM¹"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("e\u0301chographie.pdf", "échographie.pdf"),
        ("Résultats d’analyse (2).pdf", "Résultats d’analyse (2).pdf"),
        ("病历.pdf", "病历.pdf"),
        ("", None),
        (None, None),
        ("../..", None),
        ("/", None),
        ("   ", None),
        ("...", None),
        ("\u202e\u200b", None),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str | None) -> None:
    assert sanitize_filename(raw) == expected


def test_sanitize_caps_length_keeping_extension() -> None:
    name = sanitize_filename("a" * 300 + ".pdf")
    assert name is not None
    assert len(name) == 150
    assert name.endswith("aaa.pdf")
    assert sanitize_filename("b" * 300) == "b" * 150
    assert sanitize_filename("c" * 40 + ".docx", max_len=20) == "c" * 15 + ".docx"
    # A very long "extension" is not kept whole at the expense of the name.
    assert sanitize_filename("d.verylongextension", max_len=16) == "d.verylongextens"
    with pytest.raises(ValueError, match="max_len"):
        sanitize_filename("x.pdf", max_len=8)


def test_rfc2231_and_rfc2047_names_are_decoded_then_sanitised() -> None:
    """F3: the parser decodes `filename*=UTF-8''..%2F..%2Fx`; sanitising then keeps `x`."""
    raw = (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''..%2F..%2Fx\r\n\r\n%PDF-1.4\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="=?UTF-8?Q?invoice=E2=80=AEgpj.exe?="\r\n\r\nMZ\r\n'
        b"--B--\r\n"
    )
    message = email.message_from_bytes(raw, policy=email.policy.default)
    names = [part.get_filename() for part in message.iter_attachments()]
    assert names == ["../../x", "invoice\u202egpj.exe"]
    assert [sanitize_filename(n) for n in names] == ["x", "invoicegpj.exe"]


_FORBIDDEN = set('/\\\x00<>:"|?*')


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=st.sampled_from(list("./\\ \u202e\u200b:aéCON\x00\t")))))
def test_sanitize_properties(raw: str) -> None:
    name = sanitize_filename(raw)
    if name is None:
        return
    assert name == name.strip(" .")
    assert 0 < len(name) <= 150
    assert not _FORBIDDEN & set(name)
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name)
    assert unicodedata.is_normalized("NFC", name)
    assert sanitize_filename(name) == name  # idempotent: a stored name survives re-sanitising


# --------------------------------------------------------------------------- sniffing real files

# What libmagic (5.44) says on the first 8 KB, after our corrections; see the comments for raw answers.
REAL_FILES: list[tuple[str, Callable[[], bytes], str]] = [
    ("docx (python-docx)", fm.docx, att.DOCX),  # libmagic: application/zip at 512 B, OOXML from 2 KB
    ("xlsx (openpyxl)", fm.xlsx, att.XLSX),  # libmagic: application/zip up to 2 KB, OOXML at 8 KB
    ("pptx (python-pptx)", fm.pptx, att.PPTX),
    ("odt (odfpy)", fm.odt, att.ODT),
    ("ods (odfpy)", fm.ods, att.ODS),
    ("odp (odfpy)", fm.odp, att.ODP),
    ("docm", lambda: fm.macro_enable(fm.docx()), att.DOCM),  # libmagic: the plain .docx type
    ("xlsm", lambda: fm.macro_enable(fm.xlsx()), att.XLSM),  # libmagic: the plain .xlsx type
    ("pptm", lambda: fm.macro_enable(fm.pptx()), att.PPTM),  # libmagic: the plain .pptx type
    ("doc (OLE2)", fm.legacy_doc, att.MSWORD),  # libmagic: application/x-ole-storage at 512 B
    ("xls (OLE2)", fm.legacy_xls, att.MSEXCEL),
    ("doc, directory past the head", lambda: fm.legacy_doc(directory_last=True), att.OLE_STORAGE),
    ("png (Pillow)", fm.png, "image/png"),
    ("jpeg (Pillow)", fm.jpeg, "image/jpeg"),
    ("gif (Pillow)", fm.gif, "image/gif"),
    ("tiff (Pillow)", fm.tiff, "image/tiff"),
    ("webp (Pillow)", fm.webp, "image/webp"),
    ("pdf (Pillow)", fm.pdf, "application/pdf"),
    ("heic head", fm.heic_head, "image/heic"),
    ("ELF head of /bin/true", fm.elf_head, "application/x-sharedlib"),  # a PIE: not x-executable
    ("PE32", fm.pe, "application/vnd.microsoft.portable-executable"),
    ("PE32+ DLL", lambda: fm.pe(pe64=True, dll=True), "application/vnd.microsoft.portable-executable"),
    ("MZ only", lambda: b"MZ" + bytes(200), "application/x-dosexec"),
    ("Mach-O", fm.macho, "application/x-mach-binary"),
    ("Windows shortcut", fm.windows_shortcut, "application/x-ms-shortcut"),
    ("zip", fm.zip_archive, "application/zip"),
    ("zip bomb", fm.zip_bomb_head, "application/zip"),
    ("gzip", fm.gzip_file, "application/gzip"),
    ("tar", fm.tar_file, "application/x-tar"),
    ("7z", fm.seven_zip_head, "application/x-7z-compressed"),
    ("rar5", fm.rar5_head, "application/x-rar"),
    ("html", lambda: fm.HTML, "text/html"),
    ("html fragment", lambda: fm.HTML_FRAGMENT, "text/html"),  # libmagic: text/plain
    ("xhtml", lambda: fm.XHTML, "application/xhtml+xml"),  # libmagic: text/xml
    ("svg", lambda: fm.SVG, "image/svg+xml"),
    ("svg after a long comment", lambda: fm.SVG_AFTER_COMMENT, "image/svg+xml"),  # libmagic: text/xml at 2 KB
    ("utf-16 html", lambda: fm.UTF16_HTML, "text/html"),
    ("gif/html polyglot", fm.gif_html_polyglot, "image/gif"),
    ("shell", lambda: fm.SHELL, "text/x-shellscript"),
    ("python", lambda: fm.PYTHON, "text/x-script.python"),
    ("perl", lambda: fm.PERL, "text/x-perl"),
    ("php", lambda: fm.PHP, "text/x-php"),
    ("node", lambda: fm.NODE, "application/javascript"),
    ("batch", lambda: fm.BATCH, "text/x-msdos-batch"),
    ("javascript without shebang", lambda: fm.JS_NO_SHEBANG, "text/plain"),
    ("plain text", lambda: fm.PLAIN, "text/plain"),
    ("csv", lambda: fm.CSV, "text/csv"),
    ("ics", lambda: fm.ICS, "text/calendar"),
    ("rtf", lambda: fm.RTF, "text/rtf"),
    ("empty", lambda: b"", "application/x-empty"),
]


@pytest.mark.parametrize(("label", "make", "expected"), REAL_FILES, ids=[r[0] for r in REAL_FILES])
def test_sniff_real_files(label: str, make: Callable[[], bytes], expected: str) -> None:
    assert sniff(make()[:HEAD_BYTES]) == expected


def test_sniff_short_heads_of_office_files() -> None:
    """libmagic reports `application/zip` for a 2 KB head of openpyxl's .xlsx: the member names settle it."""
    assert sniff(fm.xlsx()[:2048]) == att.XLSX
    assert sniff(fm.docx()[:512]) == att.DOCX  # first member is [Content_Types].xml, fully inside
    assert sniff(fm.macro_enable(fm.pptx())[:2048]) == att.PPTM


def test_sniff_prose_called_source_code_is_text() -> None:
    assert sniff(b"#include <stdio.h>\nint main(void) { return 0; }\n") == "text/plain"


def test_zip_bomb_is_never_inflated_beyond_a_small_cap() -> None:
    """F7: a member that inflates 1000:1 sits in the head; sniffing reads at most 64 KB of it."""
    head = fm.zip_bomb_head(uncompressed=7 * MIB)
    assert len(head) < HEAD_BYTES
    members = att._zip_members(head)
    assert [m.name for m in members] == ["[Content_Types].xml"]
    assert members[0].payload is not None
    assert len(members[0].payload) == att._INFLATE_CAP


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b),
        st.binary(max_size=1200).map(lambda b: bytes.fromhex("d0cf11e0a1b11ae1") + b),
        st.binary(max_size=300).map(lambda b: b"\xff\xfe" + b),
    )
)
def test_sniff_never_raises(head: bytes) -> None:
    assert isinstance(sniff(head), str)


def test_one_libmagic_handle_per_thread() -> None:
    handles: list[object] = []
    results: list[str] = []

    def work() -> None:
        handles.append(att._magic())
        assert att._magic() is handles[-1]
        results.extend(sniff(fm.PLAIN) for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(h) for h in handles}) == 4
    assert set(results) == {"text/plain"}


# --------------------------------------------------------------------------- verdicts, one row per rule


@dataclass(frozen=True)
class Row:
    label: str
    make: Callable[[], bytes]
    filename: str | None
    declared: str
    accepted: bool
    reason: Reason | None = None
    sniffed: str | None = None
    rules: AttachmentRules = field(default_factory=AttachmentRules)
    shown_as: str | None = None


MACROS_OK = AttachmentRules(allow_macro_office=True)
EXE, ACTIVE, MACRO = Reason.EXECUTABLE, Reason.ACTIVE_CONTENT, Reason.MACRO_DOCUMENT
NOT_ALLOWED, MISMATCH = Reason.TYPE_NOT_ALLOWED, Reason.TYPE_MISMATCH
OCTET = "application/octet-stream"


def docm() -> bytes:
    return fm.macro_enable(fm.docx())


ROWS = [
    # accepted, by content
    Row("pdf", fm.pdf, "report.pdf", "application/pdf", True, sniffed="application/pdf"),
    Row("png", fm.png, "scan.png", "image/png", True, sniffed="image/png"),
    Row("png named .jpg (same family)", fm.png, "photo.jpg", "image/jpeg", True, sniffed="image/png"),
    Row("jpeg", fm.jpeg, "photo.jpeg", "image/jpeg", True),
    Row("gif", fm.gif, "a.gif", "image/gif", True),
    Row("tiff", fm.tiff, "fax.tif", "image/tiff", True),
    Row("webp", fm.webp, "a.webp", "image/webp", True),
    Row("heic", fm.heic_head, "IMG_0001.HEIC", "image/heic", True, sniffed="image/heic"),
    Row("docx", fm.docx, "letter.docx", OCTET, True, sniffed=att.DOCX),
    Row("xlsx", fm.xlsx, "results.xlsx", att.XLSX, True, sniffed=att.XLSX),
    Row("pptx", fm.pptx, "plan.pptx", att.PPTX, True, sniffed=att.PPTX),
    Row("odt", fm.odt, "letter.odt", att.ODT, True, sniffed=att.ODT),
    Row("ods", fm.ods, "sheet.ods", att.ODS, True),
    Row("odp", fm.odp, "slides.odp", att.ODP, True),
    Row("legacy doc", fm.legacy_doc, "old.doc", "application/msword", True, sniffed=att.MSWORD),
    Row("legacy xls", fm.legacy_xls, "old.xls", "application/vnd.ms-excel", True, sniffed=att.MSEXCEL),
    Row("csv declared as Excel (Windows)", lambda: fm.CSV, "bp.csv", "application/vnd.ms-excel", True),
    Row("calendar", lambda: fm.ICS, "invite.ics", "text/calendar", True, sniffed="text/calendar"),
    Row("plain text", lambda: fm.PLAIN, "notes.txt", "text/plain", True, sniffed="text/plain"),
    Row("JS without shebang in a .txt", lambda: fm.JS_NO_SHEBANG, "notes.txt", "text/plain", True),
    Row("F7 zip holding an .exe, opaque", fm.zip_archive, "records.zip", "application/zip", True),
    Row("F7 zip bomb, opaque", fm.zip_bomb_head, "42.zip", "application/x-zip-compressed", True),
    Row("docx named .zip", fm.docx, "letter.zip", "application/zip", True, sniffed=att.DOCX),
    Row("gzip", fm.gzip_file, "logs.gz", "application/gzip", True),
    Row("tar", fm.tar_file, "a.tar", "application/x-tar", True),
    Row("7z", fm.seven_zip_head, "a.7z", "application/x-7z-compressed", True),
    Row("rar", fm.rar5_head, "a.rar", "application/vnd.rar", True),
    Row("F5 gif/html polyglot passes", fm.gif_html_polyglot, "a.gif", "image/gif", True, sniffed="image/gif"),
    # F9: a part with no filename gets a generated name from the sniffed type (index 3 in these rows)
    Row("no filename", fm.pdf, None, "application/pdf", True, shown_as="attachment-3.pdf"),
    Row("hostile-only filename", fm.png, "../\u202e/..", "image/png", True, shown_as="attachment-3.png"),
    # F9: zero bytes are withheld (nothing to deliver, nothing to vouch for)
    Row("zero-byte", lambda: b"", "empty.pdf", "application/pdf", False, Reason.EMPTY, att.EMPTY),
    # programs and scripts, by content, whatever the name (F4)
    Row("ELF as .pdf", fm.elf_head, "scan.pdf", "application/pdf", False, EXE),
    Row("PE as .pdf", fm.pe, "invoice.pdf", "application/pdf", False, EXE),
    Row("PE as image/png", lambda: fm.pe(pe64=True, dll=True), "a.png", "image/png", False, EXE),
    Row("Mach-O", fm.macho, "tool", OCTET, False, EXE),
    Row("shortcut as .pdf", fm.windows_shortcut, "doc.pdf", "application/pdf", False, EXE),
    Row("shell script as .txt", lambda: fm.SHELL, "notes.txt", "text/plain", False, EXE),
    Row("python script", lambda: fm.PYTHON, "notes.txt", "text/plain", False, EXE),
    Row("perl script", lambda: fm.PERL, None, "text/plain", False, EXE),
    Row("php script", lambda: fm.PHP, "a.txt", "text/plain", False, EXE),
    Row("node script", lambda: fm.NODE, "a.txt", "text/plain", False, EXE),
    Row("batch file as .txt", lambda: fm.BATCH, "a.txt", "text/plain", False, EXE),
    # active content (F4, F6)
    Row("HTML as image/png", lambda: fm.HTML, "photo.png", "image/png", False, ACTIVE),
    Row("HTML as .jpg", lambda: fm.HTML, "photo.jpg", "image/jpeg", False, ACTIVE),
    Row("HTML fragment as .txt", lambda: fm.HTML_FRAGMENT, "a.txt", "text/plain", False, ACTIVE),
    Row("XHTML", lambda: fm.XHTML, "a.xml", "text/xml", False, ACTIVE),
    Row("SVG", lambda: fm.SVG, "logo.svg", "image/svg+xml", False, ACTIVE, "image/svg+xml"),
    Row("SVG as .png", lambda: fm.SVG, "logo.png", "image/png", False, ACTIVE),
    Row("UTF-16 HTML", lambda: fm.UTF16_HTML, "a.txt", "text/plain", False, ACTIVE),
    Row("text named .html", lambda: fm.PLAIN, "page.html", "text/html", False, ACTIVE),
    Row("text named .svg", lambda: fm.PLAIN, "x.svg", "image/svg+xml", False, ACTIVE),
    # dangerous extensions, whatever the content
    Row("RTLO .exe", fm.pdf, "invoice\u202egpj.exe", "application/pdf", False, EXE),
    Row("double extension", fm.pdf, "report.pdf.exe", "application/pdf", False, EXE),
    Row("trailing dot", fm.pdf, "report.exe.", "application/pdf", False, EXE),
    Row("upper-case", lambda: fm.PLAIN, "RUN.BAT", "text/plain", False, EXE),
    Row("disk image", fm.zip_archive, "invoice.iso", OCTET, False, EXE),
    # macro documents: by content, by extension; allowed only by the practice's choice
    Row("docm", docm, "a.docm", att.DOCM, False, MACRO),
    Row("docm renamed .docx", docm, "a.docx", att.DOCX, False, MACRO),
    Row("xlsm", lambda: fm.macro_enable(fm.xlsx()), "a.xlsm", "application/zip", False, MACRO),
    Row(
        "xlsm, writer's member order",
        lambda: fm.macro_enable(fm.xlsx(), content_types_first=False),
        "a.xlsx",
        att.XLSX,
        False,
        MACRO,
    ),
    Row("pptm", lambda: fm.macro_enable(fm.pptx()), "a.pptm", att.PPTM, False, MACRO),
    Row("docx renamed .docm", fm.docx, "a.docm", att.DOCM, False, MACRO),
    Row("odt with Basic", lambda: fm.odf_with_basic_macro(fm.odt()), "a.odt", att.ODT, False, MACRO),
    Row("doc with VBA", lambda: fm.legacy_doc(macros=True), "a.doc", att.MSWORD, False, MACRO),
    Row("xls with VBA", lambda: fm.legacy_xls(macros=True), "a.xls", att.MSEXCEL, False, MACRO),
    Row("docm, macros allowed", docm, "a.docm", att.DOCM, True, None, att.DOCM, MACROS_OK),
    Row(
        "doc with VBA, allowed",
        lambda: fm.legacy_doc(macros=True),
        "a.doc",
        att.MSWORD,
        True,
        rules=MACROS_OK,
    ),
    # not on the allowlist
    Row("rtf named .doc", lambda: fm.RTF, "letter.doc", "application/msword", False, NOT_ALLOWED),
    Row("bmp", lambda: fm.image("BMP"), "a.bmp", "image/bmp", False, NOT_ALLOWED, "image/bmp"),
    Row("random bytes", lambda: NOISE, "data.bin", OCTET, False, NOT_ALLOWED),
    Row("plain XML", lambda: b'<?xml version="1.0"?>\n<a/>\n', "a.xml", "text/xml", False, NOT_ALLOWED),
    Row(
        "doc whose directory is past the head",
        lambda: fm.legacy_doc(directory_last=True),
        "big.doc",
        "application/msword",
        False,
        NOT_ALLOWED,
        att.OLE_STORAGE,
    ),
    Row(
        "pdf, practice allows images only",
        fm.pdf,
        "a.pdf",
        "application/pdf",
        False,
        NOT_ALLOWED,
        rules=AttachmentRules(allowed_types=frozenset({"image/png"})),
    ),
    Row(
        "html stays refused even if allowlisted",
        lambda: fm.HTML,
        "a.txt",
        "text/plain",
        False,
        ACTIVE,
        rules=AttachmentRules(allowed_types=DEFAULT_ALLOWED_TYPES | {"text/html"}),
    ),
    # contradictions between families (F4)
    Row("zip named .jpg", fm.zip_archive, "photo.jpg", "image/jpeg", False, MISMATCH),
    Row("pdf named .jpg", fm.pdf, "photo.jpg", "image/jpeg", False, MISMATCH),
    Row("pdf declared image/png, no name", fm.pdf, None, "image/png", False, MISMATCH),
    Row("png named .txt", fm.png, "notes.txt", "text/plain", False, MISMATCH),
    Row("inline cid image that is a PDF", fm.pdf, "logo.png", "image/png", False, MISMATCH),
    Row("text named .docx", lambda: fm.PLAIN, "a.xlsx", att.XLSX, True),  # benign: office may be text (csv)
]


@pytest.mark.parametrize("row", ROWS, ids=[r.label for r in ROWS])
def test_judge(row: Row) -> None:
    data = row.make()
    candidate = Candidate(row.filename, row.declared, len(data), data[:HEAD_BYTES])
    verdict = judge(candidate, row.rules, 3)
    assert (verdict.accepted, verdict.reason) == (row.accepted, row.reason), verdict
    if row.sniffed:
        assert verdict.sniffed_type == row.sniffed
    if row.shown_as:
        assert verdict.filename == row.shown_as
    if row.reason:
        assert verdict.explanation == explain(row.reason)
    else:
        assert verdict.explanation is None


# the classics, then text-based launchers and Outlook's Level 1 list (finding 13): plain text, refused by name
LAUNCHER_EXTENSIONS = [
    *("exe", "bat", "js", "vbs", "ps1", "sh", "cmd", "scr", "hta", "lnk"),
    *("rdp", "iqy", "slk", "url", "website", "settingcontent-ms", "library-ms", "appref-ms"),
    *("searchconnector-ms", "jse", "wsf", "scf", "inf", "reg", "sct", "msh2xml", "xbap", "RDP"),
]


@pytest.mark.parametrize("ext", LAUNCHER_EXTENSIONS)
def test_dangerous_extension_refused_whatever_the_content(ext: str) -> None:
    candidate = Candidate(f"notes.{ext}", "text/plain", len(fm.PLAIN), fm.PLAIN)
    verdict = judge(candidate, AttachmentRules(), 1)
    assert (verdict.accepted, verdict.reason, verdict.sniffed_type) == (False, "executable", "text/plain")


def test_rtlo_name_is_shown_stripped() -> None:
    verdict = judge(Candidate("invoice\u202egpj.exe", "image/jpeg", 10, fm.jpeg()), AttachmentRules(), 1)
    assert verdict.filename == "invoicegpj.exe"
    assert verdict.reason == Reason.EXECUTABLE


@pytest.mark.parametrize(
    ("size", "accepted"),
    [(1, True), (MIB, True), (MIB + 1, False), (100 * MIB, False)],
)
def test_size_limit_exactly_at_and_one_over(size: int, accepted: bool) -> None:
    """F1: the decoded size is what counts; exactly the limit passes, one byte more is too large."""
    rules = AttachmentRules(max_bytes=MIB)
    verdict = judge(Candidate("report.pdf", "application/pdf", size, fm.pdf()), rules, 1)
    assert verdict.accepted is accepted
    assert verdict.reason == (None if accepted else "too_large")


def test_default_size_limit_is_25_mib() -> None:
    rules = AttachmentRules()
    head = fm.pdf()
    assert judge(Candidate("a.pdf", "application/pdf", 25 * MIB, head), rules, 1).accepted
    assert judge(Candidate("a.pdf", "application/pdf", 25 * MIB + 1, head), rules, 1).reason == "too_large"


def test_generated_names_follow_the_sniffed_type() -> None:
    rules = AttachmentRules()
    png = fm.png()
    inline = judge(Candidate(None, "image/png", len(png), png, content_id="<logo@x>"), rules, 2)
    assert inline.filename == "attachment-2.png"
    unknown = judge(Candidate(None, "application/octet-stream", 64, NOISE), rules, 7)
    assert unknown.filename == "attachment-7.bin"
    assert not unknown.accepted
    with pytest.raises(ValueError, match="1-based"):
        judge(Candidate(None, "image/png", len(png), png), rules, 0)


def test_declared_type_with_parameters_and_case() -> None:
    verdict = judge(Candidate(None, "Image/PNG; name=x.png", 100, fm.pdf()), AttachmentRules(), 1)
    assert verdict.reason == "type_mismatch"


# --------------------------------------------------------------------------- rules, count, messages


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": MIB - 1},
        {"max_bytes": 100 * MIB + 1},
        {"max_count": 0},
        {"allowed_types": frozenset({"Image/PNG"})},
    ],
)
def test_rules_refuse_out_of_range_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AttachmentRules(**kwargs)  # type: ignore[arg-type]


def test_rules_bounds_are_inclusive() -> None:
    assert AttachmentRules(max_bytes=MIB).max_bytes == MIB
    assert AttachmentRules(max_bytes=100 * MIB).max_bytes == 100 * MIB


def test_default_allowlist() -> None:
    for mime in (
        "application/pdf",
        "image/heic",
        "text/csv",
        att.DOCX,
        att.ODS,
        att.MSWORD,
        "application/x-tar",
    ):
        assert mime in DEFAULT_ALLOWED_TYPES
    for mime in (
        "text/html",
        "image/svg+xml",
        att.DOCM,
        "application/vnd.ms-powerpoint",
        "application/x-dosexec",
    ):
        assert mime not in DEFAULT_ALLOWED_TYPES


@pytest.mark.parametrize(
    ("n", "ok"), [(0, True), (1, True), (20, True), (21, False), (500, False), (-1, False)]
)
def test_check_count(n: int, ok: bool) -> None:
    """F8: 500 attachments exceed the cap; the pipeline answers for the whole message."""
    assert check_count(n, AttachmentRules()) is ok


def test_check_count_uses_the_practice_setting() -> None:
    assert check_count(5, AttachmentRules(max_count=5))
    assert not check_count(6, AttachmentRules(max_count=5))


def _refused(name: str, reason: Reason) -> Verdict:
    return Verdict(False, name, "application/octet-stream", reason.value, explain(reason))


def _ok(name: str) -> Verdict:
    return Verdict(True, name, "application/pdf", None, None)


def test_withheld_line_english() -> None:
    assert withheld_line([], "en") is None
    assert withheld_line([_ok("a.pdf")], "en") is None
    one = [_ok("a.pdf"), _refused("invoice.exe", Reason.TYPE_NOT_ALLOWED)]
    assert withheld_line(one, "en") == "1 attachment withheld: invoice.exe (type not allowed)"
    two = [_refused("a.exe", Reason.EXECUTABLE), _ok("b.pdf"), _refused("b.html", Reason.ACTIVE_CONTENT)]
    assert withheld_line(two, "en-GB") == (
        "2 attachments withheld: a.exe (program or script), b.html (web page or SVG image)"
    )


def test_withheld_line_french() -> None:
    one = [_refused("invoice.exe", Reason.TYPE_NOT_ALLOWED)]
    assert withheld_line(one, "fr") == "1 pièce jointe retenue : invoice.exe (type non autorisé)"
    two = [_refused("a.docm", Reason.MACRO_DOCUMENT), _refused("b.pdf", Reason.TOO_LARGE)]
    assert withheld_line(two, "fr_CA") == (
        "2 pièces jointes retenues : a.docm (document avec macros), b.pdf (trop volumineux)"
    )


def test_withheld_line_lists_ten_names_then_counts() -> None:
    many = [_refused(f"f{i}.exe", Reason.EXECUTABLE) for i in range(12)]
    english = withheld_line(many, "de")  # unknown locale: English
    assert english is not None
    assert english.startswith("12 attachments withheld: f0.exe (program or script)")
    assert english.endswith("f9.exe (program or script) and 2 more")
    french = withheld_line(many, "FR-fr")
    assert french is not None
    assert french.endswith("f9.exe (programme ou script) et 2 autres")


def test_every_reason_is_explained_in_both_languages() -> None:
    for reason in Reason:
        assert explain(reason, "en") and explain(reason, "fr")
        assert explain(reason, "en") != explain(reason, "fr")
    assert explain("some_future_code", "fr") == "some_future_code"
    assert withheld_line([Verdict(False, "x", "y", "some_future_code", None)], "en") == (
        "1 attachment withheld: x (some_future_code)"
    )


# --------------------------------------------------------------------------- compound files, whole


def judge_whole(data: bytes, filename: str, declared: str, rules: AttachmentRules | None = None) -> Verdict:
    """As the intake judges: the head for libmagic, and the whole content for a compound file."""
    candidate = Candidate(filename, declared, len(data), data[:HEAD_BYTES], content=io.BytesIO(data))
    return judge(candidate, rules or AttachmentRules(), 1)


@pytest.mark.parametrize(
    ("make", "filename", "sniffed"),
    [
        (lambda: fm.legacy_doc(directory_last=True, padding_sectors=40), "big.doc", att.MSWORD),
        (lambda: fm.legacy_xls(directory_last=True, padding_sectors=40), "ledger.xls", att.MSEXCEL),
    ],
)
def test_legacy_office_file_with_its_directory_past_the_head_is_named_and_accepted(
    make: Callable[[], bytes], filename: str, sniffed: str
) -> None:
    data = make()
    assert len(data) > HEAD_BYTES and sniff(data[:HEAD_BYTES]) == att.OLE_STORAGE  # the head alone cannot
    verdict = judge_whole(data, filename, "application/octet-stream")
    assert (verdict.accepted, verdict.sniffed_type, verdict.reason) == (True, sniffed, None)


def test_macros_named_past_the_head_are_found() -> None:
    data = fm.legacy_doc(macros=True, directory_last=True, padding_sectors=40)
    assert not att._ole_has_vba(data[:HEAD_BYTES])
    verdict = judge_whole(data, "letter.doc", att.MSWORD)
    assert (verdict.accepted, verdict.reason) == (False, Reason.MACRO_DOCUMENT)
    assert judge_whole(data, "letter.doc", att.MSWORD, MACROS_OK).accepted


@pytest.mark.parametrize("directory_last", [False, True])
def test_excel4_macro_sheet_makes_a_macro_document(directory_last: bool) -> None:
    """XLM macros live in the Workbook stream (a macro sheet), not in a VBA storage."""
    padding = 40 if directory_last else 0
    data = fm.legacy_xls(xlm=True, directory_last=directory_last, padding_sectors=padding)
    verdict = judge_whole(data, "ledger.xls", att.MSEXCEL)
    assert (verdict.accepted, verdict.reason) == (False, Reason.MACRO_DOCUMENT)
    assert judge_whole(data, "ledger.xls", att.MSEXCEL, MACROS_OK).accepted
    plain = fm.legacy_xls(directory_last=directory_last, padding_sectors=padding)
    assert judge_whole(plain, "ledger.xls", att.MSEXCEL).accepted


def test_installer_package_is_a_program_even_with_a_word_stream() -> None:
    verdict = judge_whole(fm.installer_package(), "invoice.doc", att.MSWORD)
    assert (verdict.accepted, verdict.sniffed_type, verdict.reason) == (
        False,
        "application/x-msi",
        "executable",
    )


@pytest.mark.parametrize("cut", [600, 4096, HEAD_BYTES + 100])
def test_broken_compound_file_keeps_the_heads_answer_and_the_read_position(cut: int) -> None:
    data = fm.legacy_doc(directory_last=True, padding_sectors=40)[:cut] + bytes(50)
    content = io.BytesIO(data)
    content.seek(123)
    candidate = Candidate("x.doc", att.MSWORD, len(data), data[:HEAD_BYTES], content=content)
    verdict = judge(candidate, AttachmentRules(), 1)
    assert not verdict.accepted
    assert content.tell() == 123  # the intake goes on reading from where it was


def test_intake_hands_the_whole_file_to_the_judge(tmp_path: Path) -> None:
    from mailbridge.domain.practice_settings import PracticeSettings
    from mailbridge.storage.blobs import LocalBlobStore
    from mailbridge.storage.intake import Upload, intake_uploads

    data = fm.legacy_xls(directory_last=True, padding_sectors=40)
    upload = Upload("Q3 ledger.xls", "application/vnd.ms-excel", io.BytesIO(data))
    intake = intake_uploads(LocalBlobStore(tmp_path), PracticeSettings(), [upload], "en")
    assert [(a.filename, a.content_type, a.size) for a in intake.accepted] == [
        ("Q3 ledger.xls", att.MSEXCEL, len(data))
    ]


class _FakeWorkbook:
    """Just enough of olefile.OleFileIO for the XLM scan of a Workbook stream bigger than 1 MiB."""

    def __init__(self, head: bytes, size: int) -> None:
        self.head, self.size = head, size
        self.direntries = {7: type("Entry", (), {"isectStart": 3})()}

    def exists(self, name: str) -> bool:
        return name == "Workbook"

    def get_size(self, name: str) -> int:
        return self.size

    def _find(self, name: str) -> int:
        return 7

    def _open(self, start: int, size: int) -> io.BytesIO:
        assert (start, size) == (3, 1024 * 1024)  # only the first MiB is read, never the whole stream
        return io.BytesIO(self.head[:size])


def test_excel4_scan_of_a_big_workbook_reads_one_mib_and_assumes_the_worst_past_it() -> None:
    big = 50 * 1024 * 1024
    macro = fm._biff_globals(xlm=True)
    assert att._excel4_macro_sheets(_FakeWorkbook(macro, big)) is True
    assert att._excel4_macro_sheets(_FakeWorkbook(fm._biff_globals(xlm=False), big)) is False
    # no EOF or SST within the first MiB: the sheet list may go on, so it counts as macros
    endless = fm._biff_globals(xlm=False)[:-4] + struct.pack("<HH", 0x0042, 2) * 400_000
    assert att._excel4_macro_sheets(_FakeWorkbook(endless, big)) is True
