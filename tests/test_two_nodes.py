"""Two ``mailbridge serve`` nodes sharing nothing but PostgreSQL and an S3 bucket.

Node A accepts a reply with an attachment, which is held (unaligned sender, private conversation);
node B's API releases it and serves its attachment: nothing of it was on B's disk. Then node A is
killed with SIGKILL in the middle of uploading a large message to the bucket (a proxy holds the
upload half-sent): no row names a missing object, every acknowledged message is posted, and the
sender's retry to node B posts the large one once.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailbridge.crypto.keyring import new_master_key_text
from mailbridge.domain.models import Attachment, InboundLog, InboundState, Message, MessageSource
from tests import filemakers as fm
from tests.conftest import API_KEY, _truncate_pg, make_services, pg_url_for, seed
from tests.mailhelpers import open_conversation, reply_address, reply_message, send
from tests.s3peer import S3Peer, StallingProxy
from tests.test_attachments_e2e import with_files
from tests.test_faults import LoopbackDns, Remote, ServeProcess, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BASE = "/api/v1/practices/acme"
UNALIGNED = "relay@elsewhere.test"  # no SPF for it, no DKIM: a private conversation holds the reply


def call(node: ServeProcess, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def object_keys(s3: S3Peer, bucket: str) -> set[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {str(o["Key"]) for o in listed}


def references(services: Any) -> list[str]:
    with services.sessions() as session:
        raw = session.scalars(select(InboundLog.raw_ref).where(InboundLog.raw_ref.is_not(None))).all()
        files = session.scalars(select(Attachment.storage_key)).all()
    return [str(r) for r in [*raw, *files]]


def test_two_nodes_share_postgres_and_s3_and_survive_kill_9_mid_upload(
    tmp_path: Path, pg_schema: str, s3_peer: S3Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _truncate_pg(pg_schema)
    database_url = pg_url_for(pg_schema)
    bucket = s3_peer.new_bucket()
    monkeypatch.setenv("MAILBRIDGE_TOKEN_SECRET", "two-nodes-" + "t" * 40)
    master = new_master_key_text()
    monkeypatch.setenv("MAILBRIDGE_MASTER_KEY", master)
    storage = {"storage_url": f"s3://{bucket}/cluster", "s3_endpoint_url": s3_peer.endpoint}
    services = make_services(tmp_path / "test", database_url, **storage)
    seed(services)
    conversation = open_conversation(services)
    address = reply_address(services, conversation, "alice")
    proxy = StallingProxy(s3_peer.server.get_host_and_port()[1])
    shared = {"MAILBRIDGE_MASTER_KEY": master, "MAILBRIDGE_STORAGE_URL": storage["storage_url"]}
    with LoopbackDns({"client.test": "v=spf1 ip4:127.0.0.1 -all"}) as dns_server:
        node_a = ServeProcess(
            tmp_path / "a" / "var",
            database_url,
            dns_server.port,
            extra_env=shared | {"MAILBRIDGE_S3_ENDPOINT_URL": proxy.endpoint},
        )
        node_b = ServeProcess(
            tmp_path / "b" / "var",
            database_url,
            dns_server.port,
            extra_env=shared | {"MAILBRIDGE_S3_ENDPOINT_URL": s3_peer.endpoint},
        )
        for node in (node_a, node_b):
            node.data_dir.parent.mkdir(parents=True)
        try:
            node_a.start()
            node_b.start()

            # 1. Held on A, released and downloaded through B.
            scan = fm.png()
            held = with_files(
                reply_message("Alice Martin <alice@client.test>", address, "The scan you asked for."),
                [("scan.png", "image/png", scan)],
            )
            assert send(Remote(node_a.smtp_port), held, UNALIGNED, address)[0] == 250  # type: ignore[arg-type]
            status, body = call(node_b, "GET", f"{BASE}/quarantine")
            (item,) = json.loads(body)["items"]
            assert item["reason"] == "auth_not_aligned"
            status, body = call(node_b, "POST", f"{BASE}/quarantine/{item['id']}/release?as=dr-smith", {})
            assert status == 201, body
            (attachment,) = json.loads(body)["attachments"]
            status, content = call(node_b, "GET", f"{BASE}/attachments/{attachment['id']}?as=dr-smith")
            assert (status, content) == (200, scan)
            assert not any((node_b.data_dir / "objects").rglob("*.mbe"))  # nothing came from B's disk

            # 2. Acknowledged replies on A, then A killed mid-upload of a large one.
            acked = []
            for number in range(3):
                text = f"Acknowledged reply {number}: see you on Tuesday."
                msg = reply_message("alice@client.test", address, text, msgid=f"<ack-{number}@client.test>")
                assert send(Remote(node_a.smtp_port), msg, "alice@client.test", address)[0] == 250  # type: ignore[arg-type]
                acked.append(text)
            big = with_files(
                reply_message("alice@client.test", address, "The big scan.", msgid="<big@client.test>"),
                [("big.pdf", "application/pdf", fm.pdf() + b"%" * (12 * 1024 * 1024))],
            )
            answers: list[Any] = []

            def send_big() -> None:
                try:
                    answers.append(send(Remote(node_a.smtp_port), big, "alice@client.test", address))  # type: ignore[arg-type]
                except (OSError, EOFError) as exc:  # the node died: no answer
                    answers.append(exc)

            proxy.armed.set()
            sender = threading.Thread(target=send_big, daemon=True)
            sender.start()
            wait_until(proxy.stalled.is_set, 60, "node A's upload to reach the bucket", interval=0.05)
            uploads = s3_peer.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            assert uploads, "an upload should be in flight"
            node_a.kill9()
            sender.join(30)
            assert len(answers) == 1 and not isinstance(answers[0], tuple), answers  # never acknowledged
        finally:
            node_a.stop()
            proxy.close()

        # What A left: no row names a missing object; every acknowledged reply is posted.
        stored = object_keys(s3_peer, bucket)
        for ref in references(services):
            assert f"cluster/{ref}" in stored, f"a row names a missing object: {ref}"
        with services.sessions() as session:
            bodies = session.scalars(
                select(Message.body).where(
                    Message.conversation_id == conversation, Message.source == MessageSource.email
                )
            ).all()
        assert set(acked) <= set(bodies)

        # The sender retries on B: posted once.
        try:
            assert send(Remote(node_b.smtp_port), big, "alice@client.test", address)[0] == 250  # type: ignore[arg-type]
        finally:
            node_b.stop()
    with services.sessions() as session:
        posted = session.scalars(select(Message).where(Message.body == "The big scan.")).all()
        assert len(posted) == 1 and posted[0].attachments[0].size > 12 * 1024 * 1024
        states = session.scalars(select(InboundLog.state)).all()
        assert InboundState.received not in states or states.count(InboundState.received) <= 1
    for ref in references(services):
        assert f"cluster/{ref}" in object_keys(s3_peer, bucket)
    services.close()
