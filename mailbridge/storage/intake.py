"""Both doors' files (email parts and app uploads) go through one check-then-store path."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mailbridge.domain.conversations import NewAttachment
from mailbridge.domain.errors import Invalid
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.attachments import AttachmentRules, Candidate, Verdict, judge, withheld_line
from mailbridge.storage.blobs import BlobStore

HEAD_BYTES = 8192
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Upload:
    """One received file: its declared name and type, and a readable, seekable body (often a temp file)."""

    filename: str | None
    content_type: str
    file: BinaryIO
    content_id: str | None = None
    path: Path | None = None  # a temporary file the blob store may take over instead of copying


@dataclass
class Intake:
    accepted: list[NewAttachment] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    locale: str = "en"

    @property
    def withheld(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.accepted]

    def with_withheld_line(self, body: str) -> str:
        """Withhold, don't drop silently: the message says which files did not come through and why."""
        line = withheld_line(self.verdicts, self.locale)
        if not line:
            return body
        return f"{body.rstrip()}\n\n{line}" if body.strip() else line

    def withheld_dicts(self) -> list[dict[str, str]]:
        return [
            {"filename": v.filename, "reason": v.reason or "", "explanation": v.explanation or ""}
            for v in self.withheld
        ]

    def log_details(self) -> list[dict[str, object]]:
        return [
            {
                "filename": v.filename,
                "accepted": v.accepted,
                "sniffed_type": v.sniffed_type,
                "reason": v.reason,
            }
            for v in self.verdicts
        ]


def rules_for(settings: PracticeSettings) -> AttachmentRules:
    return AttachmentRules(max_bytes=settings.attachment_max_bytes, max_count=settings.attachment_max_count)


def _size(handle: BinaryIO) -> int:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    handle.seek(0)
    while block := handle.read(CHUNK):
        yield block


class TooManyAttachments(Invalid):
    def __init__(self, limit: int) -> None:
        super().__init__("too_many_attachments", f"at most {limit} attachments per message", "attachments")


def _candidate(upload: Upload) -> Candidate:
    size = _size(upload.file)
    head = upload.file.read(HEAD_BYTES)
    return Candidate(
        raw_filename=upload.filename,
        declared_type=(upload.content_type or "application/octet-stream").split(";")[0].strip().lower(),
        size=size,
        head=head,
        content_id=upload.content_id,
        content=upload.file,
    )


def judge_uploads(settings: PracticeSettings, uploads: Sequence[Upload]) -> list[tuple[Verdict, str, int]]:
    """Each file's verdict, declared type and size, by the same rules, storing nothing (a staff preview)."""
    rules = rules_for(settings)
    judged = []
    for index, upload in enumerate(uploads, start=1):
        candidate = _candidate(upload)
        judged.append((judge(candidate, rules, index), candidate.declared_type, candidate.size))
        upload.file.seek(0)
    return judged


class AttachmentRefused(Invalid):
    """An app upload with a file the rules withhold: the uploader hears it (422) instead of a 201 whose
    body was rewritten. Email keeps its withheld line and notice: its sender cannot be asked to retry."""

    def __init__(self, refused: Sequence[Verdict]) -> None:
        first = refused[0]
        names = ", ".join(f"{v.filename} ({v.explanation or v.reason})" for v in refused)
        super().__init__(
            "attachment_refused",
            f"attachment refused: {names}; nothing was posted",
            "attachments",
            {
                "filename": first.filename,
                "reason": first.reason,
                "attachments": [
                    {"filename": v.filename, "reason": v.reason or "", "explanation": v.explanation or ""}
                    for v in refused
                ],
            },
        )


def intake_uploads(
    blobs: BlobStore,
    settings: PracticeSettings,
    uploads: Sequence[Upload],
    locale: str,
    practice_id: int | None = None,
    *,
    refuse_withheld: bool = False,
) -> Intake:
    """Judge every file by its bytes, store the accepted ones (content-addressed), report the rest.

    ``refuse_withheld``: the app's door. Every file passes the rules or nothing is posted
    (``AttachmentRefused``, 422), decided after judging them all and before storing any, so a
    refusal leaves no object behind. Email keeps its withheld line and notice: its sender cannot be
    asked to retry."""
    rules = rules_for(settings)
    if len(uploads) > rules.max_count:
        raise TooManyAttachments(rules.max_count)
    intake = Intake(locale=locale)
    candidates = []
    for index, upload in enumerate(uploads, start=1):
        candidate = _candidate(upload)
        intake.verdicts.append(judge(candidate, rules, index))
        candidates.append(candidate)
    if refuse_withheld and intake.withheld:
        raise AttachmentRefused(intake.withheld)
    for upload, candidate, verdict in zip(uploads, candidates, intake.verdicts, strict=True):
        if not verdict.accepted:
            continue
        if upload.path is not None:
            upload.file.close()
            stored = blobs.put_file(upload.path, practice_id)  # consumed: no second copy of a 100 MB file
        else:
            stored = blobs.put_stream(_chunks(upload.file), practice_id)
        intake.accepted.append(
            NewAttachment(
                filename=verdict.filename,
                content_type=verdict.sniffed_type,
                declared_type=candidate.declared_type,
                size=stored.size,
                sha256=stored.sha256,
                content_id=upload.content_id,
                storage_key=stored.ref or None,
            )
        )
    return intake
