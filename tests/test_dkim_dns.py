"""DKIM keys shared by every node, never overwritten, never silently dropped; DNS records to publish and check.

Issue 12 items 1, 2, 3, 11 and the unsigned counter of item 15: settings writes are merges that
cannot stop signing; ``dkim genkey`` never overwrites a key that signed and a new key signs only once
its record is seen (or it is activated); the keys live in the database, sealed, so every node signs,
and a node that cannot open them keeps the mail waiting and says so; ``dns records``/``dns check``
print and look up what a practice must publish, through a real DNS server on loopback.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import dkim
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from mailbridge.api.app import create_app
from mailbridge.directory_import import load_directory
from mailbridge.dnsrecords.check import (
    check_record,
    compare_dkim,
    compare_dmarc,
    compare_mx,
    compare_spf,
    tags,
)
from mailbridge.dnsrecords.records import DkimKeyInfo, expected_records
from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Conflict, Invalid
from mailbridge.domain.models import DkimKeyRow, DkimKeyState, Outbox, OutboxState, utcnow
from mailbridge.inbound.dns import StaticResolver
from mailbridge.observability import REGISTRY, readiness
from mailbridge.outbound import keys
from mailbridge.outbound.sign import generate_ed25519_key, generate_rsa_key, public_txt_value
from mailbridge.wiring import Services
from tests.conftest import API_KEY, PRACTICE, make_services, seed
from tests.dnsserver import dns_server
from tests.mailhelpers import open_conversation
from tests.sink import Sink
from tests.test_outbound import drain, worker_for
from tests.test_service import run_cli

BASE = "/api/v1/practices/acme"
DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def activate_key(services: Services, selector: str = "mb1", ed25519: bool = False) -> dict[bytes, bytes]:
    """Generate and activate a key as `dkim genkey` + `dkim activate` do; its records as a DNS table."""
    with transaction(services.sessions) as session:
        practice = directory.get_practice(session, "acme")
        rows = keys.generate(session, services.keyring, practice, selector=selector, ed25519=ed25519)
        for row in rows:
            keys.activate(session, practice, row.selector)
        return {f"{r.selector}._domainkey.{r.domain}.".encode(): r.public_txt.encode() for r in rows}


def verifies(data: bytes, table: dict[bytes, bytes]) -> bool:
    return bool(dkim.verify(data, dnsfunc=lambda name, timeout=5: table.get(name, b"")))


def selectors_signed(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return [tags(str(h))["s"] for h in msg.get_all("DKIM-Signature", [])]


def other_node(services: Services, tmp_path: Path, name: str, same_master: bool) -> Services:
    """Another node on the same database: its own data dir (no key files), the deployment's master
    key or one of its own."""
    overrides: dict[str, Any] = {}
    if same_master:
        overrides["master_key_file"] = services.settings.effective_master_key_file
    return make_services(tmp_path / name, services.settings.effective_database_url, **overrides)


# ---- item 1: settings writes are merges, and cannot stop signing -------------------------------------


def test_a_sync_that_omits_settings_keeps_them_and_signing_goes_on(
    seeded: Services, api: Any, caplog: Any
) -> None:
    table = activate_key(seeded)
    practice = {k: v for k, v in PRACTICE.items() if k != "settings"}
    got = api.get(BASE).json()
    assert got["settings"]["dkim_selector"] == "mb1" and got["dkim"]["signing"] == "signed"
    assert got["settings"]["min_body_chars"] == 10

    # The directory sync knows nothing of settings: every stored key stays.
    assert api.put(BASE, json=practice).status_code == 200
    # It knows one key: only that one changes.
    put = api.put(BASE, json=practice | {"settings": {"note_marker": "#internal"}})
    assert put.status_code == 200
    assert (
        put.json()["settings"]["min_body_chars"] == 10
        and put.json()["settings"]["note_marker"] == "#internal"
    )
    # Objects merge key by key; null clears one key (its default applies again).
    put = api.put(
        BASE, json=practice | {"settings": {"notify_content": {"private": "full"}, "min_body_chars": None}}
    )
    body = put.json()["settings"]
    assert body["notify_content"] == {
        "company": "full",
        "confidential": "minimal",
        "private": "full",
        "direct": "full",
    }
    assert body["min_body_chars"] == 1 and body["note_marker"] == "#internal"
    # Echoing what it read (dkim_selector included, unchanged) is accepted.
    echo = api.put(BASE, json=practice | {"settings": put.json()["settings"]})
    assert echo.status_code == 200 and echo.json()["settings"]["dkim_selector"] == "mb1"

    # A write that would stop signing (null) or switch keys is refused, loudly.
    before = metric("mailbridge_settings_refused_total", key="dkim_selector")
    with caplog.at_level(logging.WARNING, logger="mailbridge.domain.directory"):
        for value in (None, "other"):
            refused = api.put(BASE, json=practice | {"settings": {"dkim_selector": value}})
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "dkim_selector_read_only"
            assert refused.json()["field"] == "settings.dkim_selector"
    assert metric("mailbridge_settings_refused_total", key="dkim_selector") == before + 2
    assert any(r.message == "settings_refused" for r in caplog.records)

    # The same semantics through `mailbridge import`.
    with transaction(seeded.sessions) as session:
        load_directory(session, {"practices": [{"slug": "acme", **practice}]})
    with pytest.raises(Invalid), transaction(seeded.sessions) as session:
        load_directory(
            session, {"practices": [{"slug": "acme", **practice, "settings": {"dkim_selector": None}}]}
        )
    got = api.get(BASE).json()
    assert got["settings"]["note_marker"] == "#internal" and got["dkim"]["signing"] == "signed"

    # After all these writes, notifications are still signed.
    open_conversation(seeded, kind="company", company="bakery")
    with Sink() as sink:
        drain(worker_for(seeded, sink, outbox_poll_seconds=0.05))
        assert sink.received and all(verifies(r.data, table) for r in sink.received)


# ---- item 2: keys are never overwritten; a new key signs once seen or activated -------------------------


def test_key_lifecycle_never_overwrites_a_key_that_signed(seeded: Services) -> None:
    with transaction(seeded.sessions) as session:
        practice = directory.get_practice(session, "acme")
        first = keys.generate(session, seeded.keyring, practice, ed25519=True)
        assert [k.selector for k in first][1] == first[0].selector + "e"
        assert {k.state for k in first} == {DkimKeyState.pending}
        # A new run takes a new selector; the same selector is refused, --force replaces a pending key.
        second = keys.generate(session, seeded.keyring, practice)
        assert second[0].selector == first[0].selector + "-2"
        with pytest.raises(Conflict) as exists:
            keys.generate(session, seeded.keyring, practice, selector=first[0].selector)
        assert exists.value.code == "dkim_selector_exists"
        old_public = first[0].public_txt
        (replaced,) = keys.generate(session, seeded.keyring, practice, selector=first[0].selector, force=True)
        assert replaced.public_txt != old_public
        with pytest.raises(Invalid):
            keys.generate(session, seeded.keyring, practice, selector="Bad_Selector")
        # ed25519 signs only beside RSA.
        with pytest.raises(Conflict) as needs:
            keys.activate(session, practice, first[0].selector + "e")
        assert needs.value.code == "dkim_needs_rsa"
        assert keys.activate(session, practice, replaced.selector)
        assert keys.activate(session, practice, first[0].selector + "e")
        # A key that signed is never replaced, even with --force.
        with pytest.raises(Conflict) as in_use:
            keys.generate(session, seeded.keyring, practice, selector=replaced.selector, force=True)
        assert in_use.value.code == "dkim_selector_in_use"
        # Rotation: the new key signs, the old one is retiring (still published), then retired.
        changes = keys.activate(session, practice, second[0].selector)
        assert any("retiring" in c for c in changes)
        states = {k.selector: k.state for k in keys.keys_of(session, practice)}
        assert states[replaced.selector] == DkimKeyState.retiring
        assert states[second[0].selector] == DkimKeyState.active
        with pytest.raises(Conflict) as retired_again:
            keys.activate(session, practice, replaced.selector)
        assert retired_again.value.code == "dkim_key_retired"
        assert keys.retire(session, practice, replaced.selector)
        # The active key is not retired by mistake; --force does it, and says signing stopped.
        with pytest.raises(Conflict) as active:
            keys.retire(session, practice, second[0].selector)
        assert active.value.code == "dkim_key_active"
        stopped = keys.retire(session, practice, second[0].selector, force=True)
        assert any("unsigned" in line for line in stopped)
        assert keys.keys_of(session, practice, [DkimKeyState.active]) == []  # the ed25519 twin went too
        assert seeded.dkim_keys.status(session, practice).signing == "unsigned"


def test_a_sealed_key_moved_to_another_practice_does_not_open(seeded: Services) -> None:
    seed(seeded, "other")
    activate_key(seeded)
    with transaction(seeded.sessions) as session:
        acme = directory.get_practice(session, "acme")
        other = directory.get_practice(session, "other")
        (stolen,) = keys.keys_of(session, acme, [DkimKeyState.active])
        (mine,) = keys.generate(session, seeded.keyring, other, selector="mb1")
        mine.private_key = stolen.private_key  # a row edited by hand, or a bug: the seal is bound
        mine.state = DkimKeyState.active
        session.flush()
        status = seeded.dkim_keys.status(session, other)
    assert status.signing == "cannot_sign" and "cannot open DKIM key 'mb1'" in (status.detail or "")


# ---- item 3: keys in the database; every node signs; a node that cannot, waits and says why ------------


def test_every_node_signs_and_one_that_cannot_open_the_key_leaves_the_mail_waiting(
    seeded: Services, tmp_path: Path, caplog: Any
) -> None:
    table = activate_key(seeded, ed25519=True)
    node_b = other_node(seeded, tmp_path, "b", same_master=True)
    node_c = other_node(seeded, tmp_path, "c", same_master=False)
    try:
        # Node B has no key file anywhere (nothing is on disk): it signs from the database.
        assert not (seeded.settings.data_dir / "dkim").exists()
        open_conversation(node_b, kind="company", company="bakery")
        with Sink() as sink:
            drain(worker_for(node_b, sink))
            assert sink.received
            for received in sink.received:
                assert verifies(received.data, table)
                assert selectors_signed(received.data) == ["mb1", "mb1e"]  # RSA first, then ed25519

        # Node C was given another master key: it cannot open acme's key, and sends nothing unsigned.
        open_conversation(node_c, kind="company", company="bakery", subject="Second")
        before = metric("mailbridge_dkim_cannot_sign_total", practice="acme")
        with Sink() as sink, caplog.at_level(logging.WARNING, logger="mailbridge.outbound.worker"):
            drain(worker_for(node_c, sink))
            assert sink.received == []
        with transaction(node_c.sessions) as session:
            waiting = session.scalars(select(Outbox).where(Outbox.state == OutboxState.pending)).all()
            assert waiting and all(r.attempts == 0 for r in waiting)
            assert all(r.last_answer and "cannot DKIM-sign for acme" in r.last_answer for r in waiting)
        assert metric("mailbridge_dkim_cannot_sign_total", practice="acme") >= before + len(waiting)
        assert any(r.message == "dkim_cannot_sign" for r in caplog.records)
        with TestClient(create_app(node_c), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "acme" in ready.json()["checks"]["dkim"]["cannot_sign"]
            public = client.get("/readyz", headers={"Authorization": ""})  # a probe: a count, no name
            assert public.status_code == 503 and public.json()["checks"]["dkim"] == {"ok": False, "count": 1}
            assert "acme" not in public.text
            shown = client.get(BASE).json()["dkim"]
            assert shown["signing"] == "cannot_sign" and "cannot open DKIM key" in shown["detail"]
        assert readiness(node_b)["dkim"] == {"ok": True, "cannot_sign": {}}

        # A node that can (here B, once the rows are due again) sends them, signed.
        with transaction(seeded.sessions) as session:
            session.execute(update(Outbox).values(next_attempt_at=utcnow()))
        with Sink() as sink:
            drain(worker_for(node_b, sink))
            assert len(sink.received) == len(waiting)
            assert all(verifies(r.data, table) for r in sink.received)
    finally:
        node_b.close()
        node_c.close()


def test_a_practice_without_a_key_is_sent_unsigned_counted_and_shown(
    seeded: Services, api: Any, caplog: Any
) -> None:
    before = metric("mailbridge_notifications_unsigned_total", practice="acme")
    assert api.get(BASE).json()["dkim"] == {
        "signing": "unsigned",
        "detail": "no active DKIM key: notifications go out unsigned",
        "keys": [],
    }
    open_conversation(seeded, kind="company", company="bakery", participants=("alice", "bob"))
    with Sink() as sink, caplog.at_level(logging.WARNING, logger="mailbridge.outbound.worker"):
        drain(worker_for(seeded, sink))
        sent = len(sink.received)
        assert sent >= 2 and not any(b"DKIM-Signature" in r.data for r in sink.received)
    assert metric("mailbridge_notifications_unsigned_total", practice="acme") == before + sent
    assert [r.message for r in caplog.records].count("dkim_unsigned") == 1  # once per process, not per email


def test_keys_of_an_older_version_move_in_once_and_until_then_mail_waits(tmp_path: Path) -> None:
    """DATA_DIR/dkim/<practice>/<selector>.{rsa,ed25519}.pem and settings.dkim_selector, as 0.x left them."""
    data = tmp_path / "var"  # make_services' data dir: the CLI below works on the same node
    env = {"MAILBRIDGE_DATA_DIR": str(data)}
    services = make_services(tmp_path, f"sqlite:///{data / 'mailbridge.db'}")
    try:
        seed(services)
        rsa, ed = generate_rsa_key(2048), generate_ed25519_key()
        folder = data / "dkim" / "acme"
        folder.mkdir(parents=True)
        (folder / "mb1.rsa.pem").write_bytes(rsa)
        (folder / "mb1.ed25519.pem").write_bytes(ed)
        (folder / "mb0.rsa.pem").write_bytes(generate_rsa_key(2048))  # an older key, not in use
        with transaction(services.sessions) as session:
            practice = directory.get_practice(session, "acme")
            practice.settings = {**practice.settings, "dkim_selector": "mb1"}

        # Before the move, no node signs for acme, and none sends its mail unsigned.
        open_conversation(services, kind="company", company="bakery")
        with Sink() as sink:
            drain(worker_for(services, sink))
            assert sink.received == []
        with transaction(services.sessions) as session:
            reasons = set(session.scalars(select(Outbox.last_answer)))
        assert any(
            "run `mailbridge db upgrade` on the node whose DATA_DIR/dkim/acme/" in (r or "") for r in reasons
        )
        # A new key cannot take the selector the old one still holds.
        with pytest.raises(Conflict), transaction(services.sessions) as session:
            keys.generate(session, services.keyring, directory.get_practice(session, "acme"), selector="mb1")

        upgrade = run_cli("db", "upgrade", env=env)
        assert upgrade.returncode == 0, upgrade.stderr
        assert "acme: mb1.rsa.pem imported as mb1 (active)" in upgrade.stdout
        assert "acme: mb1.ed25519.pem imported as mb1e (active)" in upgrade.stdout
        assert "acme: mb0.rsa.pem imported as mb0 (retired)" in upgrade.stdout
        assert (folder / "mb1.rsa.pem").read_bytes() == rsa  # the files stay: nothing can be lost
        again = run_cli("db", "upgrade", env=env)
        assert again.returncode == 0 and "DKIM" not in again.stdout  # once

        with transaction(services.sessions) as session:
            session.execute(update(Outbox).values(next_attempt_at=utcnow()))
            practice = directory.get_practice(session, "acme")
            assert "dkim_selector" not in practice.settings
            assert directory.active_dkim_selector(session, practice) == "mb1"
        table = {
            b"mb1._domainkey.acme.test.": public_txt_value(rsa),
            b"mb1e._domainkey.acme.test.": public_txt_value(ed),
        }
        with Sink() as sink:
            drain(worker_for(services, sink))
            assert sink.received
            for received in sink.received:
                assert verifies(received.data, table) and selectors_signed(received.data) == ["mb1", "mb1e"]
    finally:
        services.close()


# ---- item 11: the records to publish, and whether they are -----------------------------------------


def _deploy_section(title: str) -> str:
    text = DEPLOY.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _commands(section: str) -> list[list[str]]:
    """The ```bash blocks of a section, one list of lines per block, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [[line.split(" #", 1)[0].strip() for line in b.splitlines() if line.strip()] for b in blocks]


def test_deploy_md_dns_and_dkim_commands_run_as_written(tmp_path: Path) -> None:
    """Every command of deploy.md's DNS section, typed as written, against a real DNS server on
    loopback that gets what the operator is told to publish."""
    blocks = _commands(_deploy_section("DNS records"))
    assert len(blocks) == 3 and all(blocks)
    env = {"MAILBRIDGE_DATA_DIR": str(tmp_path / "var")}
    directory_file = tmp_path / "acme.json"
    directory_file.write_text(
        json.dumps(
            {
                "practices": [
                    {
                        "slug": "acme",
                        "name": "Acme",
                        "reply_domain": "reply.acme.example",
                        "notify_from": "notify@acme.example",
                    }
                ]
            }
        )
    )
    assert run_cli("import", str(directory_file), env=env).returncode == 0
    with dns_server() as server:
        env["MAILBRIDGE_DNS_NAMESERVERS"] = json.dumps([server.nameserver])
        outputs: dict[str, str] = {}

        def run(line: str) -> None:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                env[name] = value
                return
            argv = shlex.split(line)
            assert argv[0] == "mailbridge", f"deploy.md asks the operator to type {line!r}"
            result = run_cli(*argv[1:], env=env)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            outputs[line] = result.stdout
            if argv[1:3] in (["dns", "records"], ["dkim", "genkey"]):
                server.publish(result.stdout)  # "Publish every record printed"

        for line in blocks[0]:
            run(line)
        records = outputs["mailbridge dns records --practice acme"]
        assert "reply.acme.example. IN MX 10 mx.acme.example." in records
        assert 'reply.acme.example. IN TXT "v=spf1 include:_spf.smarthost.example -all"' in records
        assert 'acme.example. IN TXT "v=spf1 include:_spf.smarthost.example -all"' in records
        assert 's1._domainkey.acme.example. IN TXT "v=DKIM1; k=rsa; p=' in records
        assert 's1e._domainkey.acme.example. IN TXT "v=DKIM1; k=ed25519; p=' in records
        assert '_dmarc.acme.example. IN TXT "v=DMARC1; p=quarantine' in records
        for line in blocks[1]:
            run(line)
        assert "s1 (rsa) now signs acme's mail" in outputs["mailbridge dkim check --practice acme"]
        assert "s1e (ed25519) now signs" in outputs["mailbridge dkim check --practice acme"]
        for line in blocks[2]:
            run(line)
        listing = json.loads(run_cli("dkim", "list", "--practice", "acme", "--json", env=env).stdout)
        states = {k["selector"]: (k["state"], k["dns_status"]) for k in listing["keys"]}
        assert states == {
            "s1": ("retired", "published"),
            "s1e": ("active", "published"),
            "s2": ("active", "published"),
        }
        assert listing["signing"] == "signed"
        # "then remove s1's record": nothing expects it any more.
        server.remove("s1._domainkey.acme.example", "TXT")
        final = run_cli("dns", "check", "--practice", "acme", env=env)
        assert final.returncode == 0, final.stdout
        assert "s1._domainkey" not in final.stdout and final.stdout.count("published") == 6
        # Something missing or different: said, with what is expected, and exit 1.
        server.remove("reply.acme.example", "TXT")
        server.set("s2._domainkey.acme.example", "TXT", ['"v=DKIM1; k=rsa; p=AAAA"'])
        broken = run_cli("dns", "check", "--practice", "acme", env=env)
        assert broken.returncode == 1
        assert re.search(r"^missing +TXT reply\.acme\.example ", broken.stdout, flags=re.M)
        assert re.search(
            r"^different +TXT s2\._domainkey\.acme\.example .*p= differs", broken.stdout, flags=re.M
        )
        assert "expected: s2._domainkey.acme.example. IN TXT" in broken.stdout
        assert run_cli("dkim", "check", "--practice", "acme", env=env).returncode == 1
        assert ("TXT", "_dmarc.acme.example") in server.queries  # the lookups went through the socket


def test_records_without_settings_print_placeholders_and_say_so(sqlite_services: Services) -> None:
    records = expected_records(reply_domain="reply.acme.test", notify_from="notify@acme.test", keys=[])
    assert [r.purpose for r in records] == ["mx", "spf", "spf", "dmarc"]
    assert all(r.placeholder for r in records[:3]) and "<spf_include" in records[1].value
    same = expected_records(
        reply_domain="acme.test", notify_from="notify@acme.test", keys=[], spf_include="spf.example"
    )
    assert [r.name for r in same if r.purpose == "spf"] == [
        "acme.test"
    ]  # one record when the domains are one
    # A resolver that cannot answer: "error", never "missing".
    resolver = StaticResolver(timeouts=["reply.acme.test"])
    assert check_record(records[0], resolver).status == "error"


@pytest.mark.parametrize(
    ("found", "status"),
    [
        ([], "missing"),
        (["v=DKIM1; k=rsa; p=KEY"], "published"),
        (["v=DKIM1; k=rsa; p=K EY"], "published"),  # a zone editor's space inside p=
        (["v=DKIM1; k=rsa; p=OTHER"], "different"),
        (["v=DKIM1; k=ed25519; p=KEY"], "different"),
        (["v=DKIM1; k=rsa; p=KEY", "v=DKIM1; k=rsa; p=OLD"], "different"),  # two records: undefined
    ],
)
def test_dkim_record_comparison(found: list[str], status: str) -> None:
    assert compare_dkim("v=DKIM1; k=rsa; p=KEY", found)[0] == status


def test_spf_mx_dmarc_comparisons() -> None:
    assert compare_spf("spf.example", ["v=spf1 include:spf.example -all"])[0] == "published"
    assert compare_spf("spf.example", ["v=spf1 mx -all"]) == (
        "different",
        "does not include:spf.example: mail through the smarthost fails SPF",
    )
    assert compare_spf("spf.example", ["v=spf1 -all", "v=spf1 include:spf.example -all"])[0] == "different"
    assert compare_spf(None, ["v=spf1 mx -all", "google-site-verification=x"])[0] == "published"
    assert compare_mx("mx.acme.test", ["mx.elsewhere.test"])[0] == "different"
    assert compare_dmarc(["v=DMARC1; p=none"]) == (
        "published",
        "p=none: receivers report but do not act on forged mail",
    )
    assert compare_dmarc(["v=DMARC1; rua=mailto:x@y"])[0] == "different"
    # DMARC falls back to the organizational domain, as receivers do (RFC 7489 6.6.3).
    records = expected_records(reply_domain="reply.acme.test", notify_from="n@mail.acme.test", keys=[])
    dmarc = records[-1]
    resolver = StaticResolver({"_dmarc.acme.test": ["v=DMARC1; p=reject"]})
    finding = check_record(dmarc, resolver, organizational_domain=lambda d: "acme.test")
    assert finding.status == "published" and "organizational domain" in finding.detail
    info = DkimKeyInfo("s1", "acme.test", "rsa", "active", "v=DKIM1; k=rsa; p=KEY")
    (dkim_rec,) = [
        r
        for r in expected_records(reply_domain="acme.test", notify_from="n@acme.test", keys=[info])
        if r.selector
    ]
    assert check_record(dkim_rec, StaticResolver({"s1._domainkey.acme.test": ["v=DKIM1; k=rsa; p=KEY"]})).ok


def test_dkim_check_activates_only_what_is_published(seeded: Services) -> None:
    from mailbridge.dnsrecords.practice import check_keys

    with transaction(seeded.sessions) as session:
        practice = directory.get_practice(session, "acme")
        rsa, ed = keys.generate(session, seeded.keyring, practice, selector="k1", ed25519=True)
        rsa_txt, ed_txt = rsa.public_txt, ed.public_txt
    # Only the ed25519 record is out: it cannot sign alone, so it stays pending, and so does RSA.
    result = check_keys(seeded.sessions, "acme", StaticResolver({"k1e._domainkey.acme.test": [ed_txt]}))
    assert [f.status for f in result.findings] == ["missing", "published"]
    assert len(result.changes) == 1 and result.changes[0].startswith("k1e stays pending: ")
    # Both out: both sign.
    both = StaticResolver({"k1._domainkey.acme.test": [rsa_txt], "k1e._domainkey.acme.test": [ed_txt]})
    result = check_keys(seeded.sessions, "acme", both)
    assert len(result.changes) == 2 and all(f.ok for f in result.findings)
    with transaction(seeded.sessions) as session:
        rows = session.scalars(select(DkimKeyRow).order_by(DkimKeyRow.selector)).all()
        assert [(r.selector, r.state, r.dns_status) for r in rows] == [
            ("k1", DkimKeyState.active, "published"),
            ("k1e", DkimKeyState.active, "published"),
        ]
        assert all(r.last_checked_at is not None for r in rows)


def test_a_new_from_domain_is_flagged_while_the_old_key_still_signs(seeded: Services, api: Any) -> None:
    activate_key(seeded)
    practice = {k: v for k, v in PRACTICE.items() if k != "settings"}
    moved = api.put(BASE, json=practice | {"notify_from": "notify@acme-new.test"}).json()["dkim"]
    assert moved["signing"] == "signed"
    assert "d=acme.test but mail is From acme-new.test: DMARC alignment fails" in moved["detail"]


def test_a_settings_write_nested_without_end_is_refused_not_a_crash(seeded: Services, api: Any) -> None:
    """A hostile tenant's settings: the merge recurses per level, so depth is bounded (422, not 500)."""
    deep: dict[str, Any] = {"x": 1}
    for _ in range(200):
        deep = {"x": deep}
    practice = {k: v for k, v in PRACTICE.items() if k != "settings"}
    refused = api.put(BASE, json=practice | {"settings": {"brand": deep}})
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_settings"
    assert api.get(BASE).json()["settings"]["min_body_chars"] == 10  # nothing stored
