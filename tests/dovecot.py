"""A throwaway Dovecot IMAP server for tests: own config, passwd file and maildirs in a temporary directory.

No system service is touched: ``dovecot -F -c <tmp>/dovecot.conf`` runs in the foreground on free
loopback ports and is stopped by its PID. ``doveadm`` works on the same maildirs, so a test can
deliver, count and inspect mail the way a provider's MTA and a human with a mail client would.
Tests that need it skip with a clear reason when ``dovecot`` is not installed.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PASSWORD = "s3cret-imap-pass"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None
    )


def doveadm_binary() -> str | None:
    return shutil.which("doveadm") or ("/usr/bin/doveadm" if os.access("/usr/bin/doveadm", os.X_OK) else None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll a condition with a bounded timeout (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Dovecot:
    """One Dovecot master process; ``users`` maps login → password (``{PLAIN}`` in the passwd file)."""

    def __init__(
        self, root: Path, *, tls: tuple[Path, Path] | None = None, oauth2_introspection: str | None = None
    ) -> None:
        self.root = root
        self.tls = tls
        # An RFC 7662 introspection URL: XOAUTH2 and OAUTHBEARER validated by Dovecot's oauth2 passdb.
        self.oauth2_introspection = oauth2_introspection  # (certificate chain PEM, private key PEM): enables STARTTLS and an imaps listener
        self.port = 0
        self.imaps_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.users: dict[str, str] = {}
        self.conf = root / "dovecot.conf"
        self.log = root / "dovecot.log"
        self._dovecot = dovecot_binary() or "dovecot"
        self._doveadm = doveadm_binary() or "doveadm"

    # ---- configuration -------------------------------------------------------------------------

    def _write_config(self) -> None:
        root = self.root
        for sub in ("run", "state", "home"):
            (root / sub).mkdir(exist_ok=True)
        # Dovecot delays logins from an IP after failed ones (anvil's auth penalty, up to 15 s): the
        # bad-credential tests would slow every later login from 127.0.0.1. An unreachable penalty
        # socket turns it off; the auth process must not be root for the mode to matter.
        no_penalty = "service anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}\n"
        if os.geteuid() == 0:
            mail_user = mail_group = "dovecot"
            extra = no_penalty + "service auth {\n  user = $default_internal_user\n}\n"
            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam(mail_user)
                os.chown(root / "home", pw.pw_uid, pw.pw_gid)
        else:  # an ordinary developer account: everything runs as that user, no chroot
            account = pwd.getpwuid(os.geteuid())
            mail_user = account.pw_name
            mail_group = grp.getgrgid(account.pw_gid).gr_name
            extra = no_penalty.replace("anvil {", "anvil {\n  chroot =") + (
                f"default_login_user = {mail_user}\ndefault_internal_user = {mail_user}\n"
                f"default_internal_group = {mail_group}\nservice imap-login {{\n  chroot =\n}}\n"
            )
        if self.tls:
            cert, key = self.tls
            ssl = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\nssl_min_protocol = TLSv1.2\n"
        else:
            ssl = "ssl = no\n"
        mechanisms, oauth2, userdb_extra, passwd_mechanisms = "plain login", "", "", ""
        if self.oauth2_introspection:
            mechanisms = "plain login xoauth2 oauthbearer"
            (root / "oauth2.conf.ext").write_text(
                f"introspection_mode = post\nintrospection_url = {self.oauth2_introspection}\n"
                "force_introspection = yes\nusername_attribute = username\n"
                "active_attribute = active\nactive_value = true\n"
            )
            userdb_extra = " allow_all_users=yes"  # the oauth2 passdb cannot answer user lookups (doveadm)
            passwd_mechanisms = "  mechanisms = plain login\n"
            oauth2 = (
                f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {root}/oauth2.conf.ext\n}}\n"
            )
        self.conf.write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log}
info_log_path = {self.log}
{ssl}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
first_valid_uid = 1
mail_location = maildir:~/Maildir
{oauth2}passdb {{
  driver = passwd-file
{passwd_mechanisms}  args = scheme=PLAIN username_format=%u {root}/passwd.d/%u
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root}/home/%u{userdb_extra}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
  }}
}}
{extra}"""
        )
        self._write_passwd()

    def _write_passwd(self) -> None:
        # One passwd file per user (``passwd.d/%u``): Dovecot stats a passwd-file at most once a second,
        # so a user appended to a shared file could stay unknown for a second; a new file is read at once.
        folder = self.root / "passwd.d"
        folder.mkdir(exist_ok=True)
        for user, password in self.users.items():
            path = folder / user
            if not path.exists():
                path.write_text(f"{user}:{{PLAIN}}{password}\n")
                os.chmod(path, 0o644)

    def add_user(self, user: str, password: str = PASSWORD) -> str:
        self.users[user] = password
        if self.conf.exists():
            self._write_passwd()
        return user

    # ---- process -------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        if not self.port:
            self.port = free_port()
            self.imaps_port = free_port() if self.tls else 0
        self._write_config()
        with open(self.root / "stderr.log", "ab") as stderr:  # the child keeps its own copy
            process = subprocess.Popen(
                [self._dovecot, "-F", "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: stop() reaches every child at once
            )
        self.process = process
        ports = [p for p in (self.port, self.imaps_port) if p]
        if not wait_until(
            lambda: all(self._listening(p) for p in ports) or process.poll() is not None, timeout
        ):
            self.stop()
            raise RuntimeError(f"dovecot did not listen within {timeout}s: {self.tail()}")
        if process.poll() is not None:
            self.process = None
            raise RuntimeError(f"dovecot exited with {process.returncode}: {self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # The master alone takes seconds to wind down its children; the whole group goes at once.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        # the master is gone; make sure its listener is too before a restart reuses the port
        wait_until(lambda: not self._listening(self.port), timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.log, self.root / "stderr.log"):
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)

    # ---- mail, through doveadm (works on the maildir like the provider's MTA would) -------------

    def doveadm(
        self,
        command: str,
        *args: str,
        user: str | None = None,
        stdin: bytes | None = None,
        fmt: str | None = None,
    ) -> str:
        """``doveadm [-f fmt] <command words> [-u user] args…``."""
        line = [self._doveadm, "-c", str(self.conf)] + (["-f", fmt] if fmt else []) + command.split()
        if user is not None:
            line += ["-u", user]
        line += list(args)
        result = subprocess.run(line, input=stdin, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {command} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        self.doveadm("save", "-m", folder, user=user, stdin=raw)

    def uids(self, user: str, folder: str = "INBOX", query: str = "ALL") -> list[int]:
        """UIDs in a folder (``[]`` if it does not exist)."""
        try:
            out = self.doveadm("search", "mailbox", folder, *query.split(), user=user)
        except RuntimeError as exc:
            if "doesn't exist" in str(exc) or "not found" in str(exc).lower():
                return []
            raise
        return sorted(int(line.split()[1]) for line in out.splitlines() if line.strip())

    def count(self, user: str, folder: str = "INBOX") -> int:
        return len(self.uids(user, folder))

    def folders(self, user: str) -> list[str]:
        return [line.strip() for line in self.doveadm("mailbox list", user=user).splitlines() if line.strip()]

    def flags(self, user: str, folder: str = "INBOX") -> list[str]:
        out = self.doveadm("fetch", "flags", "mailbox", folder, "ALL", user=user)
        return [line.partition(":")[2].strip() for line in out.splitlines() if line.startswith("flags:")]

    def create_folder(self, user: str, folder: str) -> None:
        self.doveadm("mailbox create", folder, user=user)

    def delete_folder(self, user: str, folder: str) -> None:
        self.doveadm("mailbox delete", "-r", "-s", folder, user=user)

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        out = self.doveadm("mailbox status", "uidvalidity", folder, user=user, fmt="flow")
        return int(out.strip().partition("=")[2])

    def kick(self, user: str) -> None:
        """Close every IMAP connection of ``user`` server-side, like a provider dropping idle sessions."""
        with contextlib.suppress(RuntimeError):  # exits non-zero when there was nobody to kick
            self.doveadm("kick", user)


def skip_without_dovecot() -> None:
    if dovecot_binary() is None or doveadm_binary() is None:
        pytest.skip("dovecot is not installed (Debian: apt-get install dovecot-imapd)")


@contextlib.contextmanager
def running_dovecot(
    *, tls: tuple[Path, Path] | None = None, oauth2_introspection: str | None = None
) -> Iterator[Dovecot]:
    """A started server in a fresh world-traversable directory (the mail user must reach its maildir)."""
    skip_without_dovecot()
    root = Path(tempfile.mkdtemp(prefix="mailbridge-dovecot-"))
    os.chmod(root, 0o755)
    server = Dovecot(root, tls=tls, oauth2_introspection=oauth2_introspection)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
