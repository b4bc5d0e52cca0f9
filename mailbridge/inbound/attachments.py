"""Attachment verdicts: size and count limits, real type by content, and safe display names."""

from __future__ import annotations

import contextlib
import re
import struct
import threading
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO

import magic
import olefile

__all__ = [
    "DEFAULT_ALLOWED_TYPES",
    "HEAD_BYTES",
    "MAX_ALLOWED_BYTES",
    "MIN_ALLOWED_BYTES",
    "AttachmentRules",
    "Candidate",
    "Reason",
    "Verdict",
    "check_count",
    "explain",
    "judge",
    "sanitize_filename",
    "sniff",
    "withheld_line",
]

HEAD_BYTES = 8192
"""How much of the decoded content callers put in `Candidate.head`.

libmagic needs more than 2 KB to recognise some real OOXML files (openpyxl's .xlsx is `application/zip`
at 2 KB) and a legacy OLE2 document only once its directory sector is in the buffer."""

MIB = 1024 * 1024
MIN_ALLOWED_BYTES = 1 * MIB
MAX_ALLOWED_BYTES = 100 * MIB

# --------------------------------------------------------------------------- type vocabulary


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
DOCM = "application/vnd.ms-word.document.macroenabled.12"
XLSM = "application/vnd.ms-excel.sheet.macroenabled.12"
PPTM = "application/vnd.ms-powerpoint.presentation.macroenabled.12"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
ODP = "application/vnd.oasis.opendocument.presentation"
MSWORD = "application/msword"
MSEXCEL = "application/vnd.ms-excel"
OLE_STORAGE = "application/x-ole-storage"
EMPTY = "application/x-empty"
OCTET_STREAM = "application/octet-stream"

_IMAGES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/heic",
        "image/heif",
        "image/heic-sequence",
        "image/heif-sequence",
        "image/tiff",
        "image/webp",
    }
)
_TEXTS = frozenset({"text/plain", "text/csv", "text/calendar"})
_OFFICE = frozenset({DOCX, XLSX, PPTX, ODT, ODS, ODP, MSWORD, MSEXCEL})
_MACRO_OFFICE = frozenset({DOCM, XLSM, PPTM})
_ARCHIVES = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-7z-compressed",
        "application/x-rar",
        "application/vnd.rar",
        "application/x-tar",
    }
)

DEFAULT_ALLOWED_TYPES: frozenset[str] = (
    frozenset({"application/pdf"}) | _IMAGES | _TEXTS | _OFFICE | _ARCHIVES
)
"""Archives are stored as opaque blobs and never unpacked. Legacy PowerPoint is left out on purpose:
its VBA lives inside a compressed stream that cannot be seen from the head."""

# Refused whatever the allowlist says: programs, and scripts an OS or interpreter would run.
_EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-executable",
        "application/x-sharedlib",
        "application/x-pie-executable",
        "application/x-mach-binary",
        "application/x-object",
        "application/x-elf",
        "application/x-ms-shortcut",
        "application/x-msi",
        "application/x-ms-installer",
        "application/x-java-applet",
        "application/java-archive",
        "application/x-java-archive",
        "application/x-bytecode.python",
        "application/vnd.ms-htmlhelp",
        "application/x-shellscript",
        "application/javascript",
        "application/x-javascript",
        "application/x-php",
        "application/x-powershell",
        "text/javascript",
        "text/x-shellscript",
        "text/x-perl",
        "text/x-php",
        "text/x-python",
        "text/x-ruby",
        "text/x-lua",
        "text/x-tcl",
        "text/x-awk",
        "text/x-nawk",
        "text/x-gawk",
        "text/x-msdos-batch",
        "text/x-powershell",
        "text/x-vbscript",
    }
)
_ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "image/svg",
        "application/x-shockwave-flash",
        "application/vnd.adobe.flash.movie",
        "application/hta",
    }
)
# libmagic calls some ordinary prose "source code" (a `#include` or `/*` is enough): it is text.
_SOURCE_TEXTS = frozenset(
    {
        "text/x-c",
        "text/x-c++",
        "text/x-java",
        "text/x-makefile",
        "text/x-asm",
        "text/x-tex",
        "text/x-diff",
        "text/x-fortran",
        "text/x-pascal",
        "text/x-m4",
        "text/x-po",
        "text/x-objective-c",
        "text/x-bibtex",
        "text/x-info",
        "text/x-texinfo",
        "text/troff",
    }
)

