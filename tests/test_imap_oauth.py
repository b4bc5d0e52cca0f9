"""IMAP mailboxes over OAuth2 against a real Dovecot whose ``oauth2`` passdb asks an introspection
endpoint (RFC 7662) run by the test on loopback, beside the token endpoint that issues the tokens.

Microsoft 365 app-only (client credentials with a secret or a certificate) over XOAUTH2, Google's
refresh token over OAUTHBEARER, a token revoked early replaced after the refusal, expiry ahead of
time, secrets sealed and never returned, and a token endpoint on an internal address refused
through the API (SSRF).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from mailbridge.domain.models import Mailbox
from mailbridge.ingress.oauth import OAuthConfig, OAuthSecrets, TokenSource, check_endpoint
from mailbridge.wiring import Services
from tests.conftest import API_KEY, make_services, seed
from tests.dovecot import Dovecot, running_dovecot
from tests.mailhelpers import add_client
from tests.oauthpeer import OAuthPeer
from tests.test_imap import (
    CLIENT,
    FAST,
    Running,
    inbound,
    mail,
    mailbox_row,
    posts,
    run,
    until,
)

BASE = "/api/v1/practices/acme"
SECRET = "app-secret-Zq81"
REFRESH = "refresh-token-Kx42"


@pytest.fixture(scope="module")
def peer() -> Iterator[OAuthPeer]:
    server = OAuthPeer(clients={"m365-app": SECRET, "google-client": SECRET}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oauth_dovecot(peer: OAuthPeer) -> Iterator[Dovecot]:
    with running_dovecot(oauth2_introspection=f"{peer.url}/introspect") as server:
        yield server


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    services = make_services(
        tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}", oauth_allow_private_endpoints=True
    )
    seed(services)
    add_client(services, "erin", CLIENT, name="Erin Client")
    yield services
    services.close()


@pytest.fixture
def api(svc: Services) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    with TestClient(create_app(svc), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture
def user(oauth_dovecot: Dovecot, peer: OAuthPeer, request: pytest.FixtureRequest) -> str:
    name = f"{request.node.name[:40]}@imap.test"
    oauth_dovecot.add_user(name, "no-password-login-here")
    peer.app_user = name  # app-only tokens open this mailbox (Exchange's mailbox permission)
    peer.refresh[REFRESH] = name
    return name


@pytest.fixture
def token_address(svc: Services) -> str:
    from tests.mailhelpers import open_conversation, reply_address

    conversation = open_conversation(
        svc, kind="company", company="bakery", participants=("erin",), subject="Your invoice"
    )
    return reply_address(svc, conversation, "erin")


def put_mailbox(api: Any, dovecot: Dovecot, user: str, oauth2: dict[str, Any], name: str = "m365") -> Any:
    return api.put(
        f"{BASE}/mailboxes/{name}",
        json={
            "host": "127.0.0.1",
            "port": dovecot.port,
            "security": "none",
            "username": user,
            "auth": "oauth2",
            "oauth2": oauth2,
        },
    )


def self_signed() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailbridge-imap")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def test_microsoft_app_only_secret_over_xoauth2_posts_and_never_returns_the_secret(
    svc: Services, api: Any, oauth_dovecot: Dovecot, peer: OAuthPeer, user: str, token_address: str
) -> None:
    created = put_mailbox(
        api,
        oauth_dovecot,
        user,
        {
            "provider": "microsoft",
            "tenant": "contoso.onmicrosoft.com",
            "client_id": "m365-app",
            "client_secret": SECRET,
            "token_url": f"{peer.url}/token",
        },
    )
    assert created.status_code == 201, created.text
    listed = api.get(f"{BASE}/mailboxes/m365").json()
    assert listed["auth"] == "oauth2" and listed["oauth2"]["secrets"] == ["client_secret"]
    assert listed["oauth2"]["scope"] == "https://outlook.office365.com/.default"
    assert SECRET not in created.text + json.dumps(listed)
    with svc.sessions() as session:
        row = session.scalars(select(Mailbox)).one()
        assert row.oauth_secret is not None and SECRET not in row.oauth_secret and row.password is None

    async def scenario() -> None:
        running = Running(svc, FAST)
        oauth_dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: oauth_dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1 and inbound(svc)[0].door == "imap"
    grant = peer.requests[-1]
    assert grant["grant_type"] == "client_credentials" and grant["scope"].endswith("/.default")


def test_google_refresh_token_over_oauthbearer(
    svc: Services, api: Any, oauth_dovecot: Dovecot, peer: OAuthPeer, user: str, token_address: str
) -> None:
    response = put_mailbox(
        api,
        oauth_dovecot,
        user,
        {
            "provider": "google",
            "mechanism": "oauthbearer",
            "client_id": "google-client",
            "client_secret": SECRET,
            "refresh_token": REFRESH,
            "token_url": f"{peer.url}/token",
        },
        name="gmail",
    )
    assert response.status_code == 201, response.text
    assert REFRESH not in response.text

    async def scenario() -> None:
        running = Running(svc, FAST)
        oauth_dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: oauth_dovecot.count(user, "Processed") == 1, what="the mail in Processed")
        await running.stop()

    run(scenario)
    assert posts(svc) == 1
    grant = peer.requests[-1]
    assert (grant["grant_type"], grant["refresh_token"], grant["scope"]) == (
        "refresh_token",
        REFRESH,
        "https://mail.google.com/",
    )


def test_a_token_revoked_early_is_replaced_after_the_refusal(
    svc: Services, api: Any, oauth_dovecot: Dovecot, peer: OAuthPeer, user: str, token_address: str
) -> None:
    assert (
        put_mailbox(
            api,
            oauth_dovecot,
            user,
            {
                "provider": "generic",
                "client_id": "m365-app",
                "client_secret": SECRET,
                "token_url": f"{peer.url}/token",
            },
        ).status_code
        == 201
    )

    async def scenario() -> None:
        running = Running(svc, FAST)
        oauth_dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: oauth_dovecot.count(user, "Processed") == 1, what="the first mail")
        poller = next(iter(running.pollers.running.values())).poller
        assert poller.tokens is not None and poller.tokens.fetches == 1
        peer.revoke_all()  # an administrator revokes the app's tokens
        oauth_dovecot.kick(user)  # and the provider drops the session: the poller reconnects
        oauth_dovecot.deliver(user, mail(delivered_to=token_address, body="Second one, also paid."))
        await until(lambda: oauth_dovecot.count(user, "Processed") == 2, what="the second mail")
        assert poller.tokens.fetches == 2  # the cached token was refused once, a fresh one worked
        assert mailbox_row(svc, poller.mailbox.id).status == "ok"
        await running.stop()

    run(scenario)
    assert posts(svc) == 2


def test_certificate_credentials_and_a_wrong_secret(
    svc: Services, api: Any, oauth_dovecot: Dovecot, peer: OAuthPeer, user: str, token_address: str
) -> None:
    key_pem, cert_pem = self_signed()
    peer.certificates["cert-app"] = cert_pem.encode()
    good = put_mailbox(
        api,
        oauth_dovecot,
        user,
        {
            "provider": "microsoft",
            "tenant": "contoso",
            "client_id": "cert-app",
            "private_key_pem": key_pem,
            "certificate_pem": cert_pem,
            "token_url": f"{peer.url}/token",
        },
        name="cert",
    )
    assert good.status_code == 201 and "PRIVATE KEY" not in good.text
    bad = put_mailbox(
        api,
        oauth_dovecot,
        user,
        {
            "provider": "generic",
            "client_id": "m365-app",
            "client_secret": "wrong-9931",
            "token_url": f"{peer.url}/token",
        },
        name="wrong",
    )
    assert bad.status_code == 201

    async def scenario() -> None:
        running = Running(svc, FAST)
        oauth_dovecot.deliver(user, mail(delivered_to=token_address))
        await until(lambda: oauth_dovecot.count(user, "Processed") == 1, what="the certificate mailbox")
        with svc.sessions() as session:
            wrong = session.scalars(select(Mailbox).where(Mailbox.name == "wrong")).one()
        await until(lambda: mailbox_row(svc, wrong.id).status == "auth_failed", what="auth_failed")
        await running.stop()

    run(scenario)
    with svc.sessions() as session:
        wrong = session.scalars(select(Mailbox).where(Mailbox.name == "wrong")).one()
        assert "invalid_client" in (wrong.last_error or "") and "wrong-9931" not in (wrong.last_error or "")
    assert any(r.get("client_assertion") for r in peer.requests)


def test_tokens_are_replaced_before_they_expire(peer: OAuthPeer) -> None:
    now = [1_000_000.0]
    source = TokenSource(
        OAuthConfig("generic", "m365-app", f"{peer.url}/token", "mail"),
        load_secrets=_secrets(OAuthSecrets(client_secret=SECRET)),
        allow_private=True,
        clock=lambda: now[0],
    )

    async def scenario() -> None:
        first = await source.token()
        now[0] += 3000  # an hour's token, 10 minutes left: still used
        assert await source.token() == first
        now[0] += 400  # within the refresh margin: replaced ahead of time
        assert await source.token() != first

    asyncio.run(scenario())
    assert source.fetches == 2


def _secrets(value: OAuthSecrets) -> Any:
    async def load() -> OAuthSecrets:
        return value

    return load


def test_a_token_endpoint_on_an_internal_address_is_refused_through_the_api(tmp_path: Path) -> None:
    """The attack: a practice points its mailbox's token endpoint at the cloud metadata service or
    an internal host, so the gateway would POST there (SSRF). Refused unless the operator allows it."""
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'mailbridge.db'}")
    seed(services)
    with TestClient(create_app(services), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        for url in (
            "http://169.254.169.254/latest/meta-data/iam",
            "https://10.0.0.7/token",
            "https://127.0.0.1:8443/token",
            "https://[::1]/token",
            "https://metadata.internal/token",
            "http://login.example.com/token",  # not HTTPS
            "https://user:pw@login.example.com/token",
        ):
            response = api.put(
                f"{BASE}/mailboxes/evil",
                json={
                    "host": "imap.example.com",
                    "username": "desk@example.com",
                    "auth": "oauth2",
                    "oauth2": {
                        "provider": "generic",
                        "client_id": "x",
                        "client_secret": "y",
                        "token_url": url,
                    },
                },
            )
            assert (response.status_code, response.json().get("code")) == (422, "token_url_not_allowed"), url
        missing = api.put(
            f"{BASE}/mailboxes/evil",
            json={
                "host": "imap.example.com",
                "username": "desk@example.com",
                "auth": "oauth2",
                "oauth2": {"provider": "microsoft", "client_id": "x", "client_secret": "y"},
            },
        )
        assert missing.json()["code"] == "tenant_required"
    assert check_endpoint("https://login.microsoftonline.com/contoso/oauth2/v2.0/token", False)
    services.close()
