"""Real answers match the served OpenAPI document (issue 20 #6), and a generated client works.

Every response the API client receives in the walk below, successes and errors alike, is validated
against ``/openapi.json`` with openapi-core (status declared, media type declared, body valid for
the schema); the walk must reach every operation of the document. Then openapi-python-client
generates a client from the same document, offline, and that client makes the app's round trip
against a real server on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, QuarantineItem
from mailbridge.webhooks.worker import WebhookWorker
from tests.conftest import API_KEY

BASE = "/api/v1/practices/acme"


class Validator:
    """Validates every response an httpx client receives against the document (an event hook)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        problem_json = {"application/problem+json": lambda data, **_: json.loads(data)}
        self.openapi = OpenAPI.from_dict(spec, config=Config(extra_media_type_deserializers=problem_json))
        self.spec = spec
        self.patterns = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path, path.count("{"))
            for path in spec["paths"]
        ]
        self.seen: dict[str, set[int]] = {}

    def operation(self, method: str, path: str) -> str:
        matches = sorted((holes, p) for rx, p, holes in self.patterns if rx.match(path))
        assert matches, f"no documented path for {path}"
        for _, pattern in matches:
            op = self.spec["paths"][pattern].get(method.lower())
            if op is not None:
                return str(op["operationId"])
        raise AssertionError(f"{method} {path} is not documented")

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        if request.url.path == "/openapi.json":
            return
        content_type = response.headers.get("content-type", "").split(";")[0]
        mock_request = MockRequest(
            "http://testserver",
            request.method,
            request.url.path,
            args=dict(request.url.params),
            headers=dict(request.headers),
            data=request.content,
            content_type=request.headers.get("content-type", "application/json"),
        )
        mock_response = MockResponse(
            response.content if response.status_code != 204 else b"",
            status_code=response.status_code,
            headers=dict(response.headers),
            content_type=content_type,
        )
        if content_type.startswith("image/") or response.status_code == 204:
            pass  # binary or empty: the status and its declaration are checked below
        else:
            self.openapi.validate_response(mock_request, mock_response)
        operation = self.operation(request.method, request.url.path)
        declared = self.spec["paths"][self._pattern(request.url.path, request.method)][request.method.lower()]
        assert str(response.status_code) in declared["responses"], (
            operation,
            response.status_code,
            response.text,
        )
        self.seen.setdefault(operation, set()).add(response.status_code)

    def _pattern(self, path: str, method: str) -> str:
        for _, pattern in sorted((h, p) for rx, p, h in self.patterns if rx.match(path)):
            if method.lower() in self.spec["paths"][pattern]:
                return pattern
        raise AssertionError(path)


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 90, 160)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def walker(seeded: Any, api: TestClient) -> Iterator[tuple[TestClient, Validator, Any]]:
    seeded.settings = seeded.settings.model_copy(
        update={"webhook_allow_private": True, "webhook_allow_http": True, "imap_allow_private_hosts": True}
    )
    spec = api.get("/openapi.json").json()
    validator = Validator(spec)
    api.event_hooks["response"].append(validator)
    yield api, validator, seeded