# Refused whatever the content: the OS picks the handler from the extension alone, so a plain-text
# file can be a launcher (an .rdp connects the reader's drives to a stranger's server, an .iqy or
# .slk makes Excel fetch and run a formula, a .url or .website opens any address, a
# .settingcontent-ms or .library-ms runs a command). The lists are Outlook's Level 1 blocked types
# (Microsoft's "Blocked attachments in Outlook", as OWA ships them), Gmail's blocked types, and the
# script, shortcut and installer types of the platforms our readers use. An unknown extension makes
# no claim of its own: only the content decides for it.
_EXECUTABLE_EXTENSIONS = _words(
    """
    exe bat cmd com scr pif cpl msi msp mst msc msu lnk url scf inf reg hta chm jar jnlp
    js jse vbs vbe vb vbp wsf wsh wsc ws ps1 ps1xml ps2 ps2xml psc1 psc2 psd1 psm1 psdm1 pssc cdxml
    msh msh1 msh2 mshxml msh1xml msh2xml sh bash csh ksh zsh command
    py pyw pyc pyo pyz pyzw pl php rb applescript scpt app gadget dll ocx sys drv xll wll one onepkg
    appx appxbundle msix msixbundle appinstaller appref-ms appcontent-ms application xbap
    library-ms settingcontent-ms searchconnector-ms search-ms iso img vhd vhdx desktop
    ade adp asp aspx asx bas bgi cab cer crt der cnt diagcab diagcfg diagpack fxp grp hlp hpj htc
    ins isp its mad maf mag mam maq mar mas mat mau mav maw mcf mda mdb mde mdt mdw mdz
    ops osd pcd plg prf prg printerexport pst sct shb shs theme themepack deskthemepack tmp
    udl vsmacros vsw webpnp website wsb xnk
    rdp iqy dqy oqy rqy slk
    apk dmg pkg mpkg deb rpm terminal fileloc webloc inetloc workflow action job mof
    """
)
_ACTIVE_EXTENSIONS = _words("html htm xhtml xht shtml shtm mht mhtml svg svgz xsl xslt swf")
_MACRO_EXTENSIONS = _words("docm dotm xlsm xltm xlam xlsb xla pptm potm ppam ppsm sldm")

# Families, to tell a harmless confusion (a PNG named .jpg) from a contradiction (a zip named .jpg).
_EXTENSION_FAMILY: dict[str, str] = {
    **dict.fromkeys(_words("pdf"), "pdf"),
    **dict.fromkeys(_words("jpg jpeg jpe jfif png gif heic heif tif tiff webp bmp"), "image"),
    **dict.fromkeys(_words("txt text csv tsv ics ical ifb vcs log md"), "text"),
    **dict.fromkeys(_words("doc dot docx dotx xls xlt xlsx xltx ppt pot pps pptx potx ppsx rtf"), "office"),
    **dict.fromkeys(_words("odt ott ods ots odp otp"), "office"),
    **dict.fromkeys(_words("zip gz tgz gzip 7z rar tar"), "archive"),
}
_DECLARED_FAMILY: dict[str, str] = {
    **dict.fromkeys(_words("application/pdf application/x-pdf application/acrobat"), "pdf"),
    **dict.fromkeys(_TEXTS | _words("text/x-csv text/comma-separated-values application/csv"), "text"),
    **dict.fromkeys(
        _OFFICE | _MACRO_OFFICE | _words("application/vnd.ms-powerpoint application/rtf"), "office"
    ),
    **dict.fromkeys(
        _ARCHIVES | _words("application/x-zip-compressed application/x-zip application/x-rar-compressed"),
        "archive",
    ),
}
_BENIGN_CONFUSIONS = frozenset(
    {
        ("office", "archive"),  # OOXML and ODF are zip files; a short head may show only that
        ("archive", "office"),
        ("office", "text"),  # Windows declares .csv files as application/vnd.ms-excel
    }
)

