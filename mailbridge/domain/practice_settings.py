"""A practice's own settings, validated: limits, notification content, sender-proof strictness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ContentMode = Literal["full", "minimal"]

ATTACHMENT_MAX_BYTES = 100 * 1024 * 1024  # the largest attachment_max_bytes a practice may choose


def _room_for(attachment_bytes: int) -> int:
    """Base64 grows a file by ~37 %; leave room for an attachment that size plus text."""
    return int(attachment_bytes * 1.37) + 2 * 1024 * 1024


# The server-wide limit: what EHLO advertises as SIZE (RFC 1870) and the DATA reader enforces. A
# practice's own limit can only be smaller (finding 10: a practice's value used to replace it).
SERVER_MAX_MESSAGE_BYTES = _room_for(ATTACHMENT_MAX_BYTES)


class NotifyContent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    company: ContentMode = "full"
    confidential: ContentMode = "minimal"
    private: ContentMode = "minimal"
    direct: ContentMode = "full"


class PracticeSettings(BaseModel):
    """Defaults applied for missing keys; unknown keys are kept for forward compatibility."""

    model_config = ConfigDict(extra="allow")

    min_body_chars: int = Field(default=1, ge=0, le=10_000)
    attachment_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024 * 1024, le=ATTACHMENT_MAX_BYTES)
    attachment_max_count: int = Field(default=20, ge=0, le=500)
    message_max_bytes: int | None = Field(default=None, ge=1024 * 1024, le=SERVER_MAX_MESSAGE_BYTES)
    notify_content: NotifyContent = NotifyContent()
    group_privacy: bool = True
    reply_by_email: bool = True
    reply_local_template: str = Field(default="reply+{token}", pattern=r"^[a-z0-9._-]*[+.-]?\{token\}$")
    sender_auth: Literal["from_match", "aligned_required"] = "from_match"
    note_marker: str = "#note"
    operator_address: str | None = None
    notify_delay_seconds: int = Field(default=0, ge=0, le=3600)
    dkim_selector: str | None = None

    @property
    def effective_message_max_bytes(self) -> int:
        """The practice's own limit, or room for its largest attachment; never past the server's."""
        own = (
            self.message_max_bytes
            if self.message_max_bytes is not None
            else _room_for(self.attachment_max_bytes)
        )
        return min(own, SERVER_MAX_MESSAGE_BYTES)
