"""A throwaway Postfix instance built from the text of docs/deploy.md ("Postfix in front").

The recipe is read from the document itself, never copied: the fenced blocks captioned
`/etc/postfix/main.cf` and `/etc/postfix/relay_domains`, the command block that follows them and the
`mailbridge serve` block. Only what cannot be the same on a test machine is replaced, each
replacement checked to apply exactly where the document says (so an edited document fails here
loudly rather than being tested half): the `smtp` service's port 25 and mailbridge's 2525 (free
loopback ports), `/etc/postfix` (a temporary config_directory), the certificate pair (made by
trustme), plus the instance's own queue, data directory and log file, `inet_interfaces =
loopback-only` and `inet_protocols = ipv4`. The system's Postfix is never touched: every command
gets `-c DIR` and the master runs from that directory (Postfix's MULTI_INSTANCE_README).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
SECTION = "## Postfix in front"
QUEUES = (
    "maildrop",
    "incoming",
    "active",
    "deferred",
    "hold",
    "bounce",
    "defer",
    "trace",
    "corrupt",
    "saved",
)
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class Block:
    caption: str  # the paragraph right before the fence
    lang: str
    body: str


def section(text: str | None = None) -> str:
    text = DEPLOY.read_text(encoding="utf-8") if text is None else text
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.fullmatch(r"```(\w*)", lines[i].strip())
        if not match:
            i += 1
            continue
        k = i
        while k > 0 and not lines[k - 1].strip():
            k -= 1
        start = k
        while start > 0 and lines[start - 1].strip():
            start -= 1
        caption = " ".join(line.strip() for line in lines[start:k])
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        found.append(Block(caption, match.group(1), "\n".join(lines[i + 1 : j]) + "\n"))
        i = j + 1
    return found


def block_after(text: str, marker: str) -> Block:
    """The one block whose caption contains *marker*."""
    matches = [b for b in blocks(text) if marker in b.caption]
    assert len(matches) == 1, (
        f"expected one block captioned with {marker!r} in deploy.md, found {len(matches)}"
    )
    return matches[0]


def block_containing(text: str, needle: str) -> Block:
    matches = [b for b in blocks(text) if needle in b.body]
    assert len(matches) == 1, f"expected one block containing {needle!r} in deploy.md, found {len(matches)}"
    return matches[0]


def replace_exactly(text: str, old: str, new: str, count: int = 1) -> str:
    """Replace *old*, which the document must contain exactly *count* times."""
    assert text.count(old) == count, f"deploy.md: expected {old!r} {count} time(s), found {text.count(old)}"
    return text.replace(old, new)


def shell_lines(block: Block) -> list[str]:
    """Commands of a bash block, continuation lines joined, comments and output lines dropped."""
    joined = block.body.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def env_assignments(block: Block) -> tuple[dict[str, str], list[str]]:
    """``A=1 B='x' cmd args`` → ({A: 1, B: x}, [cmd, args])."""
    (line,) = shell_lines(block)
    words = shlex.split(line)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def tool(name: str) -> str:
    """A Postfix program by full path (a non-root PATH often lacks /usr/sbin)."""
    return shutil.which(name) or f"/usr/sbin/{name}"


def postfix_missing() -> str | None:
    """None when a Postfix instance can run here, else why not."""
    if not all(os.access(tool(name), os.X_OK) for name in ("postfix", "postconf", "postmap", "postqueue")):
        return "Postfix is not installed (make test-system-deps installs it)"
    if os.geteuid() != 0:
        return "a Postfix instance needs root (its master daemon runs as root and drops to mail_owner)"
    return None


def skip_without_postfix() -> None:
    reason = postfix_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the Postfix test must run in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PostfixInstance:
    """One Postfix master with its own config_directory, queue, data directory and log file."""

    def __init__(self, root: Path, mailbridge_port: int, tls: tuple[Path, Path]) -> None:
        self.root = root
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.port = free_port()
        self.mailbridge_port = mailbridge_port
        self.tls = tls  # (private key, certificate chain)
        self.ca: Any = None  # trustme's CA that issued the certificate, for the clients
        self.commands_run: list[list[str]] = []
        self.check_output = ""

    # ---- built from deploy.md -------------------------------------------------------------------

    def configure(self) -> None:
        text = section()
        for directory in (self.conf, self.queue, self.data):
            directory.mkdir()
        shutil.chown(self.data, "postfix", "postfix")  # the master's lock file lives here
        master_cf = Path("/etc/postfix/master.cf")  # what Debian's package installs
        if not master_cf.exists():
            master_cf = Path("/usr/share/postfix/master.cf.dist")
        master = master_cf.read_text()
        # The "smtp inet" service (port 25) listens on a free loopback port instead.
        master, n = re.subn(r"(?m)^smtp(\s+inet\s)", f"127.0.0.1:{self.port}\\1", master)
        assert n == 1, "master.cf: expected one 'smtp inet' service"
        (self.conf / "master.cf").write_text(master)

        main = block_after(text, "`/etc/postfix/main.cf`").body
        main = replace_exactly(
            main,
            "smtpd_proxy_filter = 127.0.0.1:2525",
            f"smtpd_proxy_filter = 127.0.0.1:{self.mailbridge_port}",
        )
        main = replace_exactly(main, "hash:/etc/postfix/", f"hash:{self.conf}/")
        main = replace_exactly(
            main,
            "/etc/ssl/private/ssl-cert-snakeoil.key, /etc/ssl/certs/ssl-cert-snakeoil.pem",
            f"{self.tls[0]}, {self.tls[1]}",
        )
        (self.conf / "main.cf").write_text(main)
        self.postconf(
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            f"maillog_file_prefixes = {self.root}",
            f"maillog_file = {self.maillog}",
        )
        relay = block_after(text, "`/etc/postfix/relay_domains`").body
        (self.conf / "relay_domains").write_text(relay)

        for line in shell_lines(block_containing(text, "postmap /etc/postfix/relay_domains")):
            self.run_doc_command(line)

    def run_doc_command(self, line: str) -> None:
        """The document's command with ``-c DIR`` for this instance; ``systemctl restart`` → ``postfix start``."""
        words = shlex.split(line.replace("/etc/postfix/", f"{self.conf}/"))
        if words[0] == "postmap":
            self._run([tool("postmap"), "-c", str(self.conf), *words[1:]])
        elif words == ["postfix", "check"]:
            done = self._run([tool("postfix"), "-c", str(self.conf), "check"])
            self.check_output = done.stdout + done.stderr
        elif words == ["systemctl", "restart", "postfix"]:
            self.start()
        else:
            raise AssertionError(f"deploy.md: a command this test does not know how to run: {line!r}")

    def postconf(self, *settings: str) -> None:
        self._run([tool("postconf"), "-c", str(self.conf), "-e", *settings])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.commands_run.append(argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
        assert done.returncode == 0, (
            f"{' '.join(argv)} → {done.returncode}: {done.stderr}{self.log_text()[-2000:]}"
        )
        return done

    # ---- process -------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        self._run([tool("postfix"), "-c", str(self.conf), "start"])
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not listen within {timeout}s: {self.log_text()[-2000:]}")
            time.sleep(0.02)

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 15.0) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        subprocess.run(
            [tool("postfix"), "-c", str(self.conf), "stop"],
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if not _wait_gone(pid, timeout):
            subprocess.run(
                [tool("postfix"), "-c", str(self.conf), "abort"],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            if not _wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the master we started, by its own pid

    # ---- what Postfix did ----------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def queued_files(self) -> list[str]:
        """Every message file in every queue (a bounce would be one): the recipe queues nothing."""
        found = []
        for name in QUEUES:
            directory = self.queue / name
            if directory.is_dir():
                found += [str(p.relative_to(self.queue)) for p in directory.rglob("*") if p.is_file()]
        return found

    def mailq(self) -> str:
        done = subprocess.run(
            [tool("postqueue"), "-c", str(self.conf), "-p"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return done.stdout + done.stderr


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def running_postfix(mailbridge_port: int) -> Iterator[PostfixInstance]:
    """A started instance in a short temporary directory (its UNIX sockets must fit in 108 bytes)."""
    skip_without_postfix()
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the certificate")
    root = Path(tempfile.mkdtemp(prefix="mbpf-"))
    os.chmod(root, 0o755)
    ca = trustme.CA()
    cert = ca.issue_cert("mx.acme.example")
    key_path, chain_path = root / "tls.key", root / "tls.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(chain_path))
    for pem in cert.cert_chain_pems[1:]:
        with open(chain_path, "ab") as chain:
            chain.write(pem.bytes())
    instance = PostfixInstance(root, mailbridge_port, (key_path, chain_path))
    instance.ca = ca
    try:
        instance.configure()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
