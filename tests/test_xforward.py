"""XFORWARD: the MTA in front tells who its client was; anyone else who tries is refused.

The attacks go through the SMTP door with a real client: an Internet peer sending XFORWARD with the
address a forged domain's SPF allows must still be judged on its own address.
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge import replies
from mailbridge.domain.db import upgrade
from mailbridge.domain.models import InboundLog, Message
from mailbridge.inbound.dns import StaticResolver
from mailbridge.ingress import xforward
from mailbridge.settings import SettingsError, load_settings
from mailbridge.wiring import Services, build_services
from tests.conftest import API_KEY, DNS_TABLE, seed
from tests.mailhelpers import add_client, live_server, open_conversation, reply_address, reply_message

# forwarded.test may send only from 192.0.2.10, a documentation address no test connects from.
DNS = DNS_TABLE | {
    "forwarded.test": ["v=spf1 ip4:192.0.2.10 -all"],
    "_dmarc.forwarded.test": ["v=DMARC1; p=reject"],
}
FORWARD = "XFORWARD NAME=mx.forwarded.test ADDR=192.0.2.10 PROTO=ESMTP HELO=mx.forwarded.test SOURCE=REMOTE"


def make(tmp_path: Path, **overrides: Any) -> Services:
    settings = load_settings(
        data_dir=tmp_path / "var",
        database_url=f"sqlite:///{tmp_path / 'mailbridge.db'}",
        api_key=API_KEY,
        app_url="https://app.example.test",
        smtp_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        **overrides,
    )
    services = build_services(settings, resolver=StaticResolver(DNS))
    upgrade(services.engine)
    seed(services)
    add_client(services, "fay", "fay@forwarded.test")
    return services


@pytest.fixture
def behind_postfix(tmp_path: Path) -> Iterator[Any]:
    services = make(tmp_path, smtp_xforward_hosts=["127.0.0.1"])
    with live_server(services) as server:
        yield server
    services.close()


@pytest.fixture
def facing_internet(tmp_path: Path) -> Iterator[Any]:
    services = make(tmp_path, smtp_xforward_hosts=["10.1.2.3"])  # a proxy elsewhere; we are not it
    with live_server(services) as server:
        yield server
    services.close()


def wire(reply: replies.SmtpReply) -> tuple[int, bytes]:
    return reply.code, f"{reply.enhanced} {reply.text}".encode()


def fay_reply(server: Any) -> tuple[str, Any]:
    conv = open_conversation(server.services, participants=("fay",))
    address = reply_address(server.services, conv, "fay")
    return conv, reply_message("fay@forwarded.test", address, "Thank you, Tuesday suits me well.")


def transaction(client: smtplib.SMTP, msg: Any) -> tuple[int, bytes]:
    assert client.mail("fay@forwarded.test")[0] == 250
    code, text = client.rcpt(str(msg["To"]))
    if code >= 400:
        return code, text
    return client.data(msg.as_bytes(policy=SMTP_POLICY))


def log_rows(services: Services) -> list[InboundLog]:
    with services.sessions() as session:
        return list(session.scalars(select(InboundLog).order_by(InboundLog.received_at)).all())


def posted(services: Services, conversation_id: str) -> int:
    with services.sessions() as session:
        return len(session.scalars(select(Message).where(Message.conversation_id == conversation_id)).all())


def test_xforward_from_an_unlisted_peer_cannot_pass_spf(facing_internet: Any) -> None:
    """The attack: claim the forged domain's permitted address; SPF still sees the real peer."""
    conv, msg = fay_reply(facing_internet)
    with facing_internet.client() as client:
        _, lines = client.ehlo("attacker.test")
        assert b"XFORWARD" not in lines  # never offered
        assert client.docmd(FORWARD) == wire(replies.XFORWARD_DENIED)
        assert client.docmd("XFORWARD ADDR=192.0.2.10") == wire(replies.XFORWARD_DENIED)
        assert transaction(client, msg) == wire(replies.AUTH_FAILED)
    row = log_rows(facing_internet.services)[-1]
    assert (row.reason, row.peer, row.helo) == ("dmarc_fail", "127.0.0.1", "attacker.test")
    assert posted(facing_internet.services, conv) == 1


def test_xforward_refused_when_no_host_is_listed(tmp_path: Path) -> None:
    services = make(tmp_path)  # the default: nobody may send XFORWARD
    with live_server(services) as server, server.client() as client:
        assert b"XFORWARD" not in client.ehlo("attacker.test")[1]
        assert client.docmd(FORWARD) == wire(replies.XFORWARD_DENIED)
    services.close()


def test_listed_mta_tells_the_real_client_for_one_transaction(behind_postfix: Any) -> None:
    conv, msg = fay_reply(behind_postfix)
    with behind_postfix.client() as client:
        _, lines = client.ehlo("mx.acme.example")
        assert b"XFORWARD NAME ADDR PORT PROTO HELO SOURCE" in lines
        assert client.docmd(FORWARD) == wire(replies.XFORWARD_OK)
        assert transaction(client, msg) == wire(replies.OK)
        # The attributes end with the transaction (XFORWARD_README): the next one is judged on the
        # connection's own address again, where forwarded.test's SPF fails.
        _, again = fay_reply(behind_postfix)
        assert transaction(client, again) == wire(replies.AUTH_FAILED)
    first, second = log_rows(behind_postfix.services)[-2:]
    assert (first.state.value, first.peer, first.helo) == ("posted", "192.0.2.10", "mx.forwarded.test")
    assert (second.reason, second.peer, second.helo) == ("dmarc_fail", "127.0.0.1", "mx.acme.example")
    assert posted(behind_postfix.services, conv) == 2


