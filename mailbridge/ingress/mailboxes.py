"""IMAP mailboxes a practice's mail is fetched from: validated create or replace, and delete.

One implementation for the HTTP API and the console (never a second copy of these rules).

The password is write-only: accepted on PUT, sealed with the practice's data key, never returned
(``has_password`` says whether one is set). ``password_env`` names an environment variable and is
accepted only when the operator lists it in ``imap_password_envs`` (issue 11 #5). The host must be
public unless the operator allows private hosts (``imap_allow_private_hosts``); it is checked here
and again on every connection. A new host needs the credentials again: a stored password never
follows the mailbox to another server.

``auth: "oauth2"`` (Microsoft 365, Google, any token endpoint; ``ingress.oauth``): the ``oauth2``
object's secrets (client secret, refresh token, certificate key) are sealed with the practice's data
key and never returned (``secrets`` lists which are set); the token endpoint must be HTTPS on a
public address unless the operator allows private ones. A new host or token endpoint needs the
secrets again, as a new host needs the password again.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.access.credentials import check_env_allowed, seal_password
from mailbridge.access.egress import EgressPolicy, EgressRefused
from mailbridge.domain.errors import Invalid, NotFound
from mailbridge.domain.models import Mailbox, Practice, utcnow
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
    polled_by: str | None = None  # the node holding the mailbox's lease (host:pid:nonce), if any


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
        has_password=bool(row.password_sealed or row.password),
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
        polled_by=row.lease_holder if row.lease_until is not None and row.lease_until > utcnow() else None,
    )


def get_mailbox(session: Session, practice: Practice, name: str) -> Mailbox:
    row = session.scalar(select(Mailbox).where(Mailbox.practice_id == practice.id, Mailbox.name == name))
    if row is None:
        raise NotFound("mailbox_not_found", f"mailbox {name!r} not found")
    return row


def _check_host(svc: Services, host: str) -> None:
    """Refused when the host is or resolves to a non-public address; a name that does not resolve
    now is accepted (the poller checks again at every connection and shows the error)."""
    policy = EgressPolicy(svc.resolver, svc.settings.imap_allow_private_hosts)
    try:
        policy.addresses(host)
    except EgressRefused as exc:
        if exc.code == "host_not_public":
            raise Invalid("host_not_public", str(exc), "host") from None


def _validate(svc: Services, session: Session, practice: Practice, body: MailboxIn) -> None:
    _check_host(svc, body.host)
    if body.password_env is not None:
        check_env_allowed(body.password_env, svc.settings.imap_password_envs)
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


def _apply_oauth(
    svc: Services, session: Session, practice: Practice, row: Mailbox, body: MailboxIn, moved: bool
) -> None:
    """``moved``: the host changed; with the token endpoint, stored secrets never follow a move."""
    if body.auth != "oauth2":
        row.auth, row.oauth, row.oauth_secret = "password", None, None
        return
    if body.oauth2 is None:
        raise Invalid("oauth2_required", "auth oauth2 needs the oauth2 object", "oauth2")
    config = _oauth_config(svc, body.oauth2)
    given = _oauth_secrets(body.oauth2)
    stored = row.oauth if row.auth == "oauth2" and row.oauth else None
    if given is not None:
        row.oauth_secret = svc.keyring.seal(
            session, practice.id, given.to_json(), oauth_secret_purpose(practice.id, row.name)
        )
        names = given.names()
    elif row.oauth_secret and stored and not moved and stored.get("token_url") == config.token_url:
        names = list(stored.get("secrets", []))  # kept: secrets are write-only
    else:
        raise Invalid(
            "oauth_secret_required",
            "give a client secret, a certificate or a refresh token (a new host or token endpoint needs "
            "them again)",
            "oauth2",
        )
    row.auth = "oauth2"
    row.oauth = {**config.__dict__, "secrets": names}
    row.password, row.password_env, row.password_sealed = None, None, None


def upsert_mailbox(
    svc: Services, session: Session, practice: Practice, name: str, body: MailboxIn
) -> tuple[Mailbox, bool]:
    """Create or replace a practice's mailbox; returns the row and whether it was created."""
    if not re.match(NAME_PATTERN, name):
        raise Invalid("invalid_name", "mailbox names are 1-64 letters, digits, '.', '_' or '-'", "name")
    if body.password is not None and body.password_env is not None:
        raise Invalid("password_ambiguous", "give password_env or password, not both", "password")
    _validate(svc, session, practice, body)
    row = session.scalar(select(Mailbox).where(Mailbox.practice_id == practice.id, Mailbox.name == name))
    created = row is None
    moved = row is not None and row.host != body.host
    given = body.password is not None or body.password_env is not None
    if body.auth == "password" and not given and (row is None or moved):
        raise Invalid(
            "password_required",
            "give the password (stored encrypted) or an allowed password_env; a new host needs them again",
            "password",
        )
    if body.auth == "password" and row is not None and not given and row.password_env:
        check_env_allowed(row.password_env, svc.settings.imap_password_envs)
    if row is None:
        row = Mailbox(practice_id=practice.id, name=name, last_uid=0, status="new")
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
        row.password_env, row.password, row.password_sealed = body.password_env, None, None
    elif body.password is not None:
        sealed = seal_password(session, svc.keyring, practice.id, name, body.password)
        row.password_env, row.password, row.password_sealed = None, None, sealed
    _apply_oauth(svc, session, practice, row, body, moved)
    session.flush()
    return row, created


def delete_mailbox(session: Session, practice: Practice, name: str) -> None:
    session.delete(get_mailbox(session, practice, name))
