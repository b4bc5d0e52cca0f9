"""A practice's own settings, validated: limits, notification content, sender-proof strictness."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mailbridge.domain.validators import check_colour, check_email

ContentMode = Literal["full", "minimal"]
SELECTOR_PATTERN = (
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


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
    attachment_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024 * 1024, le=100 * 1024 * 1024)
    attachment_max_count: int = Field(default=20, ge=0, le=500)
    message_max_bytes: int | None = Field(default=None, ge=1024 * 1024)
    notify_content: NotifyContent = NotifyContent()
    group_privacy: bool = True
    reply_by_email: bool = True
    reply_local_template: str = Field(default="reply+{token}", pattern=r"^[a-z0-9._-]*[+.-]?\{token\}$")
    sender_auth: Literal["from_match", "aligned_required"] = "from_match"
    note_marker: str = "#note"
    # Where postmaster@/abuse@ of the practice's own domains are forwarded: an addr-spec, nothing
    # that could add a header or a second recipient.
    operator_address: Annotated[str, AfterValidator(check_email)] | None = None
    notify_delay_seconds: int = Field(default=0, ge=0, le=3600)
    # A DNS name (RFC 6376 §3.1): it also names the key's file, so never a path ("../other/…").
    dkim_selector: str | None = Field(default=None, max_length=63, pattern=SELECTOR_PATTERN)
    # Accent colour of notification HTML: #rgb or #rrggbb only (never CSS: issue 11 #5).
    brand_color: Annotated[str, AfterValidator(check_colour)] | None = None

    @property
    def effective_message_max_bytes(self) -> int:
        """Base64 grows a file by ~37 %; leave room for every allowed attachment plus text, capped."""
        if self.message_max_bytes is not None:
            return self.message_max_bytes
        return int(self.attachment_max_bytes * 1.37) + 2 * 1024 * 1024
