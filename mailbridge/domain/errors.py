"""Domain errors with stable codes; the HTTP edge turns them into problem+json, the SMTP edge into replies."""

from __future__ import annotations


class DomainError(Exception):
    status = 400

    def __init__(
        self, code: str, detail: str, field: str | None = None, extra: dict[str, object] | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.extra = extra or {}  # more members of the problem document (RFC 9457 §3.2), e.g. who


class NotFound(DomainError):
    status = 404


class Invalid(DomainError):
    status = 422


class Forbidden(DomainError):
    status = 403


class Conflict(DomainError):
    status = 409


class Unreadable(DomainError):
    """The request's body cannot be read (not JSON): 400 ``invalid_json``."""

    status = 400


class UnsupportedMediaType(DomainError):
    """A body in a Content-Type the route does not read: 415 ``unsupported_media_type``."""

    status = 415


class Damaged(DomainError):
    """Stored content that is missing or fails authentication: a fault for the operator, never garbage."""

    status = 500


class Unavailable(DomainError):
    """A dependency (the object store) cannot be reached now: retry later."""

    status = 503
