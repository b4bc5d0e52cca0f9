"""IMAP mailboxes a practice's mail is fetched from: create or replace, list with their status, delete.

The password is write-only: accepted on PUT, stored, never returned (``has_password`` says whether
one is set). Prefer ``password_env``, the name of an environment variable read by the poller.

``auth: "oauth2"`` (Microsoft 365, Google, any token endpoint; ``ingress.oauth``): the ``oauth2``
object's secrets (client secret, refresh token, certificate key) are sealed with the practice's data
key and never returned (``secrets`` lists which are set); the token endpoint must be HTTPS on a
public address unless the operator allows private ones.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Invalid, NotFound
from mailbridge.domain.models import Mailbox, Practice
from mailbridge.inbound.envelope import decide_recipient, split_address
from mailbridge.ingress.imap import PROCESSED, REJECTED, PollerConfig, plaintext_allowed
from mailbridge.ingress.oauth import (
    PROVIDERS,
    EndpointNotAllowed,
    OAuthConfig,
    OAuthSecrets,
    check_endpoint,
    default_token_url,
    oauth_secret_purpose,
)
from mailbridge.wiring import Services

from .deps import ServicesDep

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["mailboxes"])

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.:-]{0,253}[A-Za-z0-9])?)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_SECRET_TEXT = Field(default=None, min_length=1, max_length=16384)


class OAuth2In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["microsoft", "google", "generic"]
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    client_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._~@:/-]+$")
    tenant: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9.-]+$")
    token_url: str | None = Field(default=None, max_length=512)  # default: the provider's
    scope: str | None = Field(default=None, max_length=512)  # default: the provider's
    # write-only: sealed, never returned; given together, they replace the stored ones
    client_secret: str | None = _SECRET_TEXT
    refresh_token: str | None = _SECRET_TEXT
    private_key_pem: str | None = _SECRET_TEXT  # Microsoft certificate credentials: the key…
    certificate_pem: str | None = _SECRET_TEXT  # …and its certificate (the x5t thumbprint)

    @field_validator("scope", "token_url")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("control characters are not allowed")
        return value


class OAuth2Out(BaseModel):
    provider: str
    mechanism: str
    client_id: str
    tenant: str | None
    token_url: str
    scope: str
    secrets: list[str]  # which secrets are set (client_secret, refresh_token, private_key_pem, …)


class MailboxIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auth: Literal["password", "oauth2"] = "password"
    oauth2: OAuth2In | None = None

    host: str = Field(min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 993 for tls, else 143
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1, max_length=320)
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    password: str | None = Field(default=None, min_length=1, max_length=255)
    folder: str = Field(default="INBOX", min_length=1, max_length=255)
    routing_address: str | None = Field(default=None, max_length=320)
    on_done: Literal["move", "flag"] = "move"
    trusted_authserv_id: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9.-]+$")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError("not a host name or IP address")
        return value.lower()

    @field_validator("username", "password", "folder")
    @classmethod
    def _no_control(cls, value: str | None) -> str | None:
        # CR/LF inside an IMAP argument would end the command line (command injection)
        if value is not None and _CONTROL.search(value):
            raise ValueError("control characters are not allowed")
        return value

    @field_validator("routing_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = split_address(value)
        if parts is None:
            raise ValueError("not an email address")
        return f"{parts[0]}@{parts[1]}"


class MailboxOut(BaseModel):
    name: str
    host: str
    port: int
    security: str
    username: str
    password_env: str | None
    has_password: bool
    auth: str
    oauth2: OAuth2Out | None
    folder: str
    routing_address: str | None
    on_done: str
    trusted_authserv_id: str | None
    status: str
    last_error: str | None
    last_uid: int
    uidvalidity: int | None
    updated_at: datetime | None


class MailboxList(BaseModel):
    items: list[MailboxOut]


def mailbox_out(row: Mailbox) -> MailboxOut:
    return MailboxOut(
        name=row.name,
        host=row.host,
        port=row.port,
        security=row.security,
        username=row.username,
        password_env=row.password_env,
        has_password=bool(row.password),
        auth=row.auth or "password",
        oauth2=OAuth2Out(**{k: v for k, v in row.oauth.items() if k in OAuth2Out.model_fields})
        if row.auth == "oauth2" and row.oauth
        else None,
        folder=row.folder,
        routing_address=row.routing_address,
        on_done=row.on_done,
        trusted_authserv_id=row.trusted_authserv_id,
        status=row.status,
        last_error=row.last_error,
        last_uid=row.last_uid or 0,
        uidvalidity=row.uidvalidity,
        updated_at=row.updated_at,
    )


def _get(session: Session, practice: Practice, name: str) -> Mailbox:
    row = session.scalar(select(Mailbox).where(Mailbox.practice_id == practice.id, Mailbox.name == name))
    if row is None:
        raise NotFound("mailbox_not_found", f"mailbox {name!r} not found")
    return row


def _validate(svc: Services, session: Session, practice: Practice, body: MailboxIn) -> None:
    if body.security == "none" and not plaintext_allowed(
        body.host, PollerConfig.from_settings(svc.settings).allow_plaintext
    ):
        raise Invalid(
            "plaintext_not_allowed",
            "security 'none' sends the password in clear: loopback hosts only",
            "security",
        )
    if body.on_done == "move" and body.folder.strip().lower() in (PROCESSED.lower(), REJECTED.lower()):
        raise Invalid("folder_reserved", f"{body.folder} is where processed mail is moved to", "folder")
    if body.routing_address:
        decision = decide_recipient(session, svc.tokens, svc.verp_secret, body.routing_address)
        if decision.target is None or decision.target.practice_id != practice.id:
            raise Invalid(
                "routing_address_unknown",
                "routing_address must be an address of this practice",
                "routing_address",
            )


def _oauth_config(svc: Services, body: OAuth2In) -> OAuthConfig:
    """The stored, non-secret half; the token endpoint checked like any URL a tenant gives us."""
    if body.provider == "microsoft" and not body.tenant:
        raise Invalid(
            "tenant_required", "Microsoft 365 needs the Entra ID tenant (id or domain)", "oauth2.tenant"
        )
    token_url = body.token_url or default_token_url(body.provider, body.tenant)
    if not token_url:
        raise Invalid("token_url_required", "a generic provider needs its token endpoint", "oauth2.token_url")
    try:
        check_endpoint(token_url, svc.settings.oauth_allow_private_endpoints)
    except EndpointNotAllowed as exc:
        raise Invalid("token_url_not_allowed", str(exc), "oauth2.token_url") from None
    return OAuthConfig(
        provider=body.provider,
        client_id=body.client_id,
        token_url=token_url,
        scope=body.scope if body.scope is not None else PROVIDERS[body.provider]["scope"],
        mechanism=body.mechanism,
        tenant=body.tenant,
    )


def _oauth_secrets(body: OAuth2In) -> OAuthSecrets | None:
    given = OAuthSecrets(body.client_secret, body.refresh_token, body.private_key_pem, body.certificate_pem)
    if not given.names():
        return None
    if bool(given.private_key_pem) != bool(given.certificate_pem):
        raise Invalid("certificate_incomplete", "give private_key_pem and certificate_pem together", "oauth2")
    if not (given.refresh_token or given.client_secret or given.private_key_pem):
        raise Invalid(
            "oauth_secret_required", "give a client secret, a certificate or a refresh token", "oauth2"
        )
    return given


def _apply_oauth(svc: Services, session: Session, practice: Practice, row: Mailbox, body: MailboxIn) -> None:
    if body.auth != "oauth2":
        row.auth, row.oauth, row.oauth_secret = "password", None, None
        return
    if body.oauth2 is None:
        raise Invalid("oauth2_required", "auth oauth2 needs the oauth2 object", "oauth2")
    config = _oauth_config(svc, body.oauth2)
    given = _oauth_secrets(body.oauth2)
    if given is not None:
        row.oauth_secret = svc.keyring.seal(
            session, practice.id, given.to_json(), oauth_secret_purpose(practice.id, row.name)
        )
        names = given.names()
    elif row.oauth_secret and row.oauth and row.auth == "oauth2":
        names = list(row.oauth.get("secrets", []))  # kept: secrets are write-only
    else:
        raise Invalid(
            "oauth_secret_required", "give a client secret, a certificate or a refresh token", "oauth2"
        )
    row.auth = "oauth2"
    row.oauth = {**config.__dict__, "secrets": names}
    row.password, row.password_env = None, None


@router.put("/mailboxes/{name}", response_model=MailboxOut)
def put_mailbox(
    practice: str, name: str, body: MailboxIn, svc: ServicesDep, response: Response
) -> MailboxOut:
    if not re.match(NAME_PATTERN, name):
        raise Invalid("invalid_name", "mailbox names are 1-64 letters, digits, '.', '_' or '-'", "name")
    if body.password is not None and body.password_env is not None:
        raise Invalid("password_ambiguous", "give password_env or password, not both", "password")
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        _validate(svc, session, p, body)
        row = session.scalar(select(Mailbox).where(Mailbox.practice_id == p.id, Mailbox.name == name))
        created = row is None
        if row is None:
            if body.auth == "password" and body.password is None and body.password_env is None:
                raise Invalid(
                    "password_required", "give password_env (preferred) or password", "password_env"
                )
            row = Mailbox(practice_id=p.id, name=name, last_uid=0, status="new")
            session.add(row)
        elif (row.host, row.username, row.folder) != (body.host, body.username, body.folder):
            # another mailbox or folder: its UIDs mean nothing here (RFC 3501 §2.3.1.1)
            row.last_uid, row.uidvalidity, row.status, row.last_error = 0, None, "new", None
        row.host, row.security = body.host, body.security
        row.port = body.port or (993 if body.security == "tls" else 143)
        row.username, row.folder = body.username, body.folder
        row.routing_address, row.on_done = body.routing_address, body.on_done
        row.trusted_authserv_id = body.trusted_authserv_id
        if body.password_env is not None:
            row.password_env, row.password = body.password_env, None
        elif body.password is not None:
            row.password_env, row.password = None, body.password
        _apply_oauth(svc, session, p, row, body)
        session.flush()
        response.status_code = 201 if created else 200
        return mailbox_out(row)


@router.get("/mailboxes", response_model=MailboxList)
def list_mailboxes(practice: str, svc: ServicesDep) -> MailboxList:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        rows = session.scalars(select(Mailbox).where(Mailbox.practice_id == p.id).order_by(Mailbox.name))
        return MailboxList(items=[mailbox_out(r) for r in rows])


@router.get("/mailboxes/{name}", response_model=MailboxOut)
def get_mailbox(practice: str, name: str, svc: ServicesDep) -> MailboxOut:
    with transaction(svc.sessions) as session:
        return mailbox_out(_get(session, directory.get_practice(session, practice), name))


@router.delete("/mailboxes/{name}", status_code=204)
def delete_mailbox(practice: str, name: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        session.delete(_get(session, directory.get_practice(session, practice), name))
    return Response(status_code=204)
