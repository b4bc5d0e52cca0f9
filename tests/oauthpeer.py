"""An OAuth2 authorization server on loopback for tests: a token endpoint and an introspection endpoint.

The token endpoint plays Microsoft's (client credentials with a secret or a certificate assertion)
and Google's (refresh token) roles; Dovecot's ``oauth2`` passdb asks the introspection endpoint
(RFC 7662) whether a bearer token is active and whose it is. Tokens can be revoked early, as an
administrator would, to prove the poller fetches a new one after a refusal.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class OAuthPeer:
    """``clients``: client id → secret; ``refresh``: refresh token → user; ``certificates``: client id →
    PEM certificate whose key signs assertions; ``app_user``: the mailbox an app-only token may open."""

    clients: dict[str, str] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    certificates: dict[str, bytes] = field(default_factory=dict)
    app_user: str = ""
    expires_in: int = 3600
    issued: dict[str, str] = field(default_factory=dict)  # token → user
    revoked: set[str] = field(default_factory=set)
    requests: list[dict[str, str]] = field(default_factory=list)
    introspections: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> OAuthPeer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/token":
                    status, body = peer._token(form)
                elif self.path == "/introspect":
                    status, body = peer._introspect(form.get("token", ""))
                else:
                    status, body = 404, {"error": "not_found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="oauth-peer").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def revoke_all(self) -> None:
        self.revoked |= set(self.issued)

    # -- endpoints

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests.append(form)
        client = form.get("client_id", "")
        grant = form.get("grant_type")
        authenticated = (client in self.clients and form.get("client_secret") == self.clients[client]) or (
            client in self.certificates and self._assertion_ok(client, form.get("client_assertion", ""))
        )
        if grant == "client_credentials":
            if not authenticated:
                return 401, {"error": "invalid_client"}
            user = self.app_user
        elif grant == "refresh_token":
            if client not in self.clients or form.get("client_secret") != self.clients[client]:
                return 401, {"error": "invalid_client"}
            user = self.refresh.get(form.get("refresh_token", ""), "")
            if not user:
                return 400, {"error": "invalid_grant"}
        else:
            return 400, {"error": "unsupported_grant_type"}
        token = "at-" + secrets.token_urlsafe(24)
        self.issued[token] = user
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    def _assertion_ok(self, client: str, assertion: str) -> bool:
        try:
            head, claims, signature = assertion.split(".")
            cert = x509.load_pem_x509_certificate(self.certificates[client])
            key = cert.public_key()
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(_unb64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
            body = json.loads(_unb64(claims))
            header = json.loads(_unb64(head))
            thumb = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).decode().rstrip("=")
            return bool(body["iss"] == client == body["sub"] and header["x5t"] == thumb)
        except Exception:
            return False

    def _introspect(self, token: str) -> tuple[int, dict[str, Any]]:
        self.introspections += 1
        user = self.issued.get(token)
        if user is None or token in self.revoked:
            return 200, {"active": False}
        return 200, {"active": True, "username": user, "scope": "mail"}