def test_xforward_in_several_commands_and_unavailable_values(behind_postfix: Any) -> None:
    """Postfix splits long attribute lists over several commands and says [UNAVAILABLE] for unknowns."""
    _, msg = fay_reply(behind_postfix)
    with behind_postfix.client() as client:
        client.ehlo("mx.acme.example")
        assert client.docmd("XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.10")[0] == 250
        assert client.docmd("XFORWARD HELO=mx+2Eforwarded+2Etest PROTO=ESMTP")[0] == 250  # xtext
        assert transaction(client, msg) == wire(replies.OK)
        client.docmd("XFORWARD ADDR=[UNAVAILABLE] HELO=[unavailable]")
        _, again = fay_reply(behind_postfix)
        assert transaction(client, again) == wire(replies.AUTH_FAILED)  # no address: no SPF pass
    first, second = log_rows(behind_postfix.services)[-2:]
    assert (first.peer, first.helo) == ("192.0.2.10", "mx.forwarded.test")
    assert (second.peer, second.helo) == (None, None)  # never the connection's own values mixed in


SYNTAX_CASES = [
    ("XFORWARD", replies.XFORWARD_SYNTAX),
    ("XFORWARD ADDR", replies.XFORWARD_SYNTAX),
    ("XFORWARD IDENT=abc", replies.XFORWARD_SYNTAX),  # not an attribute we announce
    ("XFORWARD ADDR=not-an-address", replies.XFORWARD_SYNTAX),
    ("XFORWARD ADDR=192.0.2.1+ZZ", replies.XFORWARD_SYNTAX),  # broken xtext
    ("XFORWARD PORT=70000", replies.XFORWARD_SYNTAX),
    ("XFORWARD SOURCE=MARS", replies.XFORWARD_SYNTAX),
    ("XFORWARD " + " ".join(["PROTO=SMTP"] * 13), replies.XFORWARD_SYNTAX),
    ("XFORWARD ADDR=IPV6:2001:db8::1", replies.XFORWARD_OK),
    ("XFORWARD HELO=" + "h" * 300, replies.XFORWARD_OK),  # unusable: counted as unavailable
]


def test_xforward_syntax(behind_postfix: Any) -> None:
    with behind_postfix.client() as client:
        client.ehlo("mx.acme.example")
        answers = [client.docmd(command) for command, _ in SYNTAX_CASES]
    assert answers == [wire(expected) for _, expected in SYNTAX_CASES]


def test_xforward_inside_a_transaction_refused(behind_postfix: Any) -> None:
    with behind_postfix.client() as client:
        client.ehlo("mx.acme.example")
        client.mail("fay@forwarded.test")
        assert client.docmd(FORWARD) == wire(replies.XFORWARD_IN_TRANSACTION)


def test_listed_mta_is_exempt_from_the_per_ip_cap(tmp_path: Path) -> None:
    """Every sender comes through Postfix: its connections must not be capped as one client's."""
    for hosts, second_greeting in (([], 421), (["127.0.0.1"], 220)):
        services = make(
            tmp_path / str(second_greeting), smtp_max_connections_per_ip=1, smtp_xforward_hosts=hosts
        )
        with live_server(services) as server:
            first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            second = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            try:
                assert first.recv(512).startswith(b"220")
                assert second.recv(512).startswith(str(second_greeting).encode())
            finally:
                first.close()
                second.close()
        services.close()


def test_bad_xforward_host_setting_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="smtp_xforward_hosts"):
        load_settings(smtp_xforward_hosts=["127.0.0.1", "not-a-network"])


# --- the parser alone ------------------------------------------------------------------------------


def test_first_command_starts_from_unavailable_later_ones_update() -> None:
    first = xforward.apply(None, "ADDR=192.0.2.1 HELO=a.example")
    assert first == xforward.Forwarded(addr="192.0.2.1", helo="a.example")
    assert xforward.apply(first, "helo=b.example").helo == "b.example"  # names are case-insensitive
    assert xforward.apply(first, "ADDR=IPV6:::ffff:192.0.2.7").addr == "192.0.2.7"
    assert xforward.apply(first, "ADDR=IPv6:2001:DB8::1").addr == "2001:db8::1"


def test_xtext_decoding() -> None:
    assert xforward.xtext_decode("a+2Bb+3Dc") == "a+b=c"
    with pytest.raises(xforward.XforwardSyntaxError):
        xforward.xtext_decode("a+2b")  # lower-case hex is not xtext
    # an encoded CR LF is decoded but never used: the value counts as unavailable
    assert xforward.apply(None, "HELO=evil+0D+0AX-Injected:+20yes").helo is None


def test_trusted_peers() -> None:
    networks = xforward.parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert xforward.trusted("127.0.0.1", networks)
    assert xforward.trusted("::ffff:127.0.0.1", networks)
    assert xforward.trusted("10.9.8.7", networks)
    assert xforward.trusted("::1", networks)
    assert not xforward.trusted("127.0.0.2", networks)
    assert not xforward.trusted(None, networks)
    assert not xforward.trusted("garbage", networks)