def test_every_route_answers_as_the_document_says(walker: Any) -> None:
    api, validator, svc = walker
    bare = TestClient(api.app)
    bare.event_hooks["response"].append(validator)
    # ---- directory
    practice = {"name": "Acme", "reply_domain": "reply.acme.test", "notify_from": "notify@acme.test"}
    assert api.put(BASE, json=practice | {"settings": {"min_body_chars": 10}}).status_code == 200
    assert (
        api.put("/api/v1/practices/zeta", json=practice | {"reply_domain": "reply.zeta.test"}).status_code
        == 201
    )
    assert api.put(BASE, json=practice | {"settings": {"brand_color": "red"}}).status_code == 422
    assert api.get(BASE).status_code == 200
    staff = {"email": "s9@acme.test", "name": "S9", "kind": "staff", "role": "provider", "locale": "fr"}
    assert api.put(f"{BASE}/users/s9", json=staff).status_code == 201
    assert api.put(f"{BASE}/users/s9", json=staff).status_code == 200
    assert api.put(f"{BASE}/users/s9", json=staff | {"kind": "client", "role": None}).status_code == 409
    assert api.put(f"{BASE}/users/s9", json={"email": "x", "kind": "robot"}).status_code == 422
    assert (
        api.put(f"{BASE}/users/s9", content=b"{", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert (
        api.put(f"{BASE}/users/s9", content=b"hi", headers={"content-type": "text/plain"}).status_code == 415
    )
    assert api.get(f"{BASE}/users/s9").status_code == 200
    assert api.get(f"{BASE}/users/nobody").status_code == 404
    assert api.put(f"{BASE}/companies/c9", json={"name": "C9"}).status_code == 201
    assert api.put(f"{BASE}/users/alice/favorites/c9").status_code == 204
    assert api.delete(f"{BASE}/users/alice/favorites/c9").status_code == 204
    assert api.put(f"{BASE}/friendships/s9/dr-smith", json={"state": "accepted"}).status_code == 201
    assert bare.get(f"{BASE}/users/s9").status_code == 401
    # ---- conversations and messages
    opened = api.post(
        f"{BASE}/conversations",
        files=[("attachments", ("note.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf"))],
        data={
            "payload": '{"kind": "private", "subject": "Hi", "author": "dr-smith", "participants": ["alice"], "body": "Hello Alice, welcome here."}'
        },
    )
    assert opened.status_code == 201, opened.text
    conv = opened.json()
    cid = conv["id"]
    assert api.post(f"{BASE}/conversations", json={"kind": "nope"}).status_code == 422
    posted = api.post(
        f"{BASE}/conversations/{cid}/messages", json={"author": "dr-smith", "body": "A second message here."}
    )
    assert posted.status_code == 201, posted.text
    group = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "subject": "G",
            "author": "dr-smith",
            "participants": ["alice", "bob"],
            "body": "Hello both of you here.",
        },
    ).json()
    assert (
        api.post(
            f"{BASE}/conversations/{group['id']}/messages",
            json={"author": "alice", "body": "Reply to all of you"},
        ).status_code
        == 403
    )
    assert (
        api.post(
            f"{BASE}/conversations/{cid}/messages", json={"author": "dr-smith", "body": "ok"}
        ).status_code
        == 422
    )
    assert api.get(f"{BASE}/conversations?as=dr-smith&limit=1").status_code == 200
    assert api.get(f"{BASE}/conversations/{cid}?as=alice").status_code == 200
    assert api.get(f"{BASE}/conversations/{cid}/messages?as=dr-smith").status_code == 200
    assert api.get(f"{BASE}/conversations/{cid}/messages?as=dave").status_code == 404
    attachment = conv["messages"][0]["attachments"][0]["id"]
    assert api.get(f"{BASE}/attachments/{attachment}?as=alice").status_code == 200
    assert api.get(f"{BASE}/attachments/nope?as=alice").status_code == 404
    assert api.put(f"{BASE}/conversations/{cid}/participants/dr-jones?as=dr-smith").status_code == 204
    assert api.delete(f"{BASE}/conversations/{cid}/participants/dr-jones?as=dr-smith").status_code == 204
    assert api.get(f"{BASE}/conversations/{cid}/mutes").status_code == 200
    assert api.put(f"{BASE}/conversations/{cid}/mutes/alice").status_code == 204
    assert api.delete(f"{BASE}/conversations/{cid}/mutes/alice").status_code == 204
    single = api.post(
        f"{BASE}/conversations",
        json={
            "kind": "private",
            "subject": "One",
            "author": "dr-smith",
            "participants": ["alice"],
            "body": "Just for you, Alice.",
        },
    ).json()
    assert (
        api.post(f"{BASE}/conversations/{single['id']}/quick-note", json={"author": "dr-smith"}).status_code
        == 201
    )
    assert api.get(f"{BASE}/clients/alice/chart-notes?as=dr-smith").status_code == 200
    assert api.delete(f"{BASE}/messages/{posted.json()['id']}?as=dr-smith").status_code == 204
    assert api.delete(f"{BASE}/messages/nope?as=dr-smith").status_code == 404
    # ---- the one-click unsubscribe (no key)
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, "acme")
        token = svc.unsubscribe.issue(p.id, directory.get_user(session, p, "alice").id, cid)
    assert bare.get(f"/u/{token}").status_code == 200
    assert bare.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click").status_code == 200
    assert bare.get("/u/forged").status_code == 404
    # ---- routes, quarantine, mail logs, suppressions, audit
    route = {"staff": ["frontdesk"], "unknown_senders": "triage"}
    assert api.put(f"{BASE}/routes/help@acme.test", json=route).status_code == 201
    assert api.put(f"{BASE}/routes/help@elsewhere.test", json=route).status_code == 422
    assert api.get(f"{BASE}/routes").status_code == 200
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, "acme")
        inbound = InboundLog(practice_id=p.id, door="smtp", rcpt="help@acme.test")
        session.add(inbound)
        session.flush()
        items = []
        for _ in range(2):
            item = QuarantineItem(
                practice_id=p.id,
                inbound_id=inbound.id,
                route_address="help@acme.test",
                reason="unknown_sender",
                from_address="stranger@else.test",
            )
            session.add(item)
            session.flush()
            items.append(item.id)
    assert api.get(f"{BASE}/quarantine").status_code == 200
    assert api.get(f"{BASE}/quarantine/{items[0]}").status_code in (200, 409)
    assert api.post(f"{BASE}/quarantine/{items[0]}/release?as=alice", json={}).status_code == 403
    assert api.post(f"{BASE}/quarantine/{items[0]}/release?as=frontdesk", json={}).status_code in (201, 409)
    assert api.post(f"{BASE}/quarantine/{items[1]}/discard?as=frontdesk").status_code == 204
    assert api.post(f"{BASE}/quarantine/{items[1]}/discard?as=frontdesk").status_code == 409
    assert api.delete(f"{BASE}/routes/help@acme.test").status_code == 204
    assert api.get(f"{BASE}/inbound").status_code == 200
    assert api.get(f"{BASE}/outbound?limit=5").status_code == 200
    assert api.get(f"{BASE}/suppressions").status_code == 200
    assert api.delete(f"{BASE}/suppressions/nobody@else.test").status_code == 404
    assert api.get(f"{BASE}/audit").status_code == 200
    assert api.get(f"{BASE}/events").status_code == 200
    # ---- mailboxes
    box = {"host": "127.0.0.1", "username": "u", "password": "secret-pass", "port": 993}
    assert api.put(f"{BASE}/mailboxes/main", json=box).status_code == 201
    assert api.get(f"{BASE}/mailboxes/main").status_code == 200
    assert api.get(f"{BASE}/mailboxes").status_code == 200
    assert api.delete(f"{BASE}/mailboxes/main").status_code == 204
    # ---- webhooks (practice and platform)
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["message.created"]}
    for prefix in (BASE, "/api/v1"):
        assert api.put(f"{prefix}/webhooks/w1", json=hook).status_code == 201
        assert api.put(f"{prefix}/webhooks/w1", json=hook | {"active": False}).status_code == 200
        assert api.put(f"{prefix}/webhooks/w1", json=hook | {"events": ["nope"]}).status_code == 422
        assert api.get(f"{prefix}/webhooks/w1").status_code == 200
        assert api.get(f"{prefix}/webhooks").status_code == 200
        assert api.post(f"{prefix}/webhooks/w1/rotate-secret").status_code == 200
        assert api.put(f"{prefix}/webhooks/w1", json=hook).status_code == 200  # active again
        message = {"author": "dr-smith", "body": "One more message for the hook."}
        assert api.post(f"{BASE}/conversations/{cid}/messages", json=message).status_code == 201
        WebhookWorker.from_services(svc).dispatch()  # events → deliveries (nothing is sent here)
        deliveries = api.get(f"{prefix}/webhooks/w1/deliveries")
        assert deliveries.status_code == 200 and deliveries.json()["items"], deliveries.text
        pending = deliveries.json()["items"][0]["id"]  # no worker here: still pending
        redelivered = api.post(f"{prefix}/webhooks/w1/deliveries/{pending}/redeliver")
        assert redelivered.status_code in (202, 409)
        assert api.post(f"{prefix}/webhooks/w1/deliveries/nope/redeliver").status_code == 404
        assert api.delete(f"{prefix}/webhooks/w1").status_code == 204
        assert api.get(f"{prefix}/webhooks/w1").status_code == 404
    # ---- templates and the logo
    assert api.get(f"{BASE}/templates").status_code == 200
    shipped = api.get(f"{BASE}/templates/notification_full?locale=en")
    assert shipped.status_code == 200
    assert api.put(
        f"{BASE}/templates/notification_full?locale=en", json={"subject": "{{ subject }}"}
    ).status_code in (200, 201)
    assert (
        api.put(f"{BASE}/templates/notification_full?locale=en", json={"subject": "{% if %}"}).status_code
        == 422
    )
    assert api.post(f"{BASE}/templates/notification_full/preview?locale=en", json={}).status_code == 200
    assert api.delete(f"{BASE}/templates/notification_full?locale=en").status_code == 204
    assert api.put(f"{BASE}/logo", content=png(), headers={"content-type": "image/png"}).status_code == 200
    assert api.get(f"{BASE}/logo").status_code == 200
    assert api.delete(f"{BASE}/logo").status_code == 204
    assert api.get(f"{BASE}/logo").status_code == 404
    # ---- domains, operations, keys
    assert api.get(f"{BASE}/domains").status_code == 200
    assert api.put("/api/v1/platform/practices/acme/domains/new.acme.test").status_code == 201
    assert api.delete("/api/v1/platform/practices/acme/domains/new.acme.test").status_code == 204
    assert bare.get("/healthz").status_code == 200
    assert bare.get("/readyz").status_code in (200, 503)
    assert api.get("/metrics").status_code == 200
    assert bare.get("/metrics").status_code == 401
    # ---- the directory read back, in bulk, and deleted
    assert api.get(f"{BASE}/users?kind=staff&limit=2").status_code == 200
    assert api.get(f"{BASE}/companies").status_code == 200
    assert api.get(f"{BASE}/users/alice/favorites").status_code == 200
    assert api.get(f"{BASE}/friendships").status_code == 200
    bulk = {"users": {"s10": staff | {"email": "s10@acme.test"}}, "companies": {"c10": {"name": "C10"}}}
    assert api.post(f"{BASE}/directory/import", json=bulk).status_code == 200
    assert api.get(f"{BASE}/messages/{conv['messages'][0]['id']}?as=alice").status_code == 200
    assert api.get(f"{BASE}/messages/{'0' * 32}?as=alice").status_code == 404
    assert api.delete(f"{BASE}/users/s10").status_code == 204
    assert api.delete(f"{BASE}/companies/c10").status_code == 204
    assert api.delete(f"{BASE}/companies/c10").status_code == 404
    # ---- the practice and the conversation last: deletion
    assert api.delete(f"{BASE}/conversations/{cid}?as=dr-smith").status_code == 204
    assert api.delete(f"{BASE}/conversations/{cid}?as=dr-smith").status_code == 404

    documented = {op["operationId"] for ops in validator.spec["paths"].values() for op in ops.values()}
    assert sorted(documented - set(validator.seen)) == []
    statuses = set().union(*validator.seen.values())
    assert {200, 201, 204, 400, 401, 403, 404, 409, 415, 422} <= statuses


