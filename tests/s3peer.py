"""A real S3-compatible server on loopback for tests: moto's standalone server (``ThreadedMotoServer``).

It speaks the S3 REST API over HTTP on 127.0.0.1:<free port>, so boto3 in this process and in
``mailbridge serve`` subprocesses talk to it exactly as they would to MinIO or AWS (multipart
uploads included). Credentials are dummies set in the environment, as an operator would set real ones.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Peer:
    endpoint: str
    server: Any

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, **_boto_credentials())

    def new_bucket(self) -> str:
        name = f"mb-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        return dict(CREDENTIALS)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="session")
def s3_peer() -> Iterator[S3Peer]:
    """One moto S3 server for the test session; each test takes a bucket of its own."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - moto[server] is a test dependency
        pytest.fail(f"moto[server] is a test dependency: {exc}")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # the AWS chain, as boto3 reads it for mailbridge's own client
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Peer(f"http://{host}:{port}", server)
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class StallingProxy:
    """A TCP proxy to the S3 server that, once armed, stops forwarding a request's bytes after
    ``stall_after`` bytes: an upload hangs half-sent, so a test can kill the uploader mid-upload."""

    def __init__(self, upstream_port: int, stall_after: int = 1024 * 1024) -> None:
        import socket
        import threading

        self.upstream_port = upstream_port
        self.stall_after = stall_after
        self.armed = threading.Event()
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._accept, daemon=True, name="stalling-proxy")
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.closing.set()
        self.thread.join(2)
        self.sock.close()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closing.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            for args in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(self, source: Any, target: Any, requests: bool) -> None:
        import time

        sent_since_armed = 0
        source.settimeout(0.2)
        try:
            while not self.closing.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if requests and self.armed.is_set():
                    sent_since_armed += len(data)
                    if sent_since_armed > self.stall_after:
                        self.stalled.set()
                        while not self.closing.is_set():  # hold the upload open, half-sent
                            time.sleep(0.05)
                        break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.close()
