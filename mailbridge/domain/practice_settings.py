"""A practice's own settings, validated: limits, notification content, sender-proof strictness.

Writes are merges (JSON Merge Patch, RFC 7396): a key left out of a write keeps its stored value,
``null`` removes it (its default applies again), and an object such as ``notify_content`` (or
``external_content``) is merged key by key the same way. A directory sync that only knows some keys cannot reset the others.
Only the keys a practice set are stored, so a default that changes in a later version applies to
every practice that never chose otherwise.

``dkim_selector`` is not a setting any more: the practice's signing keys live in the ``dkim_keys``
table (``mailbridge dkim …``). The API still shows it among the settings (the active RSA selector)
and accepts it in a write only unchanged; see ``domain.directory.upsert_practice``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from mailbridge.domain.links import check_app_url, check_link_path
from mailbridge.domain.validators import check_email

ContentMode = Literal["full", "minimal"]

#: ``#rgb`` or ``#rrggbb``, nothing else: the colour goes into CSS, where escaping does not protect.
BRAND_COLOR = r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"
DEFAULT_BRAND_COLOR = "#3b6ea5"
FOOTER_MAX_CHARS = 500
FOOTER_MAX_LINES = 6
_FOOTER_FORBIDDEN = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

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


class ExternalContent(BaseModel):
    """What an external agent's notification shows, per conversation kind (issue 19, seed 003).

    Their notification is the only way they read, but they are outside the practice: minimal
    everywhere unless the practice allows more (typically ``company``). No ``direct`` key: external
    agents never take part in direct channels."""

    model_config = ConfigDict(extra="forbid")
    company: ContentMode = "minimal"
    confidential: ContentMode = "minimal"
    private: ContentMode = "minimal"

    def mode(self, kind: str) -> ContentMode:
        found: ContentMode = getattr(self, kind, "minimal")
        return found


class PracticeSettings(BaseModel):
    """Defaults applied for missing keys; unknown keys are kept for forward compatibility."""

    model_config = ConfigDict(extra="allow")

    min_body_chars: int = Field(default=1, ge=0, le=10_000)
    attachment_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024 * 1024, le=ATTACHMENT_MAX_BYTES)
    attachment_max_count: int = Field(default=20, ge=0, le=500)
    message_max_bytes: int | None = Field(default=None, ge=1024 * 1024, le=SERVER_MAX_MESSAGE_BYTES)
    notify_content: NotifyContent = NotifyContent()
    external_content: ExternalContent = ExternalContent()
    group_privacy: bool = True
    reply_by_email: bool = True
    reply_local_template: str = Field(default="reply+{token}", pattern=r"^[a-z0-9._-]*[+.-]?\{token\}$")
    sender_auth: Literal["from_match", "aligned_required"] = "from_match"
    note_marker: str = "#note"
    # Where postmaster@/abuse@ of the practice's own domains are forwarded: an addr-spec, nothing
    # that could add a header or a second recipient.
    operator_address: Annotated[str, AfterValidator(check_email)] | None = None
    notify_delay_seconds: int = Field(default=0, ge=0, le=3600)
    # The practice's identity in its notifications (issue 18): an accent colour, a postal/contact
    # footer in plain text (escaped wherever shown), and whether minimal notifications and notices
    # show the practice at all (From name, logo, footer): true by default, since the practice chose
    # its name; false names nobody, for a practice whose name reveals a specialty. The logo is an
    # image uploaded with PUT …/logo, not a setting.
    brand_color: str | None = Field(default=None, pattern=BRAND_COLOR)
    footer: str | None = Field(default=None, max_length=FOOTER_MAX_CHARS)
    minimal_shows_practice: bool = True
    # The practice's own portal (issue 20, item 13): its notifications link there instead of the
    # operator's app_url / link paths. https only (http to localhost); see domain/links.py.
    app_url: str | None = None
    conversation_link_path: str | None = None
    preferences_link_path: str | None = None

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, value: str | None) -> str | None:
        return None if value is None else check_app_url(value, allow_http=False)

    @field_validator("conversation_link_path")
    @classmethod
    def _conversation_path(cls, value: str | None) -> str | None:
        return None if value is None else check_link_path(value, placeholder=True)

    @field_validator("preferences_link_path")
    @classmethod
    def _preferences_path(cls, value: str | None) -> str | None:
        return None if value is None else check_link_path(value, placeholder=False)

    @field_validator("footer")
    @classmethod
    def _footer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.replace("\r\n", "\n").strip()
        if _FOOTER_FORBIDDEN.search(value):
            raise ValueError("plain text only: no control or bidirectional-override characters")
        if value.count("\n") >= FOOTER_MAX_LINES:
            raise ValueError(f"at most {FOOTER_MAX_LINES} lines")
        return value or None

    @property
    def effective_brand_color(self) -> str:
        return self.brand_color or DEFAULT_BRAND_COLOR

    @property
    def footer_lines(self) -> list[str]:
        return [line.strip() for line in (self.footer or "").split("\n") if line.strip()]

    @property
    def effective_message_max_bytes(self) -> int:
        """The practice's own limit, or room for its largest attachment; never past the server's."""
        own = (
            self.message_max_bytes
            if self.message_max_bytes is not None
            else _room_for(self.attachment_max_bytes)
        )
        return min(own, SERVER_MAX_MESSAGE_BYTES)


#: Objects nested deeper than this in a settings write are refused: no setting needs more than two
#: levels, and the merge recurses once per level.
MAX_DEPTH = 16


def merge_patch(stored: dict[str, Any], patch: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """RFC 7396 section 2 applied to two JSON objects: omitted keys kept, ``null`` removes, objects
    merged recursively, anything else replaced. Neither argument is modified. Raises ValueError
    past :data:`MAX_DEPTH` levels.

    Written out rather than taken from a package: it is the RFC's ten-line pseudo-code, and the
    packages that implement it either also implement RFC 6902 or are unmaintained.
    """
    if depth >= MAX_DEPTH:
        raise ValueError(f"objects nested more than {MAX_DEPTH} levels deep")
    merged = dict(stored)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            merged[key] = merge_patch(current if isinstance(current, dict) else {}, value, depth + 1)
        else:
            merged[key] = value
    return merged


# The settings of the practices mail recently arrived for, by their stored JSON text. Keyed on the
# content itself, read in the statement that needs it: a change made on any node is a different
# text, so it applies to the very next message there, with nothing to invalidate. Validating the
# same few hundred bytes again at every RCPT and every run cost more than the statement reading
# them (issue 17 item 4). The models are shared, never modified in place (writes build new ones).
_BY_TEXT: dict[str, PracticeSettings] = {}
_BY_TEXT_MAX = 512  # practices of one deployment with mail in flight; past it, start over


def settings_from_json(text: str | None) -> PracticeSettings:
    """The validated settings for a practice's stored ``settings`` JSON text (as ``CAST(settings AS
    TEXT)`` returns it), from the cache when this exact text was seen before."""
    key = text or "{}"
    found = _BY_TEXT.get(key)
    if found is None:
        found = PracticeSettings.model_validate(json.loads(key) or {})
        if len(_BY_TEXT) >= _BY_TEXT_MAX:
            _BY_TEXT.clear()  # a plain dict: get/set/clear are atomic under the GIL, no lock needed
        _BY_TEXT[key] = found
    return found
