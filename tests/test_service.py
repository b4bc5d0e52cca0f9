"""The service as an operator meets it: settings, CLI, LMTP, STARTTLS, readiness, metrics, retention."""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import sys
from datetime import date, timedelta
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, utcnow
from mailbridge.settings import SettingsError, load_settings
from tests.conftest import make_services, seed
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send

MAILBRIDGE = [sys.executable, "-m", "mailbridge.cli"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")} | (env or {})
    return subprocess.run(
        [*MAILBRIDGE, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60
    )


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mb.toml"
    config.write_text('smtp_listen = "127.0.0.1:2600"\nhttp_listen = "127.0.0.1:9000"\n')
    monkeypatch.setenv("MAILBRIDGE_HTTP_LISTEN", "127.0.0.1:9100")
    settings = load_settings(config)
    assert settings.smtp_listen == "127.0.0.1:2600"  # file beats default
    assert settings.http_listen == "127.0.0.1:9100"  # environment beats file
    assert settings.effective_database_url.endswith("var/mailbridge.db")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"MAILBRIDGE_SMTP_LISTEN": "nonsense"}, "smtp_listen"),
        ({"MAILBRIDGE_SMARTHOST": "host-without-port"}, "smarthost"),
        ({"MAILBRIDGE_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"MAILBRIDGE_DNS_NAMESERVERS": '["not-an-ip"]'}, "dns_nameservers"),
        ({"MAILBRIDGE_OUTBOX_BATCH": "0"}, "outbox_batch"),
    ],
)
def test_bad_setting_one_line_exit_2(tmp_path: Path, env: dict[str, str], key: str) -> None:
    result = run_cli("db", "upgrade", env={"MAILBRIDGE_DATA_DIR": str(tmp_path)} | env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in result.stderr


def test_unknown_config_key_refused(tmp_path: Path) -> None:
    config = tmp_path / "mb.toml"
    config.write_text('smtp_lisen = "127.0.0.1:2600"\n')
    with pytest.raises(SettingsError, match="smtp_lisen"):
        load_settings(config)


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "db", "demo", "import", "dkim", "dns", "imap"):
        assert command in result.stdout


def test_demo_then_dkim_genkey(tmp_path: Path) -> None:
    env = {"MAILBRIDGE_DATA_DIR": str(tmp_path)}
    demo = run_cli("demo", env=env)
    assert demo.returncode == 0 and "conversations?as=alice" in demo.stdout
    assert "not loaded" in run_cli("demo", "--if-empty", env=env).stdout
    genkey = run_cli("dkim", "genkey", "--practice", "demo", "--selector", "s1", "--ed25519", env=env)
    assert genkey.returncode == 0, genkey.stderr
    assert 's1._domainkey.demo.test. IN TXT "v=DKIM1; k=rsa; p=' in genkey.stdout
    assert "s1e._domainkey.demo.test." in genkey.stdout and "k=ed25519" in genkey.stdout
    assert "dkim check --practice demo" in genkey.stdout  # signing starts once the record is seen
    assert not (tmp_path / "dkim").exists()  # the keys are in the database (sealed), for every node
    # Run again (as the old deploy.md did for RSA, then --ed25519): the selector is never overwritten.
    again = run_cli("dkim", "genkey", "--practice", "demo", "--selector", "s1", env=env)
    assert again.returncode == 2 and "dkim_selector_exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    # Without --selector, each run takes a new one: mb<yyyymm> (then mb<yyyymm>-2, see test_dkim_dns).
    first = run_cli("dkim", "genkey", "--practice", "demo", env=env)
    assert f"mb{date.today():%Y%m}._domainkey.demo.test." in first.stdout
    # --force replaces a key that never signed; a key that signed, never.
    assert (
        run_cli("dkim", "genkey", "--practice", "demo", "--selector", "s1", "--force", env=env).returncode
        == 0
    )
    activate = run_cli("dkim", "activate", "--practice", "demo", "s1", env=env)
    assert activate.returncode == 0 and "s1 (rsa) now signs demo's mail" in activate.stdout
    forced = run_cli("dkim", "genkey", "--practice", "demo", "--selector", "s1", "--force", env=env)
    assert forced.returncode == 2 and "dkim_selector_in_use" in forced.stderr
    listing = run_cli("dkim", "list", "--practice", "demo", env=env)
    assert listing.returncode == 0 and listing.stdout.startswith("demo: signed")
    assert "s1 " in listing.stdout and "active" in listing.stdout and "s1e" in listing.stdout
    assert run_cli("dkim", "genkey", "--practice", "nope", env=env).returncode == 2