_EXTENSION_FOR_TYPE: dict[str, str] = {
    "application/pdf": "pdf",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
    "image/heic-sequence": "heic",
    "image/heif-sequence": "heif",
    "image/tiff": "tiff",
    "image/webp": "webp",
    "text/plain": "txt",
    "text/csv": "csv",
    "text/calendar": "ics",
    DOCX: "docx",
    XLSX: "xlsx",
    PPTX: "pptx",
    DOCM: "docm",
    XLSM: "xlsm",
    PPTM: "pptm",
    ODT: "odt",
    ODS: "ods",
    ODP: "odp",
    MSWORD: "doc",
    MSEXCEL: "xls",
    "application/zip": "zip",
    "application/gzip": "gz",
    "application/x-gzip": "gz",
    "application/x-7z-compressed": "7z",
    "application/x-rar": "rar",
    "application/vnd.rar": "rar",
    "application/x-tar": "tar",
}


# --------------------------------------------------------------------------- rules and results


class Reason(StrEnum):
    """Stable reason codes, stored with each withheld attachment."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    EXECUTABLE = "executable"
    ACTIVE_CONTENT = "active_content"
    MACRO_DOCUMENT = "macro_document"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    TYPE_MISMATCH = "type_mismatch"


_EXPLANATIONS: dict[str, dict[Reason, str]] = {
    "en": {
        Reason.EMPTY: "empty file",
        Reason.TOO_LARGE: "too large",
        Reason.EXECUTABLE: "program or script",
        Reason.ACTIVE_CONTENT: "web page or SVG image",
        Reason.MACRO_DOCUMENT: "document with macros",
        Reason.TYPE_NOT_ALLOWED: "type not allowed",
        Reason.TYPE_MISMATCH: "content does not match its name or type",
    },
    "fr": {
        Reason.EMPTY: "fichier vide",
        Reason.TOO_LARGE: "trop volumineux",
        Reason.EXECUTABLE: "programme ou script",
        Reason.ACTIVE_CONTENT: "page web ou image SVG",
        Reason.MACRO_DOCUMENT: "document avec macros",
        Reason.TYPE_NOT_ALLOWED: "type non autorisé",
        Reason.TYPE_MISMATCH: "contenu différent du nom ou du type annoncé",
    },
}


def _language(locale: str) -> str:
    lang = locale.strip().lower().replace("_", "-").split("-")[0]
    return lang if lang in _EXPLANATIONS else "en"


def explain(reason: str, locale: str = "en") -> str:
    """The short human text for a reason code in `locale` (English for unknown locales).

    An unknown code (say, one stored by a later version) is returned as it is."""
    try:
        return _EXPLANATIONS[_language(locale)][Reason(reason)]
    except ValueError:
        return reason


@dataclass(frozen=True)
class AttachmentRules:
    """Per-practice attachment policy.

    `allowed_types` cannot let through what is refused on its own grounds (programs, scripts,
    HTML/SVG, macro documents, dangerous extensions); macro documents need `allow_macro_office`.
    """

    max_bytes: int = 25 * MIB  # per attachment, allowed 1 MiB..100 MiB
    max_count: int = 20
    allowed_types: frozenset[str] = DEFAULT_ALLOWED_TYPES
    allow_macro_office: bool = False

    def __post_init__(self) -> None:
        if not MIN_ALLOWED_BYTES <= self.max_bytes <= MAX_ALLOWED_BYTES:
            raise ValueError(f"max_bytes must be within {MIN_ALLOWED_BYTES}..{MAX_ALLOWED_BYTES}")
        if self.max_count < 1:
            raise ValueError("max_count must be at least 1")
        if any(t != t.strip().lower() for t in self.allowed_types):
            raise ValueError("allowed_types must be lower-case MIME types without parameters")


@dataclass(frozen=True)
class Candidate:
    """One attachment as received (from MIME or an upload)."""

    raw_filename: str | None  # as declared (already RFC 2231/2047-decoded by the parser), may be hostile
    declared_type: str  # Content-Type as declared, lower-case
    size: int  # decoded size in bytes
    head: bytes  # the first HEAD_BYTES of the decoded content, for sniffing
    content_id: str | None = None  # inline images referenced by cid:
    # The whole decoded content, seekable, when the caller has it: a legacy Office file (OLE2) is
    # only named by its directory, which a large .xls or .doc often keeps at the end of the file.
    content: BinaryIO | None = None


@dataclass(frozen=True)
class Verdict:
    """The answer for one attachment. `reason` is a `Reason` code; `explanation` its English text."""

    accepted: bool
    filename: str  # sanitised display name (generated if none, e.g. "attachment-1.pdf")
    sniffed_type: str
    reason: str | None
    explanation: str | None


# --------------------------------------------------------------------------- filenames

_WINDOWS_RESERVED = re.compile(r"(?i)^(con|prn|aux|nul|conin\$|conout\$|(com|lpt)[0-9¹²³])$")
_WINDOWS_FORBIDDEN = str.maketrans(dict.fromkeys('<>:"|?*', "_"))
_DRIVE = re.compile(r"^[A-Za-z]:")
# Long enough for the longest listed extension (".searchconnector-ms" is 18): a shorter cap made
# ".settingcontent-ms" no extension at all, so it passed the denylist.
_EXTENSION = re.compile(r"\.([^.\s]{1,32})$")
_MIN_NAME_LEN = 16


def _drop_invisible(text: str) -> str:
    """Any whitespace becomes a space; control, format (bidi, zero-width) and surrogate characters go."""
    out = []
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) in ("Zl", "Zp"):
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs"):
            out.append(ch)
    return "".join(out)


def _trim(text: str) -> str:
    return text.strip(" .")


def sanitize_filename(name: str | None, max_len: int = 150) -> str | None:
    """A display name safe to show and to offer for download, or None when nothing usable is left.

    Keeps the last path component (`/` and `\\` both separate; a drive prefix goes), drops control,
    format (bidi overrides and isolates, zero-width) and surrogate characters, replaces characters
    Windows forbids with `_`, collapses whitespace and runs of dots, strips leading and trailing dots
    and spaces (Windows ignores trailing ones: `a.exe.` runs as `a.exe`), prefixes Windows device
    names with `_` (`CON.txt` → `_CON.txt`), caps the length in code points keeping the extension,
    and NFC-normalises. The result is a display name only: blobs are stored under their hash.
    """
    if name is None:
        return None
    if max_len < _MIN_NAME_LEN:
        raise ValueError(f"max_len must be at least {_MIN_NAME_LEN}")
    text = _drop_invisible(unicodedata.normalize("NFC", name))
    components = [c for c in re.split(r"[/\\]", text) if _trim(c)]
    if not components:
        return None
    text = _DRIVE.sub("", components[-1]).translate(_WINDOWS_FORBIDDEN)
    text = re.sub(r" {2,}", " ", text)
    text = _trim(re.sub(r"\.{2,}", ".", text))
    if not text:
        return None
    if _WINDOWS_RESERVED.match(text.split(".")[0].rstrip(" ")):
        text = "_" + text
    if len(text) > max_len:
        match = _EXTENSION.search(text)
        ext = match.group(0) if match and len(match.group(0)) <= max_len // 2 else ""
        text = _trim(text[: max_len - len(ext)]) + ext
    text = unicodedata.normalize("NFC", text)
    return text or None


def _extension(filename: str) -> str | None:
    match = _EXTENSION.search(filename)
    return match.group(1).lower() if match else None


# --------------------------------------------------------------------------- sniffing

_local = threading.local()


def _magic() -> magic.Magic:
    # One libmagic handle per thread: a handle is not thread-safe and python-magic serialises
    # calls on it with a lock, so sharing one would make the threads queue.
    handle: magic.Magic | None = getattr(_local, "magic", None)
    if handle is None:
        handle = magic.Magic(mime=True)
        _local.magic = handle
    return handle


@dataclass(frozen=True)
class _Sniffed:
    mime: str
    macros: bool = False


def sniff(head: bytes) -> str:
    """The MIME type of content, from its first bytes: libmagic, then the corrections it needs.

    Corrections: zip heads are opened (local headers only, nothing beyond the head is read) to tell
    OOXML and ODF documents, and their macro-enabled variants, from plain zips; text that a browser
    would render as HTML or SVG is reported as such; prose libmagic calls source code is text/plain.
    """
    return _inspect(head).mime


def _inspect(head: bytes) -> _Sniffed:
    if not head:
        return _Sniffed(EMPTY)
    try:
        mime = _magic().from_buffer(head).split(";")[0].strip().lower()
    except magic.MagicException:  # libmagic gave up on these bytes: nothing to vouch for
        mime = OCTET_STREAM
    if head.startswith(b"PK\x03\x04"):
        return _inspect_zip(head, mime)
    if head.startswith(_OLE_MAGIC):
        return _Sniffed(mime, macros=_ole_has_vba(head))
    if mime in _SOURCE_TEXTS:
        mime = "text/plain"
    if mime in ("text/plain", "text/xml", "application/xml"):
        mime = _markup_type(head) or mime
    return _Sniffed(mime)


# ZIP local file header (APPNOTE.TXT 4.3.7): signature, version, flags, method, time, date,
# crc-32, compressed size, uncompressed size, name length, extra length.
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_INFLATE_CAP = 64 * 1024


@dataclass(frozen=True)
class _ZipMember:
    name: str
    payload: bytes | None  # the raw member data when it lies entirely within the head


def _zip_members(head: bytes) -> list[_ZipMember]:
    members: list[_ZipMember] = []
    pos = 0
    while pos + _LOCAL_HEADER.size <= len(head) and head[pos : pos + 4] == b"PK\x03\x04":
        _, _, flags, method, _, _, _, csize, _, name_len, extra_len = _LOCAL_HEADER.unpack_from(head, pos)
        name_start = pos + _LOCAL_HEADER.size
        data_start = name_start + name_len + extra_len
        if data_start > len(head):
            break
        name = head[name_start : name_start + name_len].decode("utf-8", "replace")
        sizes_known = not flags & 0x08 and csize != 0xFFFFFFFF
        payload = None
        if sizes_known and data_start + csize <= len(head):
            payload = _member_payload(head[data_start : data_start + csize], method)
        members.append(_ZipMember(name, payload))
        if sizes_known:
            pos = data_start + csize
        else:  # sizes follow the data (data descriptor): look for the next header instead
            pos = head.find(b"PK\x03\x04", data_start)
            if pos < 0:
                break
    return members


def _member_payload(data: bytes, method: int) -> bytes | None:
    if method == 0:
        return data[:_INFLATE_CAP]
    if method == 8:
        try:  # bounded: a bomb inflates to _INFLATE_CAP bytes at most
            return zlib.decompressobj(-15).decompress(data, _INFLATE_CAP)
        except zlib.error:
            return None
    return None


_OVERRIDE = re.compile(r"<(?:Override|Default)\b[^>]*?ContentType=\"([^\"]+)\"", re.IGNORECASE)


def _inspect_zip(head: bytes, mime: str) -> _Sniffed:
    members = _zip_members(head)
    names = [m.name for m in members]
    lower = [n.lower() for n in names]
    by_name = {m.name: m.payload for m in members}

    odf_type = by_name.get("mimetype")
    if odf_type is not None and odf_type.startswith(b"application/vnd.oasis.opendocument."):
        macros = any(n.startswith(("basic/", "scripts/")) for n in lower)
        return _Sniffed(odf_type.decode("ascii", "replace").strip().lower(), macros)
    if mime.startswith("application/vnd.oasis.opendocument."):
        return _Sniffed(mime, any(n.startswith(("basic/", "scripts/")) for n in lower))

    kind: str | None = None
    macros = any(n.endswith("vbaproject.bin") for n in lower)
    content_types = by_name.get("[Content_Types].xml")
    if content_types is not None:
        for ct in _OVERRIDE.findall(content_types.decode("utf-8", "replace")):
            ct = ct.lower()
            if "vbaproject" in ct:
                macros = True
            if ct.endswith((".main+xml", ".main")):
                macros = macros or "macroenabled" in ct
                kind = kind or _office_kind(ct)
    is_ooxml = (
        content_types is not None
        or "[content_types].xml" in lower
        or "_rels/.rels" in lower
        or any(n.startswith("docprops/") for n in lower)
        or mime in (DOCX, XLSX, PPTX)
    )
    if is_ooxml and kind is None:
        for n in lower:
            kind = {"word": "word", "xl": "excel", "ppt": "powerpoint"}.get(n.split("/")[0])
            if kind:
                break
    if kind is None and mime in (DOCX, XLSX, PPTX):
        kind = {DOCX: "word", XLSX: "excel", PPTX: "powerpoint"}[mime]
    if not is_ooxml or kind is None:
        return _Sniffed(mime, macros and is_ooxml)
    plain, macro_type = {"word": (DOCX, DOCM), "excel": (XLSX, XLSM), "powerpoint": (PPTX, PPTM)}[kind]
    return _Sniffed(macro_type if macros else plain, macros)


def _office_kind(content_type: str) -> str | None:
    if "wordprocessingml" in content_type or "ms-word" in content_type:
        return "word"
    if "spreadsheetml" in content_type or "ms-excel" in content_type:
        return "excel"
    if "presentationml" in content_type or "ms-powerpoint" in content_type:
        return "powerpoint"
    return None


# Names of the storages and streams that hold VBA in Word ("Macros") and Excel ("_VBA_PROJECT_CUR").
_VBA_NAMES = frozenset({"macros", "_vba_project_cur", "vba", "_vba_project"})


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Root-level streams that name a legacy Office document (MS-DOC, MS-XLS: "Book" is Excel 5/95).
_COMPOUND_TYPES = (("worddocument", MSWORD), ("workbook", MSEXCEL), ("book", MSEXCEL))
# Root storage CLSIDs of Windows Installer packages, patches and transforms: programs, whatever
# streams they also carry.
_INSTALLER_CLSIDS = frozenset(f"000C108{digit}-0000-0000-C000-000000000046" for digit in ("2", "4", "6"))


def _inspect_compound(content: BinaryIO, from_head: _Sniffed) -> _Sniffed:
    """Name a compound file by its whole directory, read with olefile through the seekable content.

    libmagic and :func:`_ole_has_vba` see only the head; this reads the header, the FAT and the
    directory chain wherever they lie (olefile seeks, it does not load the file). Only a file libmagic
    could not name (``application/x-ole-storage``) is named here, from its root streams; an installer
    package is recognised by its root CLSID; macros found in either place count. A file olefile
    cannot read keeps what the head said: unnamed compound files are withheld, never waved through.
    """
    position = content.tell()
    try:
        content.seek(0)
        ole = olefile.OleFileIO(content)
        try:
            entries = ole.listdir(streams=True, storages=True)
            root_clsid = (ole.root.clsid or "").upper() if ole.root is not None else ""
            roots = {entry[0].lower() for entry in entries if entry}
            named = next((kind for stream, kind in _COMPOUND_TYPES if stream in roots), OLE_STORAGE)
            mime = from_head.mime if from_head.mime != OLE_STORAGE else named
            macros = any(part.lower() in _VBA_NAMES for entry in entries for part in entry)
            if mime == MSEXCEL and not macros:
                try:
                    macros = _excel4_macro_sheets(ole)
                except Exception:  # a workbook stream that cannot be read is not vouched for
                    macros = True
        finally:
            ole.close()  # olefile >= 0.47 leaves a file object handed in open
    except Exception:  # malformed or hostile: olefile raises many kinds; the head's answer stands
        return from_head
    finally:
        with contextlib.suppress(OSError, ValueError):
            content.seek(position)
    if root_clsid in _INSTALLER_CLSIDS:
        return _Sniffed("application/x-msi", macros=True)
    # libmagic's own name (from the head) is kept; olefile only names what it could not.
    return _Sniffed(mime, macros=macros or from_head.macros)


_XLM_SCAN_BYTES = 1024 * 1024
_BIFF_BOUNDSHEET, _BIFF_SST, _BIFF_EOF = 0x0085, 0x00FC, 0x000A
_BIFF_MACRO_SHEET = 0x01


def _excel4_macro_sheets(ole: Any) -> bool:
    """Whether an Excel 97-2003 (or 5/95) workbook has an Excel 4.0 macro sheet (XLM macros).

    XLM macros live in the Workbook stream itself, not in a VBA storage: the workbook globals list
    every sheet in a BOUNDSHEET record whose sixth byte is the sheet type, 1 for a macro sheet
    (MS-XLS 2.4.28). The list comes before the shared strings (SST) and the globals' EOF, so the
    scan stops there, and reads at most 1 MiB of the stream; a globals part longer than that is
    treated as holding macros rather than read further.
    """
    for name in ("Workbook", "Book"):
        if not ole.exists(name):
            continue
        size = int(ole.get_size(name))
        if size <= _XLM_SCAN_BYTES:
            data = ole.openstream(name).read()
        else:  # olefile reads a whole stream into memory: open only its first sectors
            entry = ole.direntries[ole._find(name)]
            data = ole._open(entry.isectStart, _XLM_SCAN_BYTES).read()
        pos = 0
        while pos + 4 <= len(data):
            kind, length = struct.unpack_from("<HH", data, pos)
            body = data[pos + 4 : pos + 4 + length]
            if kind == _BIFF_BOUNDSHEET and len(body) >= 6 and body[5] == _BIFF_MACRO_SHEET:
                return True
            if kind in (_BIFF_SST, _BIFF_EOF):
                return False
            pos += 4 + length
        return size > _XLM_SCAN_BYTES  # cut short before the sheet list ended: assume the worst
    return False


def _ole_has_vba(head: bytes) -> bool:
    """Whether a compound file's directory, as far as the head shows it, names a VBA project.

    Directory entries (MS-CFB 2.6) are 128 bytes long and start on 128-byte boundaries after the
    512-byte header; each holds a UTF-16LE name, its length in bytes (with the NUL) and a type
    (1 storage, 2 stream). libmagic names a Word or Excel file only after reading the whole
    directory chain, so when it did, this scan saw every entry.
    """
    for off in range(512, len(head) - 127, 128):
        name_len = int.from_bytes(head[off + 64 : off + 66], "little")
        if not 4 <= name_len <= 64 or name_len % 2 or head[off + 66] not in (1, 2):
            continue
        name = head[off : off + name_len - 2].decode("utf-16-le", "replace").lower()
        if name in _VBA_NAMES:
            return True
    return False


# The WHATWG MIME sniffing standard's "HTML" patterns: what a browser renders as a page.
_HTML_STARTS = (
    "<!doctype html",
    *sorted(_words("<html <head <script <iframe <h1 <div <font <table <a <style")),
)
_HTML_STARTS += tuple(sorted(_words("<title <b <body <br <p <!--")))
_TAG_END = frozenset(" >\t\n\r\x0c/")


def _markup_type(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head[: HEAD_BYTES + 2].decode("utf-16", "ignore")
    else:
        text = head.removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    text = text.lstrip("\ufeff\t\n\x0c\r ").lower()
    if text.startswith("<?xml"):
        if "<svg" in text:
            return "image/svg+xml"
        if "<html" in text:
            return "application/xhtml+xml"
        return None
    if text.startswith(("<svg", "<!doctype svg")):
        return "image/svg+xml"
    for tag in _HTML_STARTS:
        if text.startswith(tag) and text[len(tag) : len(tag) + 1] in _TAG_END:
            return "text/html"
    return None


# --------------------------------------------------------------------------- verdicts


def check_count(n: int, rules: AttachmentRules) -> bool:
    """Whether a message may carry `n` attachments (inline images included)."""
    return 0 <= n <= rules.max_count


def _family_of_type(mime: str) -> str | None:
    if mime == "application/pdf":
        return "pdf"
    if mime.startswith("image/"):
        return "image"
    if mime in _TEXTS:
        return "text"
    if mime in _OFFICE or mime in _MACRO_OFFICE or mime.startswith("application/vnd.oasis.opendocument."):
        return "office"
    if mime in _ARCHIVES:
        return "archive"
    return None


def _declared_family(declared: str) -> str | None:
    if declared.startswith("image/"):
        return "image"
    return _DECLARED_FAMILY.get(declared)


def _contradicts(claimed: str | None, actual: str | None) -> bool:
    if claimed is None or actual is None:
        return False
    return claimed != actual and (claimed, actual) not in _BENIGN_CONFUSIONS


def judge(candidate: Candidate, rules: AttachmentRules, index: int) -> Verdict:
    """Accept or withhold one attachment. `index` is its 1-based position, used for generated names.

    Checks, first failure wins: empty (zero bytes: withheld, there is nothing to deliver and no
    content to vouch for), too large, a program or script by content, HTML/SVG by content, a
    dangerous extension whatever the content, an active-content extension, a macro document (by
    content or extension, unless the practice allows them), a type outside the allowlist, and a
    contradiction between the content's family (image, pdf, text, office, archive) and the family
    its extension or declared type claims. Same-family differences (a PNG named .jpg) pass: the
    sniffed type is the one to store and serve.
    """
    if index < 1:
        raise ValueError("index is 1-based")
    sniffed = _inspect(candidate.head)
    if candidate.content is not None and candidate.head.startswith(_OLE_MAGIC):
        sniffed = _inspect_compound(candidate.content, sniffed)
    mime = sniffed.mime
    filename = sanitize_filename(candidate.raw_filename) or (
        f"attachment-{index}.{_EXTENSION_FOR_TYPE.get(mime, 'bin')}"
    )
    ext = _extension(filename)
    declared = candidate.declared_type.split(";")[0].strip().lower()

    def refuse(reason: Reason) -> Verdict:
        return Verdict(False, filename, mime, reason.value, explain(reason))

    if candidate.size == 0:
        return refuse(Reason.EMPTY)
    if candidate.size > rules.max_bytes:
        return refuse(Reason.TOO_LARGE)
    if mime in _EXECUTABLE_TYPES or mime.startswith("text/x-script."):
        return refuse(Reason.EXECUTABLE)
    if mime in _ACTIVE_TYPES:
        return refuse(Reason.ACTIVE_CONTENT)
    if ext in _EXECUTABLE_EXTENSIONS:
        return refuse(Reason.EXECUTABLE)
    if ext in _ACTIVE_EXTENSIONS:
        return refuse(Reason.ACTIVE_CONTENT)
    is_macro = sniffed.macros or mime in _MACRO_OFFICE or ext in _MACRO_EXTENSIONS
    if is_macro and not rules.allow_macro_office:
        return refuse(Reason.MACRO_DOCUMENT)
    if mime not in rules.allowed_types and not (mime in _MACRO_OFFICE and rules.allow_macro_office):
        return refuse(Reason.TYPE_NOT_ALLOWED)
    actual = _family_of_type(mime)
    claims = (_EXTENSION_FAMILY.get(ext or ""), _declared_family(declared))
    if any(_contradicts(claim, actual) for claim in claims):
        return refuse(Reason.TYPE_MISMATCH)
    return Verdict(True, filename, mime, None, None)


_LISTED_NAMES = 10


def withheld_line(verdicts: Sequence[Verdict], locale: str) -> str | None:
    """One line telling which attachments were withheld and why, or None when none was.

    "2 attachments withheld: a.exe (program or script), b.html (web page or SVG image)"
    "1 pièce jointe retenue : invoice.exe (type non autorisé)". Lists at most ten names.
    """
    refused = [v for v in verdicts if not v.accepted]
    if not refused:
        return None
    lang = _language(locale)
    items = ", ".join(f"{v.filename} ({explain(v.reason or '?', lang)})" for v in refused[:_LISTED_NAMES])
    n, more = len(refused), len(refused) - _LISTED_NAMES
    if lang == "fr":
        head = "1 pièce jointe retenue" if n == 1 else f"{n} pièces jointes retenues"
        tail = f" et {more} autres" if more > 0 else ""
        return f"{head} : {items}{tail}"
    head = "1 attachment withheld" if n == 1 else f"{n} attachments withheld"
    tail = f" and {more} more" if more > 0 else ""
    return f"{head}: {items}{tail}"
