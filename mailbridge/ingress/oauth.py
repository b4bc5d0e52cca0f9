"""OAuth2 for polled IMAP mailboxes: access tokens from a token endpoint, SASL XOAUTH2 and OAUTHBEARER.

Microsoft 365 turned basic authentication off for IMAP and Google requires OAuth2 for most accounts,
so a mailbox may authenticate with ``auth = oauth2``:

* **Microsoft 365, app-only** (client-credentials grant, RFC 6749 §4.4): the practice's Entra ID
  tenant, an app registration's client id, and a client secret or a certificate (the client
  authenticates with a signed JWT assertion, RFC 7523, ``x5t`` naming the certificate); scope
  ``https://outlook.office365.com/.default``; the mailbox is the IMAP user name.
* **Google** (refresh-token grant, RFC 6749 §6): an OAuth client's id and secret and a refresh token
  granted once by the account's owner for the scope ``https://mail.google.com/``.
* **generic**: any token endpoint (either grant), for other providers and for tests.

Tokens are kept in memory per mailbox and fetched again a few minutes before they expire, and at
once after the server refuses one (a token revoked early); the secrets are sealed in the database
(``crypto.keyring``) and opened only here. The token endpoint is a URL a practice chooses, so it is
checked like any address the gateway is asked to reach: HTTPS, and no private, loopback or
link-local address unless the operator allows it (``oauth_allow_private_endpoints``).

httpx is the client: timeouts on every phase, TLS verification by default, no redirects followed
(a redirect to an internal host would sidestep the check above).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PROVIDERS: dict[str, dict[str, str]] = {
    "microsoft": {
        "token_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "scope": "https://outlook.office365.com/.default",
    },
    "google": {"token_url": "https://oauth2.googleapis.com/token", "scope": "https://mail.google.com/"},
    "generic": {"token_url": "", "scope": ""},
}
MECHANISMS = ("xoauth2", "oauthbearer")
REFRESH_MARGIN = 300.0  # seconds before expiry a token is replaced
HTTP_TIMEOUT = 15.0


class OAuthError(Exception):
    """The token endpoint refused or failed; the message names the OAuth error code, never a secret."""


class EndpointNotAllowed(ValueError):
    """A token endpoint the gateway must not reach (plain HTTP, or a private address)."""


@dataclass(frozen=True)
class OAuthConfig:
    """What is not secret: stored as JSON in ``mailboxes.oauth`` and returned by the API."""

    provider: str
    client_id: str
    token_url: str
    scope: str
    mechanism: str = "xoauth2"
    tenant: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OAuthConfig:
        return cls(
            provider=str(data.get("provider", "generic")),
            client_id=str(data.get("client_id", "")),
            token_url=str(data.get("token_url", "")),
            scope=str(data.get("scope", "")),
            mechanism=str(data.get("mechanism", "xoauth2")),
            tenant=data.get("tenant"),
        )


@dataclass(frozen=True)
class OAuthSecrets:
    """Sealed together in ``mailboxes.oauth_secret``: whichever the grant needs."""

    client_secret: str | None = None
    refresh_token: str | None = None
    private_key_pem: str | None = None
    certificate_pem: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in self.__dict__.items() if v}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> OAuthSecrets:
        data = json.loads(raw)
        return cls(
            **{
                k: data.get(k)
                for k in ("client_secret", "refresh_token", "private_key_pem", "certificate_pem")
            }
        )

    def names(self) -> list[str]:
        return sorted(k for k, v in self.__dict__.items() if v)


def oauth_secret_purpose(practice_id: int, mailbox_name: str) -> str:
    """The keyring purpose the sealed secrets are bound to: they open for this mailbox only."""
    return f"mailbox:{practice_id}:{mailbox_name}:oauth"


def default_token_url(provider: str, tenant: str | None) -> str:
    template = PROVIDERS[provider]["token_url"]
    return template.format(tenant=tenant or "") if template else ""


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def check_endpoint(url: str, allow_private: bool, resolve: bool = False) -> str:
    """The URL if the gateway may call it; ``EndpointNotAllowed`` with the reason otherwise.

    HTTPS only, except plain HTTP to a private host when the operator allows private endpoints (a
    provider on the same network, or a test). An IP literal is judged as is; a name, when
    *resolve* is set (at call time), by every address it resolves to."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise EndpointNotAllowed("token_url must be an https:// URL without credentials")
    addresses: list[str] = []
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host in ("localhost", "localhost.localdomain") or host.endswith((".localhost", ".internal")):
            addresses = ["127.0.0.1"]
        elif resolve:
            try:
                infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise EndpointNotAllowed(f"token_url host does not resolve: {exc}") from None
            addresses = sorted({str(info[4][0]) for info in infos})
    private = any(_private(a) for a in addresses)
    if private and not allow_private:
        raise EndpointNotAllowed("token_url points to a private, loopback or link-local address")
    if parts.scheme == "http" and not (private and allow_private):
        raise EndpointNotAllowed("token_url must be an https:// URL")
    return url


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def client_assertion(
    client_id: str, token_url: str, private_key_pem: str, certificate_pem: str, now: float | None = None
) -> str:
    """A signed JWT (RS256) proving the app holds its certificate's key (RFC 7523 §2.2; Microsoft's
    certificate credentials: ``x5t`` is the certificate's SHA-1 thumbprint, base64url)."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise OAuthError("the certificate's private key must be RSA")
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    thumbprint = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest()
    issued = int(now if now is not None else time.time())
    header = {"alg": "RS256", "typ": "JWT", "x5t": _b64url(thumbprint)}
    claims = {
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": secrets.token_hex(16),
        "nbf": issued,
        "iat": issued,
        "exp": issued + 600,
    }
    signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


def token_request(config: OAuthConfig, creds: OAuthSecrets) -> dict[str, str]:
    """The form to POST: a refresh-token grant when there is a refresh token, else client credentials."""
    form: dict[str, str] = {"client_id": config.client_id}
    if creds.refresh_token:
        form |= {"grant_type": "refresh_token", "refresh_token": creds.refresh_token}
    else:
        form["grant_type"] = "client_credentials"
    if config.scope:
        form["scope"] = config.scope
    if creds.private_key_pem and creds.certificate_pem:
        form |= {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(
                config.client_id, config.token_url, creds.private_key_pem, creds.certificate_pem
            ),
        }
    elif creds.client_secret:
        form["client_secret"] = creds.client_secret
    return form


@dataclass
class TokenSource:
    """One mailbox's access token: cached, replaced before expiry, and at once after a refusal."""

    config: OAuthConfig
    load_secrets: Callable[[], Awaitable[OAuthSecrets]]
    allow_private: bool = False
    clock: Callable[[], float] = time.time
    transport: httpx.AsyncBaseTransport | None = None  # tests only
    fetches: int = 0
    _token: str | None = None
    _expires: float = 0.0
    _refresh_token: str | None = None  # a rotated one the endpoint returned (kept in memory)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def invalidate(self) -> None:
        self._token = None

    async def token(self, force: bool = False) -> str:
        async with self._lock:
            if force:
                self._token = None
            if self._token is not None and self.clock() < self._expires - REFRESH_MARGIN:
                return self._token
            token, lifetime = await self._fetch()
            self._token = token
            self._expires = self.clock() + lifetime
            return token

    async def _fetch(self) -> tuple[str, float]:
        url = check_endpoint(self.config.token_url, self.allow_private, resolve=True)
        creds = await self.load_secrets()
        if self._refresh_token:
            creds = OAuthSecrets(
                creds.client_secret, self._refresh_token, creds.private_key_pem, creds.certificate_pem
            )
        form = token_request(self.config, creds)
        self.fetches += 1
        try:
            async with httpx.AsyncClient(
                timeout=HTTP_TIMEOUT, follow_redirects=False, transport=self.transport
            ) as client:
                response = await client.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OAuthError(f"token endpoint unreachable: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            code = str(body.get("error", "")) if isinstance(body, dict) else ""
            raise OAuthError(f"token endpoint answered {response.status_code} {code[:60]}".strip())
        if body.get("refresh_token"):
            self._refresh_token = str(body["refresh_token"])
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return str(body["access_token"]), max(lifetime, 0.0)


def xoauth2_response(user: str, token: str) -> bytes:
    """Google's and Microsoft's SASL XOAUTH2 initial response (before base64)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer_response(user: str, host: str, port: int, token: str) -> bytes:
    """RFC 7628 §3.1: a GS2 header naming the user (``=`` and ``,`` escaped, RFC 5801), then
    key/value pairs separated by ^A."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def initial_response(mechanism: str, user: str, host: str, port: int, token: str) -> str:
    raw = (
        oauthbearer_response(user, host, port, token)
        if mechanism == "oauthbearer"
        else xoauth2_response(user, token)
    )
    return base64.b64encode(raw).decode("ascii")


# After an error challenge the client must answer before the server says NO: an empty response for
# XOAUTH2 (Google's documentation), a single ^A for OAUTHBEARER (RFC 7628 §3.2.3).
ERROR_ANSWER = {"xoauth2": "", "oauthbearer": base64.b64encode(b"\x01").decode("ascii")}
