"""Operating without surprises: start-up refusals in one line, the decision and delivery log lines,
log formats, per-practice metrics, readiness of templates, outbox file names, the CLI's small frictions."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from mailbridge.cli import _api_key, _parser
from mailbridge.domain.db import head_revision, make_engine
from mailbridge.logs import JsonFormatter, KeyValueFormatter, RedactTokens, configure_logging
from mailbridge.outbound.deliver import eml_name
from mailbridge.settings import load_settings
from tests.conftest import PG_URL, pg_unavailable, seed
from tests.mailhelpers import live_server, open_conversation, reply_address, reply_message, send
from tests.test_outbound import drain, worker_for

MAILBRIDGE = [sys.executable, "-m", "mailbridge.cli"]
ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")} | env
    return subprocess.run([*MAILBRIDGE, *args], capture_output=True, text=True, env=full, timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ---- start-up ---------------------------------------------------------------------------------------


@pytest.fixture
def empty_pg_schema() -> Iterator[str]:
    """A PostgreSQL schema with no table at all: a database nobody migrated."""
    why = pg_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    schema = f"mbempty_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.mark.postgres
def test_serve_refuses_an_unmigrated_postgresql_in_one_line(tmp_path: Path, empty_pg_schema: str) -> None:
    env = {
        "MAILBRIDGE_DATA_DIR": str(tmp_path),
        "MAILBRIDGE_DATABASE_URL": empty_pg_schema,
        "MAILBRIDGE_API_KEY": "k" * 32,
        "MAILBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
        "MAILBRIDGE_SMTP_LISTEN": "127.0.0.1:0",
    }
    head = head_revision(make_engine("sqlite://"))
    refused = run_cli("serve", env=env)
    assert refused.returncode == 2
    line = one_line(refused)
    assert f"database is at revision none (empty), the code needs {head}" in line
    assert "mailbridge db upgrade" in line and "serve --migrate" in line

    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"created at revision {head} (was empty)" in upgraded.stdout
    assert "mailbridge:mailbridge" not in upgraded.stdout  # never a password (none here, but the form)
    again = run_cli("db", "upgrade", env=env)
    assert f"already at revision {head} (the newest), nothing to do" in again.stdout

    engine = make_engine(empty_pg_schema)  # a newer version migrated it further
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    newer = run_cli("serve", env=env)
    assert newer.returncode == 2 and "revision 9999, which this version does not know" in one_line(newer)


def test_serve_refuses_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        "MAILBRIDGE_DATA_DIR": str(tmp_path),
        "MAILBRIDGE_DATABASE_URL": f"postgresql+psycopg://nobody:secret-pw@127.0.0.1:{port}/none",
        "MAILBRIDGE_API_KEY": "k" * 32,
    }
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("mailbridge: database: cannot reach postgresql+psycopg://nobody:***@127.0.0.1")
    assert "secret-pw" not in result.stderr


@pytest.mark.parametrize("which", ["HTTP", "SMTP"])
def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {
            "MAILBRIDGE_DATA_DIR": str(tmp_path),
            "MAILBRIDGE_API_KEY": "k" * 32,
            "MAILBRIDGE_HTTP_LISTEN": f"127.0.0.1:{port}" if which == "HTTP" else "127.0.0.1:0",
            "MAILBRIDGE_SMTP_LISTEN": f"127.0.0.1:{port}" if which == "SMTP" else "127.0.0.1:0",
            "MAILBRIDGE_LOG_LEVEL": "WARNING",
        }
        result = run_cli("serve", env=env)
    assert result.returncode == 2
    line = one_line(result)
    assert line == (
        f"mailbridge: {which.lower()}_listen: cannot listen on 127.0.0.1:{port}: the address is already in "
        "use (another mailbridge or another server on that port?)"
    )


def test_config_is_accepted_before_and_after_the_command(tmp_path: Path) -> None:
    parser = _parser()
    assert parser.parse_args(["--config", "a.toml", "serve"]).config == "a.toml"
    assert parser.parse_args(["serve", "--config", "b.toml"]).config == "b.toml"
    assert parser.parse_args(["db", "upgrade", "--config", "c.toml"]).config == "c.toml"
    assert parser.parse_args(["--config", "d.toml", "imap", "check", "--practice", "p"]).config == "d.toml"
    assert parser.parse_args(["serve"]).config is None
    config = tmp_path / "mb.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-config"}"\n')
    result = run_cli("db", "upgrade", "--config", str(config), env={})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-config" / "mailbridge.db").exists()


def test_the_start_up_line_names_where_the_api_key_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILBRIDGE_API_KEY", raising=False)
    bare = load_settings(data_dir=tmp_path)
    key, origin = _api_key(bare, True, None)
    path = tmp_path / "secrets" / "api.key"
    assert origin == f"generated into {path}" and path.read_text().strip() == key
    assert oct(path.stat().st_mode)[-3:] == "600"
    assert _api_key(bare, False, None) == (key, f"from {path}")
    from_file = load_settings(data_dir=tmp_path, api_key="configured-key")
    assert _api_key(from_file, False, "/etc/mailbridge.toml") == (
        "configured-key",
        "from api_key in /etc/mailbridge.toml",
    )
    monkeypatch.setenv("MAILBRIDGE_API_KEY", "env-key")
    assert _api_key(load_settings(data_dir=tmp_path), False, None) == (
        "env-key",
        "from the environment (MAILBRIDGE_API_KEY)",
    )


# ---- log lines --------------------------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [vars(r) for r in self.records if r.getMessage() == name]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("mailbridge")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_one_decision_line_per_message_over_smtp(seeded: Any, api: Any, lines: Lines) -> None:
    assert api.put(
        "/api/v1/practices/acme/routes/frontdesk@acme.test",
        json={"roles": ["front_office"], "unknown_senders": "triage"},
    ).status_code in (200, 201)
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    posted = reply_message("alice@client.test", address, "Thank you, the invoice is paid.")
    stranger = reply_message("newcomer@client.test", "frontdesk@acme.test", "Do you take new clients?")
    with live_server(seeded) as server:
        assert send(server, posted, "alice@client.test", address)[0] == 250
        assert send(server, posted, "mallory@evil.test", f"reply+{'a' * 32}@reply.acme.test")[0] == 550
        assert send(server, stranger, "newcomer@client.test", "frontdesk@acme.test")[0] == 250
    decisions = lines.events("inbound_decision")
    assert [(d["state"], d["reason"], d["smtp"][:3]) for d in decisions] == [
        ("posted", "posted", "250"),
        ("rejected", "token_invalid", "550"),
        ("quarantined", "unknown_sender", "250"),
    ]
    first, refused, held = decisions
    assert first["door"] == "smtp" and first["practice"] == "acme" and first["inbound_id"] != "-"
    assert first["message_id"] == posted["Message-ID"] and first["duration_ms"] > 0
    assert refused["practice"] == "-" and refused["inbound_id"] != "-"  # refused at RCPT: a row all the same
    assert held["practice"] == "acme"
    assert all(r.levelno == logging.INFO for r in lines.records if r.getMessage() == "inbound_decision")


def test_one_line_per_delivery_attempt(seeded: Any, lines: Lines) -> None:
    from tests.sink import Sink

    open_conversation(seeded, kind="company", company="bakery", participants=("alice",))
    with Sink() as sink:
        sink.handler.answers = ["451 4.3.0 try later"]
        drain(worker_for(seeded, sink), rounds=1)
    [attempt] = lines.events("delivery_attempt")
    assert attempt["practice"] == "acme" and attempt["kind"] == "notification"
    assert (attempt["result"], attempt["attempt"], attempt["state"]) == ("temporary", 1, "pending")
    assert attempt["smtp"].startswith("451")


def test_json_and_key_value_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "f", 1, "Started %s", ("\x1b[32mserver\x1b[0m",), None
    )
    record.color_message = "Started \x1b[1mserver\x1b[0m"
    record.message_id = '<a b"c@x.test>\r\nInjected: yes'
    record.token_seen = "reply+" + "a" * 32 + "@reply.acme.test"
    RedactTokens().filter(record)
    data = json.loads(JsonFormatter().format(record))
    assert (
        "color_message" not in data and "\x1b" not in json.dumps(data) and data["event"] == "Started server"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", data["ts"])
    assert datetime.fromisoformat(data["ts"]).tzinfo == UTC
    assert data["token_seen"] == "reply+<token>@reply.acme.test"
    kv = KeyValueFormatter().format(record)
    assert "\n" not in kv and "\x1b" not in kv and "color_message" not in kv
    assert 'message_id="<a b\\"c@x.test>\\r\\nInjected: yes"' in kv
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO    uvicorn.error: Started server", kv)


def test_libraries_are_quiet_by_default(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mailbridge").level
    try:
        configure_logging(load_settings(data_dir=tmp_path))
        logging.getLogger("flufl.bounce.detectors").info("detector chatter")
        logging.getLogger("asyncio").info("asyncio chatter")
        logging.getLogger("aioimaplib").warning("a library warning")
        logging.getLogger("mailbridge.test").info("our event", extra={"k": "v"})
        configure_logging(load_settings(data_dir=tmp_path, log_libraries_level="DEBUG"))
        logging.getLogger("flufl.bounce.detectors").debug("now shown")
        logging.getLogger("mail.log").info("aiosmtpd DATA line, never shown")
    finally:
        root.handlers[:], level, ours = saved[0], saved[1], saved[2]
        root.setLevel(level)
        logging.getLogger("mailbridge").setLevel(ours)
    err = capfd.readouterr().err
    assert "chatter" not in err and "a library warning" in err and "our event k=v" in err
    assert "now shown" in err and "never shown" not in err


# ---- metrics and readiness --------------------------------------------------------------------------


def test_metrics_per_practice_quarantine_and_no_created_series(seeded: Any, api: Any) -> None:
    assert api.put(
        "/api/v1/practices/acme/routes/frontdesk@acme.test",
        json={"roles": ["front_office"], "unknown_senders": "triage"},
    ).status_code in (200, 201)
    conv = open_conversation(seeded, kind="company", company="bakery")
    address = reply_address(seeded, conv, "alice")
    with live_server(seeded) as server:
        send(
            server,
            reply_message("alice@client.test", address, "Counted per practice."),
            "alice@client.test",
            address,
        )
        stranger = reply_message("newcomer@client.test", "frontdesk@acme.test", "Held for review.")
        send(server, stranger, "newcomer@client.test", "frontdesk@acme.test")
    drain(worker_for(seeded, None))
    metrics = api.get("/metrics").text
    assert "_created" not in metrics
    assert re.search(
        r'^mailbridge_practice_inbound_total\{practice="acme",state="posted"\} [1-9]', metrics, re.M
    )
    assert re.search(
        r'^mailbridge_practice_deliveries_total\{practice="acme",result="sent"\} [1-9]', metrics, re.M
    )
    assert re.search(r"^mailbridge_quarantine_held 1\.0$", metrics, re.M)
    assert re.search(r'^mailbridge_practice_quarantine_held\{practice="acme"\} 1\.0$', metrics, re.M)
    seeded.settings = seeded.settings.model_copy(update={"metrics_practice_label": False})
    quiet = api.get("/metrics").text
    assert "mailbridge_practice_" not in quiet and "mailbridge_quarantine_held 1.0" in quiet


def test_readyz_fails_when_templates_cannot_be_loaded(seeded: Any, api: Any, tmp_path: Path) -> None:
    seeded.flags["smtp_listening"] = True
    assert api.get("/readyz").json()["checks"]["templates"] == {"ok": True}
    seeded.settings = seeded.settings.model_copy(update={"templates_dir": tmp_path / "missing"})
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["templates"]["error"] == f"no templates folder at {tmp_path / 'missing'}"


def test_serve_refuses_templates_it_cannot_load(tmp_path: Path) -> None:
    env = {
        "MAILBRIDGE_DATA_DIR": str(tmp_path),
        "MAILBRIDGE_API_KEY": "k" * 32,
        "MAILBRIDGE_TEMPLATES_DIR": str(tmp_path / "nowhere"),
    }
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert one_line(result) == f"mailbridge: templates: no templates folder at {tmp_path / 'nowhere'}"


# ---- outbox files -----------------------------------------------------------------------------------


def test_outbox_files_are_named_by_time_and_message_id(sqlite_services: Any) -> None:
    seed(sqlite_services)
    open_conversation(sqlite_services, kind="company", company="bakery", participants=("alice",))
    drain(worker_for(sqlite_services, None))
    [eml] = (sqlite_services.settings.data_dir / "outbox").glob("*.eml")
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-n\.[0-9a-f]+\.\d+@acme\.test\.eml", eml.name), eml.name
    assert not list((sqlite_services.settings.data_dir / "outbox").glob("*tmp*"))
    when = datetime(2026, 12, 4, 18, 28, 3, 512044, tzinfo=UTC)
    hostile = b"Subject: x\r\nMessage-ID: <../../etc/passwd\x00 x@y>\r\n\r\nbody"
    assert eml_name(hostile, when) == "20261204T182803.512044Z-etc_passwd_x@y.eml"
    assert eml_name(b"Subject: none\r\n\r\n", when) == "20261204T182803.512044Z-no-message-id.eml"


def test_settings_table_in_readme_and_the_example_toml_match_the_code() -> None:
    from mailbridge.settings import Settings

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| variable | default | meaning |") : readme.index("A bad setting stops")]
    names = re.findall(r"^\| `(MAILBRIDGE_[A-Z_]+)` \|", table, re.M)
    fields = {f"MAILBRIDGE_{name.upper()}" for name in Settings.model_fields}
    outside = {"MAILBRIDGE_TOKEN_SECRET", "MAILBRIDGE_MASTER_KEY"}  # read by wiring, not Settings
    assert names and all(name in fields | outside for name in names)
    for name in (
        "MAILBRIDGE_MASTER_KEY",
        "MAILBRIDGE_LOG_LIBRARIES_LEVEL",
        "MAILBRIDGE_METRICS_PRACTICE_LABEL",
    ):
        assert name in names
    example = ROOT / "config" / "mailbridge.example.toml"
    for key in ("master_key_file", "imap_lease_seconds", "log_libraries_level", "metrics_practice_label"):
        assert re.search(rf"^#? ?{key} = ", example.read_text(), re.M), key
    assert load_settings(example).metrics_practice_label is True  # the example loads as written