# ---- a generated client ------------------------------------------------------------------------------

GENERATOR_CONFIG = Path(__file__).with_name("openapi_client.yaml")


def generate_client(spec: dict[str, Any], where: Path) -> Path:
    """openapi-python-client, from the served document, as an app developer would run it. It needs no
    network (a dead proxy proves nothing is fetched); its post-hooks are the ruff we have."""
    source = where / "openapi.json"
    source.write_text(json.dumps(spec))
    bin_dir = str(Path(sys.executable).parent)
    dead = "http://127.0.0.1:9"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": ""}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(source),
            "--config",
            str(GENERATOR_CONFIG),
            "--meta",
            "none",
            "--output-path",
            str(where / "mailbridge_client"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every endpoint is generated; the one response it cannot type is the logo's image bytes.
    warnings = re.findall(r"WARNING parsing (\S+ \S+)", done.stdout + done.stderr)
    assert warnings in ([], ["GET /api/v1/practices/{practice}/logo"]), done.stdout
    return where


class LiveServer:
    """The real app under uvicorn on 127.0.0.1 (an ephemeral port), in a thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)
            assert self.thread.is_alive(), "the server did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def test_a_generated_client_compiles_and_makes_the_round_trip(
    services: Any, api: TestClient, tmp_path: Path
) -> None:
    import compileall
    import importlib

    where = generate_client(api.get("/openapi.json").json(), tmp_path)
    package = where / "mailbridge_client"
    assert compileall.compile_dir(str(package), quiet=1)
    sys.path.insert(0, str(where))
    try:
        for name in [
            m for m in sys.modules if m == "mailbridge_client" or m.startswith("mailbridge_client.")
        ]:
            del sys.modules[name]
        mc = importlib.import_module("mailbridge_client")
        models = importlib.import_module("mailbridge_client.models")
        put_practice = importlib.import_module("mailbridge_client.api.directory.put_practice")
        put_user = importlib.import_module("mailbridge_client.api.directory.put_user")
        create = importlib.import_module("mailbridge_client.api.conversations.create_conversation")
        post = importlib.import_module("mailbridge_client.api.conversations.post_message")
        listing = importlib.import_module("mailbridge_client.api.conversations.list_conversations")

        with LiveServer(api.app) as url:
            client = mc.AuthenticatedClient(base_url=url, token=API_KEY, raise_on_unexpected_status=True)
            with client as c:
                made = put_practice.sync_detailed(
                    "demo",
                    client=c,
                    body=models.PracticeIn(
                        name="Demo", reply_domain="reply.demo.test", notify_from="n@demo.test"
                    ),
                )
                assert made.status_code == 201 and made.parsed.slug == "demo"
                for user, kind, role in (("doc", "staff", "provider"), ("cli", "client", None)):
                    body = models.UserIn(
                        email=f"{user}@demo.test",
                        name=user.title(),
                        kind=models.UserKind(kind),
                        role=models.StaffRole(role) if role else mc.types.UNSET,
                    )
                    answer = put_user.sync_detailed("demo", user, client=c, body=body)
                    assert answer.status_code == 201 and answer.parsed.kind == models.UserKind(kind)
                opened = create.sync_detailed(
                    "demo",
                    client=c,
                    body=models.ConversationIn(
                        kind=models.ConversationKind.PRIVATE,
                        subject="Hello",
                        author="doc",
                        participants=["cli"],
                        body="Welcome to the practice portal.",
                    ),
                )
                assert opened.status_code == 201, opened.content
                conversation = opened.parsed
                assert isinstance(conversation, models.ConversationOut)
                reply = post.sync_detailed(
                    "demo",
                    conversation.id,
                    client=c,
                    body=models.MessageIn(author="cli", body="Thank you, see you Tuesday."),
                )
                assert reply.status_code == 201 and reply.parsed.source == models.MessageSource.APP
                page = listing.sync_detailed("demo", client=c, as_="cli")
                assert page.status_code == 200
                assert [item.id for item in page.parsed.items] == [conversation.id]
                # an error comes back typed: a Problem with its code from the enum
                refused = post.sync_detailed(
                    "demo", conversation.id, client=c, body=models.MessageIn(author="cli", body="")
                )
                assert refused.status_code == 422
                assert isinstance(refused.parsed, models.Problem)
                assert refused.parsed.code == models.ProblemCode.BODY_TOO_SHORT
    finally:
        sys.path.remove(str(where))