def test_lmtp_mode(tmp_path: Path) -> None:
    services = make_services(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", lmtp=True)
    seed(services)
    conv = open_conversation(services, kind="company", company="bakery")
    address = reply_address(services, conv, "alice")
    msg = reply_message("alice@client.test", address, "Delivered over LMTP by Postfix.")
    with live_server(services) as server:
        client = smtplib.LMTP("127.0.0.1", server.port, timeout=10)
        try:
            assert client.ehlo("mx.acme.test")[0] == 250  # smtplib.LMTP sends LHLO
            refused = client.sendmail("alice@client.test", [address], msg.as_bytes(policy=SMTP))
            assert refused == {}
        finally:
            client.quit()
    services.close()


def test_starttls_offered_with_a_certificate(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    services = make_services(
        tmp_path,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
    )
    seed(services)
    conv = open_conversation(services, kind="company", company="bakery")
    address = reply_address(services, conv, "alice")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with live_server(services) as server, server.client() as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("client.test")
        client.mail("alice@client.test")
        client.rcpt(address)
        assert (
            client.data(
                reply_message("alice@client.test", address, "Over TLS this time.").as_bytes(policy=SMTP)
            )[0]
            == 250
        )
    services.close()


def test_readyz_and_metrics(seeded: Any, api: Any) -> None:
    ready = api.get("/readyz")
    assert ready.status_code == 503  # the SMTP listener is not up in this process
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] and checks["migrations"]["ok"] and not checks["smtp_listener"]["ok"]
    seeded.flags["smtp_listening"] = True
    assert api.get("/readyz").status_code == 200
    with live_server(seeded) as server:
        conv = open_conversation(seeded, kind="company", company="bakery")
        address = reply_address(seeded, conv, "alice")
        send(
            server,
            reply_message("alice@client.test", address, "Counting this one."),
            "alice@client.test",
            address,
        )
    metrics = api.get("/metrics").text
    assert 'mailbridge_inbound_total{reason="posted",state="posted"}' in metrics
    assert 'mailbridge_smtp_replies_total{code="250"}' in metrics
    assert "mailbridge_outbox_depth" in metrics and "mailbridge_pipeline_step_seconds_bucket" in metrics


def test_raw_mail_purged_after_retention(seeded: Any) -> None:
    from mailbridge.housekeeping import purge_raw

    with live_server(seeded) as server:
        conv = open_conversation(seeded, participants=("alice", "bob"))
        address = reply_address(seeded, conv, "alice")
        send(
            server,
            reply_message("alice@client.test", address, "Refused: group conversation."),
            "alice@client.test",
            address,
        )
    with seeded.sessions() as session:
        raw = session.scalars(select(InboundLog.raw_ref).where(InboundLog.raw_ref.is_not(None))).one()
    assert seeded.vault.exists(raw)
    assert purge_raw(seeded) == 0  # still within the retention period
    with transaction(seeded.sessions) as session:
        session.execute(update(InboundLog).values(received_at=utcnow() - timedelta(days=31)))
    assert purge_raw(seeded) == 1 and not seeded.vault.exists(raw)


def test_logs_never_carry_tokens_or_bodies(seeded: Any, capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    from mailbridge.logs import configure_logging

    configure_logging(seeded.settings.model_copy(update={"log_level": "DEBUG", "log_json": True}))
    # aiosmtpd's own logger echoes commands and DATA lines; it stays at WARNING even at log_level DEBUG
    with live_server(seeded) as server:
        conv = open_conversation(seeded, kind="company", company="bakery")
        address = reply_address(seeded, conv, "alice")
        token = address.split("+")[1].split("@")[0]
        send(
            server,
            reply_message("alice@client.test", address, "Secret body Wobbleflux."),
            "alice@client.test",
            address,
        )
        send(
            server,
            reply_message("alice@client.test", f"reply+{'z' * 32}@reply.acme.test", "x"),
            "alice@client.test",
            f"reply+{'z' * 32}@reply.acme.test",
        )
    logging.getLogger().handlers.clear()
    text = capfd.readouterr().err
    assert '"level": "DEBUG"' in text or '"level": "INFO"' in text  # our own logs did run
    assert token not in text and "Wobbleflux" not in text and "alice@client.test" not in text


def test_redaction_filter_masks_tokens() -> None:
    import logging

    from mailbridge.logs import RedactTokens

    record = logging.LogRecord(
        "x", logging.INFO, "f", 1, "rcpt %s", ("reply+" + "a" * 32 + "@reply.acme.test",), None
    )
    RedactTokens().filter(record)
    assert record.getMessage() == "rcpt reply+<token>@reply.acme.test"
